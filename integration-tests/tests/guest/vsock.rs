//! virtio-vsock end to end: a guest booted with `--vsock` runs commands
//! sent to its vsock agent through the device's Unix socket, echoes bytes,
//! and connects to a host listener at `<socket>_<port>`; snapshotted and
//! restored in a new process on a NEW socket path, it answers there.
//!
//! It boots its own guest (the base snapshot has no vsock device), so it is
//! one test that walks every step in order. It does not prove that guest
//! connections open at the snapshot end cleanly in the guest: it only checks
//! that the restored device sent the transport reset and that new
//! connections work.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::fixture::BOOT_TIMEOUT;
use integration_tests::vsock::{self, ECHO_PORT};
use integration_tests::{scratch_dir, Vmm};

use super::CMD_TIMEOUT;

/// The host port the guest connects to.
const HOST_PORT: u32 = 5000;
/// Timed 1-byte echo round trips.
const ROUND_TRIPS: usize = 20;
/// Bytes of the bulk echo: four times the device's and the guest's buffers.
const BULK_BYTES: usize = 1 << 20;

/// The Unix socket a guest connection to host `port` reaches.
fn host_listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut name = uds.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Runs `cmd` through the vsock agent at `uds`; it must succeed.
fn vsock_run(vmm: &Vmm, uds: &Path, cmd: &str) -> String {
    let r = vsock::run(uds, cmd, CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("`{cmd}` over vsock: {e}\nVMM log:\n{}", vmm.log()));
    assert_eq!(r.status, 0, "`{cmd}` failed: {}", r.output);
    r.output
}

/// A host program at `<uds>_<HOST_PORT>` that answers one connection with
/// `host-says:` and what it received.
fn host_listener(uds: &Path) -> JoinHandle<Result<String, String>> {
    let path = host_listener_path(uds, HOST_PORT);
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + CMD_TIMEOUT;
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("no guest connection to {path:?}: {e}")),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(CMD_TIMEOUT)).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&got).into_owned();
        stream
            .write_all(format!("host-says:{text}").as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(text)
    })
}

/// The guest connects to the host listener and prints its answer.
fn guest_initiated_connection(vmm: &Vmm, uds: &Path, text: &str) {
    let host = host_listener(uds);
    let cmd = format!("hiber-vsock-agent connect {HOST_PORT} {text}");
    let r = vmm.run(&cmd, CMD_TIMEOUT).unwrap();
    let received = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{r:?}"));
    assert_eq!(received, text);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(r.output.contains(&format!("host-says:{text}")), "{r:?}");
    std::fs::remove_file(host_listener_path(uds, HOST_PORT)).unwrap();
}

/// Echoes 4 KiB once, then times 1-byte round trips; returns the median.
fn echo_round_trips(uds: &Path) -> Duration {
    let mut s = vsock::connect_retrying(uds, ECHO_PORT, CMD_TIMEOUT).unwrap();
    let block: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    s.write_all(&block).unwrap();
    let mut back = vec![0u8; block.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, block);
    let mut times: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| {
            let t = Instant::now();
            s.write_all(b"x").unwrap();
            s.read_exact(&mut back[..1]).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[ROUND_TRIPS / 2]
}

/// Echoes `BULK_BYTES` with the host writing and reading at once (credit
/// flow control must keep both directions going); returns MiB/s each way.
fn bulk_echo(uds: &Path) -> f64 {
    let s = vsock::connect_retrying(uds, ECHO_PORT, CMD_TIMEOUT).unwrap();
    let mut writer = s.try_clone().unwrap();
    let data: Vec<u8> = (0..BULK_BYTES).map(|i| (i % 253) as u8).collect();
    let expected = data.clone();
    let t = Instant::now();
    let sender = std::thread::spawn(move || writer.write_all(&data).unwrap());
    let mut back = vec![0u8; BULK_BYTES];
    (&s).read_exact(&mut back).unwrap();
    sender.join().unwrap();
    assert!(back == expected, "the bulk echo differs from what was sent");
    BULK_BYTES as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

#[test]
fn vsock_commands_echo_and_guest_connections_survive_a_restore_on_a_new_socket() {
    let dir = scratch_dir("vsock");
    let uds = dir.join("v.sock");
    let vsock_arg = format!("cid=3,uds={}", uds.display());
    let vmm = Vmm::boot(&dir, &["--vsock", &vsock_arg]);
    vmm.wait_for("hiber-agent: listening", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));

    let t = Instant::now();
    let out = vsock_run(&vmm, &uds, "echo via-vsock; echo to-stderr >&2");
    assert!(
        out.contains("via-vsock") && out.contains("to-stderr"),
        "{out}"
    );
    eprintln!("first vsock command answered in {:?}", t.elapsed());
    let r = vsock::run(&uds, "exit 7", CMD_TIMEOUT).unwrap();
    assert_eq!(r.status, 7, "{r:?}");

    let median = echo_round_trips(&uds);
    eprintln!("vsock echo: median 1-byte round trip {median:?} over {ROUND_TRIPS}");
    let rate = bulk_echo(&uds);
    eprintln!("vsock bulk echo: {BULK_BYTES} bytes each way at {rate:.2} MiB/s");
    guest_initiated_connection(&vmm, &uds, "ping-from-guest");

    // A connection left open across the snapshot: the restored guest must
    // drop it after the transport reset.
    let _open = vsock::connect_retrying(&uds, ECHO_PORT, CMD_TIMEOUT).unwrap();
    vmm.pause();
    let (state, mem) = (dir.join("vsock.state"), dir.join("vsock.mem"));
    vmm.snapshot(&state, &mem);
    vmm.kill();

    let new_uds = dir.join("restored.sock");
    let new_arg = new_uds.display().to_string();
    let vmm = Vmm::restore(&dir, &state, &mem, &["--vsock-uds", &new_arg]);
    let out = vsock_run(&vmm, &new_uds, "echo after-restore");
    assert!(out.contains("after-restore"), "{out}");
    assert!(
        vmm.log().contains("transport reset"),
        "the restored device sent no transport reset:\n{}",
        vmm.log()
    );
    guest_initiated_connection(&vmm, &new_uds, "ping-after-restore");
    let median = echo_round_trips(&new_uds);
    eprintln!("vsock echo after restore: median 1-byte round trip {median:?}");
}
