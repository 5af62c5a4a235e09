//! Tests on a real TAP, made inside a network namespace of the test's own
//! (so nothing of the host's network is touched, and everything goes away
//! with the thread). They need root and `ip`; without them they fail.

use std::os::fd::RawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::*;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, used_count, used_entry};

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const HOST_IP: [u8; 4] = [172, 31, 0, 1];
const GUEST_IP: [u8; 4] = [172, 31, 0, 2];

/// Runs `f` on a thread that has a network namespace of its own.
fn in_own_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointer; it moves only this thread into
        // a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed ({}): these tests need root",
            std::io::Error::last_os_error()
        );
        f();
    })
    .join()
    .expect("the test thread passed");
}

/// Runs `ip ARGS` (in the calling thread's namespace: the child inherits it).
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("`ip` (iproute2) is installed");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tap_with_address(name: &str) {
    ip(&format!("tuntap add {name} mode tap"));
    ip(&format!("addr add 172.31.0.1/24 dev {name}"));
    ip(&format!("link set {name} up"));
}

/// An ARP request from the guest for the host's address, behind a header.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; HEADER_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

/// Whether the frame (without header) is the host's ARP reply to us.
fn is_arp_reply(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[..6] == GUEST_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == HOST_IP
}

fn wait_readable(fd: RawFd, until: Instant) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let left = until.saturating_duration_since(Instant::now());
    // SAFETY: one valid pollfd, alive for the call.
    unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) > 0 }
}

/// Reads the frames of rx used entries `from..` and tells whether one of
/// them is the ARP reply.
fn reply_among(mem: &GuestMemoryMmap, rx: &super::Mock<'_>, from: u16) -> bool {
    (from..used_count(rx)).any(|i| {
        let (id, len) = used_entry(rx, i);
        let mut buf = vec![0u8; len as usize];
        let addr = GuestAddress(0x8_0000 + u64::from(id) * 0x1000);
        mem.read_slice(&mut buf, addr).unwrap();
        is_arp_reply(&buf[HEADER_LEN.min(buf.len())..])
    })
}

/// Proves the TAP is attached with the header layout the device uses: a
/// request sent through the tx queue is answered by the host kernel, and
/// the answer comes back through the rx queue. It does not prove anything
/// about offloads (none are used) or about throughput.
#[test]
fn the_host_kernel_answers_an_arp_request_through_a_real_tap() {
    in_own_netns(|| {
        tap_with_address("hbtap0");
        let mem = test_memory();
        let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
        for i in 0..16u16 {
            let d = super::writable(0x8_0000 + u64::from(i) * 0x1000, 2048);
            rx.add_desc_chains(&[d], i).unwrap();
        }
        let mut net = Net::new("eth0", "hbtap0", Some(GUEST_MAC)).unwrap();
        let (active, _irq) = activation(&mem, &[&rx, &tx], net.avail_features());
        net.activate(active).unwrap();

        // The request is sent again every half second, as a guest would:
        // the host drops what it sends to a TAP until its link watch has
        // seen the carrier that attaching turned on.
        let request = arp_request();
        mem.write_slice(&request, GuestAddress(0x4_0000)).unwrap();
        let fd = net.backend_fds()[0].fd;
        let until = Instant::now() + Duration::from_secs(5);
        let (mut sent, mut seen, mut answered) = (0u16, 0u16, false);
        while !answered && Instant::now() < until && sent < 16 {
            let d = super::readable(0x4_0000, request.len() as u32);
            tx.add_desc_chains(&[d], sent).unwrap();
            sent += 1;
            net.process_queue(TX_QUEUE);
            assert_eq!(
                net.save().tx_frames,
                u64::from(sent),
                "the TAP took the request"
            );
            let half_second = Instant::now() + Duration::from_millis(500);
            while !answered && wait_readable(fd, half_second) {
                net.process_backend(0, EventSet::IN);
                answered = reply_among(&mem, &rx, seen);
                seen = used_count(&rx);
            }
        }
        assert!(answered, "no ARP reply among {seen} received frames in 5 s");
    });
}

/// Each way attaching can fail names the TAP and the fix; a restore can
/// move to another TAP while the first is still held.
#[test]
fn attach_failures_and_a_tap_override_on_real_taps() {
    in_own_netns(|| {
        tap_with_address("hbtap0");
        ip("tuntap add hbtap1 mode tap");
        ip("tuntap add hbtun0 mode tun");

        let net = Net::new("eth0", "hbtap0", None).unwrap();
        let cause = |e: NetError| std::error::Error::source(&e).unwrap().to_string();

        let busy = cause(Net::new("eth1", "hbtap0", None).err().unwrap());
        assert!(
            busy.contains("already attached to another process"),
            "{busy}"
        );
        let restore_same = Net::restore(&net.save(), None, None).err().unwrap();
        assert!(cause(restore_same).contains("already attached"));

        let not_tap = cause(Net::new("eth1", "hbtun0", None).err().unwrap());
        assert!(not_tap.contains("is not a TAP device"), "{not_tap}");
        let lo = cause(Net::new("eth1", "lo", None).err().unwrap());
        assert!(lo.contains("is not a TAP device"), "{lo}");
        let missing = cause(Net::new("eth1", "hbnone", None).err().unwrap());
        assert!(
            missing.contains("ip tuntap add hbnone mode tap"),
            "{missing}"
        );

        let moved = Net::restore(&net.save(), Some("hbtap1"), Some(GUEST_MAC)).unwrap();
        assert_eq!(moved.tap(), "hbtap1");
        assert_eq!(moved.save().mac, Some(GUEST_MAC));
    });
}
