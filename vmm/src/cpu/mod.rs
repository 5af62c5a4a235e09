//! Placeholder: filled in by the cpu work.
