//! Device tests: mock queues in test memory, and real Unix sockets in a
//! scratch directory for the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::connection::TX_BUF_SIZE;
use super::packet::{op, Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_SEND};
use super::*;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, used_count, used_entry};

const CID: u64 = 3;
const SIZE: u16 = 256;
const TX_ADDR: u64 = 0x4_0000;
const RX_ADDR: u64 = 0x8_0000;
const RX_LEN: u32 = 4096 + HDR_LEN as u32;
const RX_SLOTS: u64 = 32;
const EVENT_ADDR: u64 = 0xf_0000;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hiber-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A guest's packet header from guest port `src` to host port `dst`.
fn ghdr(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        kind: packet::TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// A device on mock queues, with a guest side driven by hand.
struct Harness {
    mem: &'static GuestMemoryMmap,
    mocks: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    dev: Vsock,
    dir: PathBuf,
    next_desc: [u16; 3],
    seen_used: [u16; 3],
    rx_addrs: HashMap<u16, u64>,
    irq: Option<EventFd>,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let dir = scratch(name);
        let dev = Vsock::new(CID, &dir.join("v.sock")).unwrap();
        Harness::with_device(dev, dir)
    }

    fn with_device(dev: Vsock, dir: PathBuf) -> Harness {
        // Leaked so that the mock queues may borrow it for the test's life.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(test_memory()));
        let mocks = (0..3).map(|i| mock_queue(mem, i, SIZE)).collect();
        Harness {
            mem,
            mocks,
            dev,
            dir,
            next_desc: [0; 3],
            seen_used: [0; 3],
            rx_addrs: HashMap::new(),
            irq: None,
        }
    }

    fn activate(&mut self) {
        let refs: Vec<&MockSplitQueue<'_, GuestMemoryMmap>> = self.mocks.iter().collect();
        let (active, evt) = activation(self.mem, &refs, VIRTIO_F_VERSION_1);
        self.dev.activate(active).unwrap();
        self.irq = Some(evt);
    }

    /// How many interrupts were raised since the last call.
    fn interrupts(&self) -> u64 {
        self.irq.as_ref().unwrap().read().unwrap_or(0)
    }

    fn active(name: &str) -> Harness {
        let mut h = Harness::new(name);
        h.activate();
        h.add_rx(8);
        h
    }

    fn path(&self) -> PathBuf {
        self.dev.uds_path().to_path_buf()
    }

    /// Offers one chain of `(addr, len, writable)` parts on queue `q`.
    fn add_chain(&mut self, q: usize, parts: &[(u64, u32, bool)]) -> u16 {
        let first = self.next_desc[q];
        let descs: Vec<RawDescriptor> = parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let idx = first + i as u16;
                let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < parts.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                desc(addr, len, flags, (idx + 1) % SIZE)
            })
            .collect();
        self.mocks[q].add_desc_chains(&descs, first).unwrap();
        self.next_desc[q] = (first + parts.len() as u16) % SIZE;
        first
    }

    fn add_rx(&mut self, n: usize) {
        for _ in 0..n {
            let idx = self.next_desc[RX_QUEUE];
            let addr = RX_ADDR + (u64::from(idx) % RX_SLOTS) * u64::from(RX_LEN);
            self.add_chain(RX_QUEUE, &[(addr, RX_LEN, true)]);
            self.rx_addrs.insert(idx, addr);
        }
        self.dev.process_queue(RX_QUEUE);
    }

    /// The guest sends one packet in a single readable descriptor.
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(TX_ADDR))
            .unwrap();
        let at = GuestAddress(TX_ADDR + HDR_LEN as u64);
        self.mem.write_slice(payload, at).unwrap();
        let len = (HDR_LEN + payload.len()) as u32;
        self.add_chain(TX_QUEUE, &[(TX_ADDR, len, false)]);
        self.dev.process_queue(TX_QUEUE);
    }

    /// New used entries of queue `q`: (descriptor id, length).
    fn new_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let count = used_count(&self.mocks[q]);
        let entries = (self.seen_used[q]..count)
            .map(|i| used_entry(&self.mocks[q], i % SIZE))
            .collect();
        self.seen_used[q] = count;
        entries
    }

    /// Packets the device gave the guest since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.new_used(RX_QUEUE) {
            assert!(
                len as usize >= HDR_LEN,
                "an rx buffer came back with {len} bytes"
            );
            let addr = self.rx_addrs[&(id as u16)];
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            let mut payload = vec![0u8; hdr.len as usize];
            let at = GuestAddress(addr + HDR_LEN as u64);
            self.mem.read_slice(&mut payload, at).unwrap();
            assert_eq!(len as usize, HDR_LEN + payload.len());
            out.push((hdr, payload));
        }
        out
    }

    /// Lets the device handle host socket events for a while.
    fn pump(&mut self) {
        for _ in 0..8 {
            self.dev.process_backend(0, EventSet::IN);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A host program connects to guest `port`; returns its stream and the
    /// REQUEST the guest got.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(self.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.pump();
        let got = self.received();
        assert_eq!(got.len(), 1, "{got:?}");
        (s, got[0].0)
    }

    /// A host connection the guest accepted; returns the stream and the
    /// guest's header template for the connection.
    fn established(&mut self, port: u32) -> (UnixStream, Header) {
        let (mut s, req) = self.host_connect(port);
        let reply = ghdr(op::RESPONSE, port, req.src_port);
        self.send(reply, &[]);
        assert_eq!(read_line(&mut s), format!("OK {}\n", req.src_port));
        (s, reply)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn with_op(hdr: Header, op: u16) -> Header {
    Header { op, ..hdr }
}

// ---- Host-initiated connections ----

#[test]
fn a_host_connect_line_becomes_a_request_to_the_guest_port() {
    let mut h = Harness::active("host-request");
    let (_s, req) = h.host_connect(52);
    assert_eq!(req.op, op::REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!(req.dst_port, 52);
    assert!(req.src_port >= muxer::FIRST_HOST_PORT);
    assert_eq!(req.buf_alloc, TX_BUF_SIZE);
}

#[test]
fn data_flows_both_ways_after_the_guest_accepts() {
    let mut h = Harness::active("host-data");
    let (mut s, g) = h.established(52);
    s.write_all(b"hello").unwrap();
    h.pump();
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1, b"hello");
    h.send(with_op(g, op::RW), b"world");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
}

#[test]
fn a_guest_reset_closes_the_host_stream() {
    let mut h = Harness::active("host-refused");
    let (mut s, req) = h.host_connect(52);
    h.send(ghdr(op::RST, 52, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "the host stream ends");
    assert_eq!(h.dev.muxer.connection_count(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_stream() {
    let mut h = Harness::active("bad-line");
    for line in [
        "HELLO\n",
        "CONNECT x\n",
        "CONNECT 12345678901234567890123456789012\n",
    ] {
        let mut s = UnixStream::connect(h.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        h.pump();
        let mut buf = [0u8; 8];
        // Closed with the line unread, the stream may also end in a reset.
        let ended = s.read(&mut buf).map_or_else(
            |e| e.kind() == std::io::ErrorKind::ConnectionReset,
            |n| n == 0,
        );
        assert!(ended, "{line:?}");
    }
    assert!(h.received().is_empty());
}

#[test]
fn packets_wait_for_rx_buffers() {
    let mut h = Harness::new("wait-rx");
    h.activate();
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.write_all(b"CONNECT 52\n").unwrap();
    h.pump();
    assert!(h.received().is_empty());
    h.add_rx(1);
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::REQUEST);
}

#[test]
fn host_close_and_half_close_become_guest_shutdowns() {
    let mut h = Harness::active("host-close");
    let (s, g) = h.established(52);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    // The guest may still send after the host's half close.
    h.send(with_op(g, op::RW), b"late");
    let mut buf = [0u8; 4];
    (&s).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late");

    let (s2, _) = h.established(53);
    drop(s2);
    h.pump();
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.flags), (op::SHUTDOWN, SHUTDOWN_BOTH));
}

#[test]
fn a_guest_close_flushes_then_resets() {
    let mut h = Harness::active("guest-close");
    let (mut s, g) = h.established(52);
    h.send(with_op(g, op::RW), b"last words");
    h.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..with_op(g, op::SHUTDOWN)
        },
        &[],
    );
    let mut text = Vec::new();
    s.read_to_end(&mut text).unwrap();
    assert_eq!(text, b"last words");
    let got = h.received();
    assert_eq!(got.last().map(|p| p.0.op), Some(op::RST));
    assert_eq!(h.dev.muxer.connection_count(), 0);
}

// ---- Guest-initiated connections ----

#[test]
fn a_guest_request_joins_the_host_listener_at_path_underscore_port() {
    let mut h = Harness::active("guest-request");
    let mut name = h.path().into_os_string();
    name.push("_1234");
    let listener = UnixListener::bind(PathBuf::from(name)).unwrap();
    let g = ghdr(op::REQUEST, 5000, 1234);
    h.send(g, &[]);
    let got = h.received();
    assert_eq!(got.len(), 1);
    let resp = got[0].0;
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (1234, 5000));
    let (mut s, _) = listener.accept().unwrap();
    h.send(with_op(g, op::RW), b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    h.pump();
    let got = h.received();
    assert_eq!(got[0].1, b"pong");
}

#[test]
fn a_guest_request_without_a_host_listener_is_reset() {
    let mut h = Harness::active("guest-refused");
    h.send(ghdr(op::REQUEST, 5000, 4321), &[]);
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4321, 5000));
}

