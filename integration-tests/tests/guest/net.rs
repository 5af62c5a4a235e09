//! The virtio-net device with the test guest: a TAP in a network namespace
//! of the test's own, the guest's eth0 configured with busybox, a ping of
//! the host end, TCP transfers both ways checked byte for byte, and the
//! same after a snapshot restored in a new process, on the same TAP and on
//! another TAP through `--net-override`.
//!
//! Needs root (namespaces and TAPs) and `ip`; fails without them. What it
//! does not prove: anything about throughput on real hardware (the numbers
//! printed here come from a host that emulates guest kernel code), or about
//! packets in flight at the snapshot (the transfers run between snapshots).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::fixture::BOOT_TIMEOUT;
use integration_tests::netns::{HostTap, NetNs};
use integration_tests::{scratch_dir, Vmm};

use super::{snapshot_paths, CMD_TIMEOUT};

const GUEST_MAC: &str = "02:00:00:00:00:02";
/// Bytes moved each way per transfer: enough for hundreds of frames and
/// many TCP windows, small enough for a host that emulates the guest kernel.
const TRANSFER_LEN: usize = 128 << 10;
/// The guest's listening port for host-to-guest transfers.
const GUEST_PORT: u16 = 5001;
/// How long the host keeps trying to reach the guest's listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts `hiber` inside `ns` with `args` built from `f`.
fn vmm_in(ns: &NetNs, f: impl FnOnce() -> Vmm + Send + 'static) -> Vmm {
    ns.within(f)
}

