//! See the crate documentation; filled in by the claim work.