// ---- Credit ----

#[test]
fn host_data_never_exceeds_the_guests_credit() {
    let mut h = Harness::active("credit-rx");
    let (mut s, req) = h.host_connect(52);
    let g = Header {
        buf_alloc: 10,
        ..ghdr(op::RESPONSE, 52, req.src_port)
    };
    h.send(g, &[]);
    read_line(&mut s);
    s.write_all(&[7u8; 100]).unwrap();
    h.pump();
    let got = h.received();
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::CREDIT_REQUEST], "{got:?}");
    assert_eq!(got[0].1.len(), 10);
    // The guest read its 10 bytes and says so.
    let update = Header {
        fwd_cnt: 10,
        ..with_op(g, op::CREDIT_UPDATE)
    };
    h.send(update, &[]);
    h.pump();
    let got = h.received();
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1.len(), 10);
}

#[test]
fn a_guest_that_sends_beyond_its_credit_is_reset_and_buffering_stays_bounded() {
    let mut h = Harness::active("credit-tx");
    let (_s, g) = h.established(52);
    h.received();
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut reset = false;
    for _ in 0..64 {
        h.send(with_op(g, op::RW), &chunk);
        assert!(h.dev.muxer.buffered() <= TX_BUF_SIZE as usize);
        if h.received().iter().any(|p| p.0.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the host never read, yet the guest was not reset");
}

#[test]
fn forwarded_bytes_are_announced_with_a_credit_update() {
    let mut h = Harness::active("credit-update");
    let (mut s, g) = h.established(52);
    h.received();
    let chunk = vec![2u8; MAX_PAYLOAD];
    for _ in 0..3 {
        h.send(with_op(g, op::RW), &chunk);
    }
    let mut sink = vec![0u8; 3 * MAX_PAYLOAD];
    s.read_exact(&mut sink).unwrap();
    let got = h.received();
    let update = got.iter().find(|p| p.0.op == op::CREDIT_UPDATE);
    let update = update.expect("a credit update after half the buffer was forwarded");
    assert!(update.0.fwd_cnt >= TX_BUF_SIZE / 2);
    // A credit request is always answered.
    h.send(with_op(g, op::CREDIT_REQUEST), &[]);
    let got = h.received();
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(got[0].0.fwd_cnt, 3 * MAX_PAYLOAD as u32);
}

// ---- Misbehaving guests ----

#[test]
fn packets_with_bad_addresses_are_dropped_or_reset() {
    let mut h = Harness::active("addresses");
    h.send(
        Header {
            src_cid: 9,
            ..ghdr(op::REQUEST, 1, 2)
        },
        &[],
    );
    assert!(
        h.received().is_empty(),
        "a forged source cid gets no answer"
    );
    h.send(
        Header {
            dst_cid: 7,
            ..ghdr(op::REQUEST, 1, 2)
        },
        &[],
    );
    assert_eq!(h.received()[0].0.op, op::RST);
    h.send(
        Header {
            kind: 2,
            ..ghdr(op::REQUEST, 1, 2)
        },
        &[],
    );
    assert_eq!(h.received()[0].0.op, op::RST);
    h.send(ghdr(op::RW, 1, 2), b"no connection");
    assert_eq!(h.received()[0].0.op, op::RST);
    h.send(ghdr(op::RST, 1, 2), &[]);
    assert!(h.received().is_empty(), "an RST is never answered");
}

#[test]
fn an_invalid_operation_resets_the_connection() {
    let mut h = Harness::active("bad-op");
    let (mut s, g) = h.established(52);
    h.send(with_op(g, 99), &[]);
    assert_eq!(h.received()[0].0.op, op::RST);
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}

#[test]
fn a_tx_chain_with_a_writable_descriptor_is_dropped() {
    let mut h = Harness::active("tx-direction");
    let hdr = ghdr(op::REQUEST, 1, 2);
    h.mem
        .write_slice(&hdr.to_bytes(), GuestAddress(TX_ADDR))
        .unwrap();
    h.add_chain(TX_QUEUE, &[(TX_ADDR, HDR_LEN as u32, true)]);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.new_used(TX_QUEUE), [(0, 0)]);
    assert!(h.received().is_empty());
}

#[test]
fn a_header_split_over_descriptors_is_read() {
    let mut h = Harness::active("tx-split");
    let hdr = ghdr(op::REQUEST, 1, 2);
    h.mem
        .write_slice(&hdr.to_bytes(), GuestAddress(TX_ADDR))
        .unwrap();
    h.add_chain(TX_QUEUE, &[(TX_ADDR, 10, false), (TX_ADDR + 10, 34, false)]);
    h.dev.process_queue(TX_QUEUE);
    // No listener at <path>_2: the request is refused, so it was parsed.
    assert_eq!(h.received()[0].0.op, op::RST);
}

#[test]
fn short_huge_and_overlong_tx_packets_are_refused() {
    let mut h = Harness::active("tx-lengths");
    h.add_chain(TX_QUEUE, &[(TX_ADDR, 20, false)]);
    h.dev.process_queue(TX_QUEUE);
    assert!(
        h.received().is_empty(),
        "a short chain has no header to answer"
    );

    for len in [MAX_PAYLOAD as u32 + 1, 100] {
        let hdr = Header {
            len,
            ..ghdr(op::RW, 1, 2)
        };
        h.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(TX_ADDR))
            .unwrap();
        // The chain holds the header and 10 bytes.
        h.add_chain(TX_QUEUE, &[(TX_ADDR, HDR_LEN as u32 + 10, false)]);
        h.dev.process_queue(TX_QUEUE);
        assert_eq!(h.received()[0].0.op, op::RST, "len {len}");
    }
    assert_eq!(h.new_used(TX_QUEUE).len(), 3);
}