fn boot_with_net(ns: &NetNs, dir: &Path, tap: &HostTap) -> Vmm {
    let dir = dir.to_path_buf();
    let net = format!("tap={},mac={GUEST_MAC}", tap.name);
    let vmm = vmm_in(ns, move || Vmm::boot(&dir, &["--net", &net]));
    vmm.wait_for("hiber-agent: listening", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    vmm
}

fn restore_in(ns: &NetNs, dir: &Path, snap: &(PathBuf, PathBuf), extra: &[&str]) -> Vmm {
    let (dir, state, mem) = (dir.to_path_buf(), snap.0.clone(), snap.1.clone());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let vmm = vmm_in(ns, move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Vmm::restore(&dir, &state, &mem, &extra)
    });
    let r = vmm
        .run("true", CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    assert_eq!(r.status, 0);
    vmm
}

/// Runs `cmd` in the guest and fails the test unless it exits with 0.
fn guest(vmm: &Vmm, cmd: &str) -> String {
    let r = vmm
        .run(cmd, CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{cmd}: {e}\nVMM log:\n{}", vmm.log()));
    assert_eq!(r.status, 0, "{cmd}: {}\nVMM log:\n{}", r.output, vmm.log());
    r.output
}

fn configure_eth0(vmm: &Vmm, tap: &HostTap) {
    let links = guest(vmm, "busybox ip -o link");
    assert!(links.contains("eth0"), "the guest has no eth0:\n{links}");
    assert!(
        links.contains(GUEST_MAC),
        "eth0 lacks the MAC given:\n{links}"
    );
    guest(
        vmm,
        &format!(
            "busybox ip addr add {}/{} dev eth0 && busybox ip link set eth0 up",
            tap.guest_ip, tap.prefix
        ),
    );
}

/// Pings the host end three times; returns the average round trip.
fn ping_host(vmm: &Vmm, tap: &HostTap) -> String {
    let out = guest(vmm, &format!("busybox ping -c 3 -W 10 {}", tap.host_ip));
    assert!(out.contains("3 packets received"), "{out}");
    out.lines()
        .find(|l| l.contains("round-trip"))
        .unwrap_or("no round-trip line")
        .to_string()
}

/// The zlib CRC-32 that `busybox crc32` prints.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Bytes that differ from transfer to transfer (`seed`), so a stale file
/// in the guest cannot pass for a new one.
fn payload(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..TRANSFER_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rate(bytes: usize, took: Duration) -> String {
    let kib_s = bytes as f64 / 1024.0 / took.as_secs_f64().max(1e-6);
    format!(
        "{} KiB in {:.2} s ({kib_s:.0} KiB/s)",
        bytes >> 10,
        took.as_secs_f64()
    )
}

/// Sends `data` from the host to the guest's `busybox nc -l`, then checks
/// the guest's CRC-32 of what it stored. Returns the transfer time.
fn host_to_guest(vmm: &Vmm, ns: &NetNs, tap: &HostTap, data: &[u8]) -> Duration {
    let target = (tap.guest_ip, GUEST_PORT);
    let to_send = data.to_vec();
    let sender = ns.spawn(move || -> Result<Duration, String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut stream = loop {
            match TcpStream::connect(target) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let start = Instant::now();
        stream.write_all(&to_send).map_err(|e| e.to_string())?;
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        Ok(start.elapsed())
    });
    let out = guest(
        vmm,
        &format!("busybox nc -l -p {GUEST_PORT} > /tmp/in.bin && busybox crc32 /tmp/in.bin"),
    );
    let took = sender.join().unwrap().expect("the host sent the file");
    let want = format!("{:08x}", crc32(data));
    assert!(
        out.contains(&want),
        "the guest got a file with another CRC-32 (want {want}): {out}"
    );
    took
}

/// Has the guest send back /tmp/in.bin with `busybox nc` to a listener on
/// the host end; checks it is `data`. Returns the transfer time.
fn guest_to_host(vmm: &Vmm, ns: &NetNs, tap: &HostTap, data: &[u8]) -> Duration {
    let ip = tap.host_ip;
    let listener = ns.within(move || TcpListener::bind((ip, 0)).expect("bind on the TAP"));
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the guest connects");
        let start = Instant::now();
        let mut got = Vec::new();
        stream
            .read_to_end(&mut got)
            .expect("the guest's file arrives");
        (got, start.elapsed())
    });
    guest(vmm, &format!("busybox nc {ip} {port} < /tmp/in.bin"));
    let (got, took) = receiver.join().unwrap();
    assert_eq!(got.len(), data.len(), "bytes received from the guest");
    assert!(got == data, "the file came back from the guest changed");
    took
}

/// A transfer each way; prints the rates with `label`.
fn transfer_both_ways(vmm: &Vmm, ns: &NetNs, tap: &HostTap, label: &str, seed: u64) {
    let data = payload(seed);
    let inbound = host_to_guest(vmm, ns, tap, &data);
    let outbound = guest_to_host(vmm, ns, tap, &data);
    eprintln!(
        "net {label}: host->guest {}, guest->host {}",
        rate(data.len(), inbound),
        rate(data.len(), outbound)
    );
}

fn snapshot_and_kill(vmm: Vmm, name: &str) -> (PathBuf, PathBuf) {
    vmm.pause();
    let snap = snapshot_paths(&vmm.dir, name);
    vmm.snapshot(&snap.0, &snap.1);
    vmm.kill();
    snap
}

#[test]
fn net_guest_pings_and_moves_files_over_tcp_across_snapshots() {
    let ns = NetNs::new();
    let tap = ns.add_tap("hbtap0", 1);
    let dir = scratch_dir("net");

    let vmm = boot_with_net(&ns, &dir, &tap);
    configure_eth0(&vmm, &tap);
    eprintln!("net ping: {}", ping_host(&vmm, &tap));
    transfer_both_ways(&vmm, &ns, &tap, "booted", 1);
    let snap = snapshot_and_kill(vmm, "net");

    // A new process on the same TAP: the guest's interface and addresses
    // are as they were, and a fresh TCP connection works each way.
    let vmm = restore_in(&ns, &dir, &snap, &[]);
    transfer_both_ways(&vmm, &ns, &tap, "restored", 2);
    vmm.kill();

    // Another namespace, another TAP of the same subnet and MAC: the
    // override moves the interface there.
    let other = NetNs::new();
    let moved = other.add_tap("hbtap1", 1);
    let vmm = restore_in(&other, &dir, &snap, &["--net-override", "eth0=hbtap1"]);
    assert!(
        vmm.log().contains("hbtap1"),
        "the log does not name the new TAP:\n{}",
        vmm.log()
    );
    eprintln!("net ping after the move: {}", ping_host(&vmm, &moved));
    transfer_both_ways(&vmm, &other, &moved, "moved", 3);
}

#[test]
fn net_crc32_is_the_one_busybox_prints() {
    // `busybox crc32` of "123456789" is the CRC-32 check value.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
