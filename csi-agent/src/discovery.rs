//! See the crate documentation; filled in by the discovery work.
