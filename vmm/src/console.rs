//! The host end of the guest's serial console: standard input and output,
//! a file, or a Unix socket.
//!
//! On an interactive terminal the console puts the terminal in raw mode
//! while attached (restored when the console is dropped), so that keys like
//! Ctrl-C reach the guest. `Ctrl-A x` quits Hiber, as in QEMU; `Ctrl-A
//! Ctrl-A` sends a literal Ctrl-A.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_sys_util::terminal::Terminal;

use crate::config::ConsoleConfig;

/// Ctrl-A, the escape key of the interactive console.
const ESCAPE: u8 = 0x01;

/// Errors of opening the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open the console file {0}: check the directory exists and is writable")]
    File(PathBuf, #[source] io::Error),
    /// The socket could not be bound.
    #[error("cannot listen on the console socket {0}: remove a stale file or pick another path")]
    Socket(PathBuf, #[source] io::Error),
}

/// What the event loop should do after console input.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Bytes for the guest.
    Bytes(Vec<u8>),
    /// The user asked Hiber to quit.
    Quit,
    /// Nothing for the guest (a client came or went, or the input ended).
    Nothing,
}

/// Where console output goes; shared with the serial device.
#[derive(Clone, Default)]
pub struct ConsoleSink {
    client: Arc<Mutex<Option<UnixStream>>>,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut client = self.client.lock().unwrap();
        if let Some(stream) = client.as_mut() {
            if stream.write_all(buf).is_err() {
                log::info!("console client went away");
                *client = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Backend {
    Stdio {
        raw: bool,
        escape_pending: bool,
    },
    File(std::fs::File),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        sink: ConsoleSink,
    },
}

/// The host end of the serial console.
pub struct Console {
    backend: Backend,
    input_open: bool,
}

impl Console {
    /// Opens the console.
    pub fn open(cfg: &ConsoleConfig) -> Result<Console, ConsoleError> {
        let backend = match cfg {
            ConsoleConfig::Stdio => stdio_backend(),
            ConsoleConfig::File(path) => Backend::File(open_log(path)?),
            ConsoleConfig::Unix(path) => Backend::Unix {
                listener: bind(path)?,
                path: path.clone(),
                sink: ConsoleSink::default(),
            },
        };
        let input_open = !matches!(backend, Backend::File(_));
        Ok(Console {
            backend,
            input_open,
        })
    }

    /// A writer for guest output that ends up on this console.
    pub fn sink(&self) -> Box<dyn Write + Send> {
        match &self.backend {
            Backend::Stdio { .. } => Box::new(io::stdout()),
            Backend::File(file) => match file.try_clone() {
                Ok(f) => Box::new(f),
                Err(e) => {
                    log::warn!("console file lost ({e}); guest output is dropped");
                    Box::new(io::sink())
                }
            },
            Backend::Unix { sink, .. } => Box::new(sink.clone()),
        }
    }

    /// The descriptors the event loop should watch for input.
    pub fn input_fds(&self) -> Vec<RawFd> {
        if !self.input_open {
            return Vec::new();
        }
        match &self.backend {
            Backend::Stdio { .. } => vec![io::stdin().as_raw_fd()],
            Backend::File(_) => Vec::new(),
            Backend::Unix { listener, sink, .. } => {
                let mut fds = vec![listener.as_raw_fd()];
                if let Some(c) = sink.client.lock().unwrap().as_ref() {
                    fds.push(c.as_raw_fd());
                }
                fds
            }
        }
    }

    /// Handles readiness of one of [`Console::input_fds`].
    pub fn on_readable(&mut self, fd: RawFd) -> ConsoleInput {
        match &mut self.backend {
            Backend::Stdio {
                escape_pending,
                raw,
            } => {
                let mut buf = [0u8; 256];
                match io::stdin().lock().read(&mut buf) {
                    Ok(0) | Err(_) => {
                        log::debug!("console input ended");
                        self.input_open = false;
                        ConsoleInput::Nothing
                    }
                    Ok(n) if *raw => filter_escape(&buf[..n], escape_pending),
                    Ok(n) => ConsoleInput::Bytes(buf[..n].to_vec()),
                }
            }
            Backend::File(_) => ConsoleInput::Nothing,
            Backend::Unix { listener, sink, .. } => {
                if fd == listener.as_raw_fd() {
                    accept_client(listener, sink);
                    ConsoleInput::Nothing
                } else {
                    read_client(sink)
                }
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        match &self.backend {
            Backend::Stdio { raw: true, .. } => {
                if let Err(e) = io::stdin().lock().set_canon_mode() {
                    log::warn!("could not restore the terminal: {e}");
                }
            }
            Backend::Unix { path, .. } => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
    }
}

fn stdio_backend() -> Backend {
    let stdin = io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
    let raw = tty && stdin.lock().set_raw_mode().is_ok();
    if raw {
        log::info!("console attached to this terminal; Ctrl-A x quits");
    }
    Backend::Stdio {
        raw,
        escape_pending: false,
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, ConsoleError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ConsoleError::File(path.to_path_buf(), e))
}

fn bind(path: &Path) -> Result<UnixListener, ConsoleError> {
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| ConsoleError::Socket(path.into(), e))?;
    log::info!("console listening on {}", path.display());
    Ok(listener)
}

fn accept_client(listener: &UnixListener, sink: &ConsoleSink) {
    match listener.accept() {
        Ok((stream, _)) => {
            log::info!("console client connected");
            *sink.client.lock().unwrap() = Some(stream);
        }
        Err(e) => log::warn!("could not accept a console client: {e}"),
    }
}

fn read_client(sink: &ConsoleSink) -> ConsoleInput {
    let mut client = sink.client.lock().unwrap();
    let Some(stream) = client.as_mut() else {
        return ConsoleInput::Nothing;
    };
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {
            log::info!("console client disconnected");
            *client = None;
            ConsoleInput::Nothing
        }
        Ok(n) => ConsoleInput::Bytes(buf[..n].to_vec()),
    }
}

/// Strips the Ctrl-A escapes out of terminal input.
fn filter_escape(input: &[u8], escape_pending: &mut bool) -> ConsoleInput {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        if *escape_pending {
            *escape_pending = false;
            match b {
                b'x' | b'X' => return ConsoleInput::Quit,
                ESCAPE => out.push(ESCAPE),
                _ => {}
            }
        } else if b == ESCAPE {
            *escape_pending = true;
        } else {
            out.push(b);
        }
    }
    ConsoleInput::Bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_twice_sends_one() {
        let mut pending = false;
        assert_eq!(
            filter_escape(b"ab\x01\x01c", &mut pending),
            ConsoleInput::Bytes(b"ab\x01c".to_vec())
        );
        assert_eq!(
            filter_escape(b"q\x01", &mut pending),
            ConsoleInput::Bytes(b"q".to_vec())
        );
        assert!(pending);
        assert_eq!(filter_escape(b"x", &mut pending), ConsoleInput::Quit);
    }

    #[test]
    fn unix_console_passes_output_to_the_client() {
        let dir = std::env::temp_dir().join(format!("hiber-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let mut console = Console::open(&ConsoleConfig::Unix(path.clone())).unwrap();
        let mut sink = console.sink();
        let mut client = UnixStream::connect(&path).unwrap();
        let listener_fd = console.input_fds()[0];
        assert_eq!(console.on_readable(listener_fd), ConsoleInput::Nothing);
        sink.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        client.write_all(b"ls\n").unwrap();
        let client_fd = console.input_fds()[1];
        assert_eq!(
            console.on_readable(client_fd),
            ConsoleInput::Bytes(b"ls\n".to_vec())
        );
        drop(console);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
