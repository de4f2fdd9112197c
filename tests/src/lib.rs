//! Shared helpers for husk integration tests.