#[test]
fn chains_outside_memory_are_refused_on_both_queues() {
    let mut h = Harness::active("outside");
    h.add_chain(TX_QUEUE, &[(0xff_f000, 0x2000, false)]);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.new_used(TX_QUEUE).len(), 1);

    let mut h = Harness::new("outside-rx");
    h.activate();
    h.add_chain(RX_QUEUE, &[(0xff_f000, 0x2000, true)]);
    h.add_chain(RX_QUEUE, &[(RX_ADDR, HDR_LEN as u32 - 1, true)]);
    h.add_chain(RX_QUEUE, &[(RX_ADDR, RX_LEN, false)]);
    h.send(ghdr(op::RW, 1, 2), &[]);
    let used = h.new_used(RX_QUEUE);
    assert_eq!(
        used,
        [(0, 0), (1, 0), (2, 0)],
        "bad rx chains come back empty"
    );
    // The RST still waits for a good buffer.
    h.add_rx(1);
    assert_eq!(h.received()[0].0.op, op::RST);
}

#[test]
fn a_looping_tx_chain_ends() {
    let mut h = Harness::active("loop");
    let hdr = ghdr(op::CREDIT_UPDATE, 1, 2);
    h.mem
        .write_slice(&hdr.to_bytes(), GuestAddress(TX_ADDR))
        .unwrap();
    let flags = VRING_DESC_F_NEXT;
    let first = h.next_desc[TX_QUEUE];
    h.mocks[TX_QUEUE]
        .add_desc_chains(
            &[
                desc(TX_ADDR, HDR_LEN as u32, flags, first + 1),
                desc(TX_ADDR, 16, flags, first),
            ],
            first,
        )
        .unwrap();
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.new_used(TX_QUEUE).len(), 1);
    // A credit update for no connection is answered with an RST.
    assert_eq!(h.received()[0].0.op, op::RST);
    // The device still works.
    let (_s, _) = h.host_connect(52);
}

