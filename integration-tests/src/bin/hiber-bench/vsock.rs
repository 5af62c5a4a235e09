//! vsock round-trip latency: the host writes a message to the guest agent's
//! echo server (vsock port 53) and waits until all of it has come back.
//!
//! Hiber maps the guest's vsock to a host Unix socket, as Firecracker does:
//! connect, send `CONNECT 53\n`, read `OK <host port>\n`, then the stream is
//! the guest's. QEMU's vsock is vhost-vsock, served by the host kernel
//! through /dev/vhost-vsock; the host reaches the guest with an AF_VSOCK
//! socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{scratch_dir, Vmm};

use crate::boot::boot_hiber;
use crate::qemu::{Machine, QemuGuest};
use crate::{BOOT_TIMEOUT, STEP};

/// The guest's context id under both VMMs.
const GUEST_CID: u32 = 3;
/// The guest agent's echo port.
const ECHO_PORT: u32 = 53;
/// Round trips before the timed ones, to fault in and warm both sides.
const WARMUP: usize = 50;
/// Timed round trips of each size.
const ROUND_TRIPS: usize = 1000;
const SIZES: [usize; 2] = [1, 4096];
const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// Connects through Hiber's Unix socket and asks for the guest's `port`.
fn connect_uds(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(STEP))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut reply = Vec::new();
    let mut byte = [0u8];
    // Byte by byte: nothing past the newline belongs to the handshake.
    while reply.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the connection closed before OK; got {:?}",
                    String::from_utf8_lossy(&reply)
                ),
            ));
        }
        reply.push(byte[0]);
    }
    if !reply.starts_with(b"OK ") {
        let reply = String::from_utf8_lossy(&reply);
        return Err(io::Error::other(format!(
            "CONNECT {port} answered {reply:?}"
        )));
    }
    Ok(stream)
}

/// Connects to the guest's `port` over AF_VSOCK (vhost-vsock).
fn connect_vsock(cid: u32, port: u32) -> io::Result<File> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: `addr` is a live sockaddr_vm of `len` bytes for the whole call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(fd))
}

/// Tries `connect` until it succeeds or `timeout` passes: the echo server
/// may start after the console agent.
fn connect_retrying<S>(
    timeout: Duration,
    connect: impl Fn() -> io::Result<S>,
) -> Result<S, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect() {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "cannot reach the guest's echo port {ECHO_PORT}: {e}"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `n` round trips of `size` bytes; the time each took.
fn round_trips<S: Read + Write>(
    stream: &mut S,
    size: usize,
    n: usize,
) -> io::Result<Vec<Duration>> {
    let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut echo = vec![0u8; size];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut echo)?;
        times.push(t.elapsed());
        if echo != message {
            return Err(io::Error::other("the echo differs from the message sent"));
        }
    }
    Ok(times)
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let at = rank.clamp(1, sorted.len().max(1)) - 1;
    sorted.get(at).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// Median and p99 of each size's round trips, one line per size.
fn measure<S: Read + Write>(name: &str, stream: &mut S) -> Result<(), String> {
    for size in SIZES {
        round_trips(stream, size, WARMUP).map_err(|e| format!("warm-up: {e}"))?;
        let mut times = round_trips(stream, size, ROUND_TRIPS).map_err(|e| e.to_string())?;
        times.sort();
        println!(
            "  {name:<6} {size:>4} B: median {:>9.1} us | p99 {:>9.1} us ({ROUND_TRIPS} round \
             trips after {WARMUP})",
            percentile_us(&times, 50.0),
            percentile_us(&times, 99.0)
        );
    }
    Ok(())
}

fn measure_hiber(dir: &Path) -> Result<(), String> {
    let uds = dir.join("vsock.sock");
    let vsock = format!("cid={GUEST_CID},uds={}", uds.display());
    let (vmm, _) = boot_hiber(dir, &["--vsock", &vsock]);
    let result = connect_retrying(STEP, || connect_uds(&uds, ECHO_PORT))
        .and_then(|mut stream| measure("hiber", &mut stream));
    Vmm::kill(vmm);
    result
}

fn measure_qemu(dir: &Path) -> Result<(), String> {
    if !Path::new(VHOST_VSOCK).exists() {
        return Err(format!(
            "{VHOST_VSOCK} is absent on this host (QEMU's vsock is vhost-vsock, a host \
             kernel device: load vhost_vsock to measure it)"
        ));
    }
    let device = format!("vhost-vsock-device,guest-cid={GUEST_CID}");
    let extra = ["-device".to_string(), device];
    let qemu = QemuGuest::spawn(Machine::Microvm, &extra, dir)
        .ok_or("qemu-system-x86_64 is missing or did not start")?;
    qemu.wait_for("hiber-agent: listening", BOOT_TIMEOUT)?;
    let mut stream = connect_retrying(STEP, || connect_vsock(GUEST_CID, ECHO_PORT))?;
    measure("qemu", &mut stream)
}

/// The vsock comparison.
pub fn section() {
    println!(
        "vsock round trips (host to the guest agent's echo server on port {ECHO_PORT}, \
         128 MiB, 1 vCPU; hiber through its Unix socket, qemu through vhost-vsock):"
    );
    let dir = scratch_dir("bench-vsock");
    for (name, result) in [("hiber", measure_hiber(&dir)), ("qemu", measure_qemu(&dir))] {
        if let Err(e) = result {
            println!("  {name}: not measured: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn percentiles_are_nearest_rank() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&times, 50.0), 50.0);
        assert_eq!(percentile_us(&times, 99.0), 99.0);
        assert_eq!(percentile_us(&times[..1], 99.0), 1.0);
        assert!(percentile_us(&[], 50.0).is_nan());
    }

    /// A stand-in for Hiber's socket: answers the handshake, then echoes
    /// in small pieces, as a stream may.
    fn fake_hiber(listener: UnixListener, reply: &'static [u8]) {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while line.last() != Some(&b'\n') {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert_eq!(line, b"CONNECT 53\n");
        s.write_all(reply).unwrap();
        let mut buf = [0u8; 100];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            s.write_all(&buf[..n]).unwrap();
        }
    }

    #[test]
    fn the_handshake_and_the_round_trips_work_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("hiber-bench-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || fake_hiber(listener, b"OK 1073741824\n"));
        let mut stream = connect_uds(&path, ECHO_PORT).unwrap();
        let times = round_trips(&mut stream, 4096, 3).unwrap();
        assert_eq!(times.len(), 3);
        drop(stream);
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_handshake_is_an_error() {
        let name = format!("hiber-bench-vsock-no-{}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || fake_hiber(listener, b"NO\n"));
        assert!(connect_uds(&path, ECHO_PORT).is_err());
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
