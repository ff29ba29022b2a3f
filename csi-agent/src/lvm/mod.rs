//! The LVM layer; see the crate documentation.
