//! The Hiber snapshot format: a checksummed state file and a memory file.
