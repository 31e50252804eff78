//! Helpers live in tests/tests/common; this crate has no library code.
