//! The guest console as the tests see it: everything the guest printed,
//! collected by a thread, searchable from a cursor.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    text: String,
    closed: bool,
}

/// Console output of one `hiber` process.
#[derive(Clone)]
pub struct ConsoleLog {
    shared: Arc<(Mutex<Shared>, Condvar)>,
}

impl ConsoleLog {
    /// Starts collecting from `source` (the process's stdout).
    pub fn collect(mut source: impl Read + Send + 'static) -> Self {
        let log = ConsoleLog {
            shared: Arc::new((Mutex::new(Shared::default()), Condvar::new())),
        };
        let shared = log.shared.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = source.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut s = lock.lock().unwrap();
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                let chunk = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                s.text.push_str(&chunk);
                cv.notify_all();
            }
        });
        log
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.shared.0.lock().unwrap().text.clone()
    }

    /// Waits until `find` matches the text after `from`; returns the
    /// match's end offset and the text it covered.
    pub fn wait_for<F>(&self, from: usize, timeout: Duration, find: F) -> Result<usize, String>
    where
        F: Fn(&str) -> Option<usize>,
    {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(end) = s.text.get(from..).and_then(&find) {
                return Ok(from + end);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                let why = if s.closed {
                    "the console closed"
                } else {
                    "timed out"
                };
                let tail: String = s.text.chars().rev().take(3000).collect();
                let tail: String = tail.chars().rev().collect();
                return Err(format!("{why} after {timeout:?}; console tail:\n{tail}"));
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }
}

/// A matcher for a literal line fragment; returns the offset past it.
pub fn literal(needle: &str) -> impl Fn(&str) -> Option<usize> + '_ {
    move |text: &str| text.find(needle).map(|i| i + needle.len())
}