// ---- Device: configuration, reset, save and restore ----

#[test]
fn the_configuration_space_holds_the_cid() {
    let h = Harness::new("config");
    let mut all = [0xffu8; 12];
    h.dev.read_config(0, &mut all);
    assert_eq!(all, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut one = [0xffu8; 1];
    h.dev.read_config(u64::MAX, &mut one);
    assert_eq!(one, [0]);
    assert_eq!(h.dev.avail_features(), VIRTIO_F_VERSION_1);
    assert_eq!(h.dev.queue_max_sizes(), [256, 256, 256]);
    assert_eq!(h.dev.device_type(), 19);
}

#[test]
fn interrupts_follow_the_drivers_no_interrupt_flag() {
    let mut h = Harness::active("no-interrupt");
    h.interrupts();
    h.send(ghdr(op::RW, 1, 2), &[]);
    assert!(
        h.interrupts() > 0,
        "used tx and rx buffers raise the interrupt"
    );
    for q in [RX_QUEUE, TX_QUEUE] {
        let flags = VRING_AVAIL_F_NO_INTERRUPT as u16;
        let at = h.mocks[q].avail_addr();
        h.mem.write_obj(flags, at).unwrap();
    }
    h.send(ghdr(op::RW, 1, 2), &[]);
    assert_eq!(h.received().len(), 2, "both RSTs were delivered");
    assert_eq!(h.interrupts(), 0, "the driver polls: no interrupt");
}

#[test]
fn a_driver_reset_closes_every_connection() {
    let mut h = Harness::active("reset");
    let (mut s, _) = h.established(52);
    assert!(h.dev.reset().is_some());
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}

#[test]
fn new_refuses_reserved_cids_and_sockets_in_use() {
    let dir = scratch("refusals");
    let path = dir.join("v.sock");
    for cid in [0, 2, u64::from(u32::MAX)] {
        let err = Vsock::new(cid, &path).err().unwrap();
        assert!(matches!(err, VsockError::ReservedCid { .. }), "{err}");
    }
    let live = Vsock::new(CID, &path).unwrap();
    let err = Vsock::new(CID, &path).err().unwrap();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    drop(live);
    assert!(!path.exists(), "the device removes its socket file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn state_round_trips_through_cbor_and_restore_binds_the_override() {
    let h = Harness::new("save");
    let state = h.dev.save();
    assert_eq!(state.guest_cid, CID);
    assert_eq!(state.uds_path, h.path());
    let mut buf = Vec::new();
    ciborium::into_writer(&state, &mut buf).unwrap();
    let decoded: VsockState = ciborium::from_reader(buf.as_slice()).unwrap();
    assert_eq!(decoded, state);

    let err = Vsock::restore(&decoded, None).err().unwrap();
    assert!(matches!(err, VsockError::InUse { .. }), "{err}");
    let other = h.dir.join("other.sock");
    let restored = Vsock::restore(&decoded, Some(&other)).unwrap();
    assert_eq!(restored.uds_path(), other);
    assert_eq!(restored.save().uds_path, other);
    assert!(UnixStream::connect(&other).is_ok());
}

fn restored_harness(name: &str) -> Harness {
    let dir = scratch(name);
    let state = VsockState {
        guest_cid: CID,
        uds_path: dir.join("old.sock"),
    };
    let dev = Vsock::restore(&state, Some(&dir.join("new.sock"))).unwrap();
    Harness::with_device(dev, dir)
}

#[test]
fn a_restored_device_posts_a_transport_reset_on_activation() {
    let mut h = restored_harness("reset-event");
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR, 4, true)]);
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR + 4, 4, true)]);
    h.activate();
    assert_eq!(h.new_used(EVENT_QUEUE), [(0, 4)], "exactly one event");
    let id: u32 = h.mem.read_obj(GuestAddress(EVENT_ADDR)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    h.dev.process_queue(EVENT_QUEUE);
    assert!(h.new_used(EVENT_QUEUE).is_empty());
}

