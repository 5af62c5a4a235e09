//! When this process started, for the start-up figures Hiber logs.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Records the process start; the first call wins.
pub fn mark_process_start() {
    let _ = START.set(Instant::now());
}

/// Time since [`mark_process_start`] (or since the first call of this).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}
