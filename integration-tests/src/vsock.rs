//! A host-side client of the test guest's vsock agent (see
//! guest-images/workload/hiber-vsock-agent.c), through the Unix socket of
//! Hiber's vsock device: connect, send `CONNECT <port>\n`, read
//! `OK <host port>\n`, and the stream is the guest's.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::vmm::CommandResult;

/// The agent's command port.
pub const COMMAND_PORT: u32 = 52;
/// The agent's echo port.
pub const ECHO_PORT: u32 = 53;
/// What the agent sends after a command's output.
const DONE: &str = "hiber-agent: done ";
/// The pause between attempts while the guest does not listen yet.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Connects to guest `port` through the device socket `uds`; every read
/// waits at most `timeout`. Fails when the guest refused (nothing listens
/// on `port`, so the device closed the stream).
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let reply = read_line(&mut stream)?;
    if !reply.starts_with("OK ") {
        let kind = io::ErrorKind::ConnectionRefused;
        return Err(io::Error::new(
            kind,
            format!("CONNECT {port} got {reply:?}"),
        ));
    }
    Ok(stream)
}

/// Reads one line, byte by byte so nothing after it is taken.
fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connects to guest `port`, trying again while the guest does not listen
/// yet, until `timeout` passes.
pub fn connect_retrying(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect(uds, port, timeout) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "guest vsock port {port} via {} did not answer in {timeout:?}: {e}",
                    uds.display()
                ))
            }
            Err(_) => std::thread::sleep(RETRY_PAUSE),
        }
    }
}

/// Runs `cmd` once through the agent: its output and exit status.
fn run_once(uds: &Path, cmd: &str, timeout: Duration) -> Result<CommandResult, String> {
    let mut stream = connect_retrying(uds, COMMAND_PORT, timeout)?;
    stream
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("sending {cmd:?}: {e}"))?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        let as_text = String::from_utf8_lossy(&text);
        if let Some(result) = parse_done(&as_text) {
            return Ok(result);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{cmd:?} gave no done line in {timeout:?}: {as_text:?}"
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("the agent closed without a done line: {as_text:?}")),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the output of {cmd:?}: {e}")),
        }
    }
}

/// The output before a complete done line, and the status it names.
fn parse_done(text: &str) -> Option<CommandResult> {
    let at = text.rfind(DONE)?;
    let rest = &text[at + DONE.len()..];
    let status = rest.strip_suffix('\n')?.trim().parse().ok()?;
    let output = text[..at].to_string();
    Some(CommandResult { output, status })
}

/// Runs `cmd` through the guest's vsock agent at `uds` (trying to connect
/// until `timeout` for a guest that does not listen yet) and returns its
/// output and exit status.
///
/// On a host that emulates guest kernel code a guest process may die of
/// SIGSEGV as it starts (see [`crate::Vmm::run`]): there, and only there,
/// a command that ended so (status 139, no output) or whose connection
/// ended without a done line is run again, at most 4 times.
pub fn run(uds: &Path, cmd: &str, timeout: Duration) -> Result<CommandResult, String> {
    let crashed = |result: &Result<CommandResult, String>| match result {
        Ok(r) => r.status == 139 && r.output.is_empty(),
        Err(e) => e.contains("without a done line"),
    };
    crate::retry_start_crashes(cmd, || run_once(uds, cmd, timeout), crashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_line_ends_the_output() {
        let r = parse_done("a\nb\nhiber-agent: done 3\n").unwrap();
        assert_eq!((r.output.as_str(), r.status), ("a\nb\n", 3));
        assert!(
            parse_done("a\nhiber-agent: done 3").is_none(),
            "no newline yet"
        );
        assert!(parse_done("a\n").is_none());
    }

    #[test]
    fn a_refused_connect_is_an_error() {
        let dir = crate::scratch_dir("vsock-client");
        let uds = dir.join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 11];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 52\n");
        });
        let err = connect(&uds, 52, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        server.join().unwrap();
    }
}