#[test]
fn the_reset_event_waits_for_a_good_event_buffer() {
    let mut h = restored_harness("reset-later");
    h.activate();
    assert!(h.new_used(EVENT_QUEUE).is_empty());
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR, 2, true)]);
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR, 4, false)]);
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR, 8, true)]);
    h.dev.process_queue(EVENT_QUEUE);
    assert_eq!(h.new_used(EVENT_QUEUE), [(0, 0), (1, 0), (2, 4)]);
}

#[test]
fn a_new_device_posts_no_reset_event() {
    let mut h = Harness::new("no-event");
    h.add_chain(EVENT_QUEUE, &[(EVENT_ADDR, 4, true)]);
    h.activate();
    h.dev.process_queue(EVENT_QUEUE);
    assert!(h.new_used(EVENT_QUEUE).is_empty());
}

#[test]
fn activation_needs_all_three_queues() {
    let mut h = Harness::new("not-ready");
    let refs: Vec<&MockSplitQueue<'_, GuestMemoryMmap>> = h.mocks.iter().collect();
    let (mut active, _evt) = activation(h.mem, &refs, VIRTIO_F_VERSION_1);
    active.queues[2].set_ready(false);
    let err = h.dev.activate(active).err().unwrap();
    assert!(matches!(err, ActivateError::QueueNotReady(2)), "{err}");
}

// ---- Fuzzing ----

/// A tiny xorshift generator: reproducible inputs without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Proves only that a few hundred random layouts neither panic nor hang.
#[test]
fn random_queue_layouts_never_panic() {
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for _ in 0..300 {
        let len = (rng.next() % 1024) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzz_queue(&data);
    }
    fuzz_queue(&[]);
}

#[test]
fn the_fuzz_entry_point_cleans_up() {
    fuzz_queue(&[0; 64]);
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("hiber-vsock-fuzz-{}-", std::process::id()))
        })
        .count();
    // Other fuzz tests of this process may run at the same time.
    assert!(leftovers <= 1, "{leftovers} fuzz directories are left");
}
