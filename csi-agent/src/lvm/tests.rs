//! Unit tests of [`Lvm`] operations with the scripted [`FakeRunner`] and captured fixtures.

use super::*;

#[test]
fn rounds_up_to_whole_extents() {
    assert_eq!(round_up_to_extent(1, 4 << 20), 4 << 20);
    assert_eq!(round_up_to_extent(4 << 20, 4 << 20), 4 << 20);
    assert_eq!(round_up_to_extent((4 << 20) + 1, 4 << 20), 8 << 20);
}
