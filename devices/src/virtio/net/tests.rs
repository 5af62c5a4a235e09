use std::os::unix::net::UnixDatagram;

use event_manager::EventSet;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, used_count, used_entry};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];

type Mock<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

fn readable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn writable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

/// Links `descs` into one chain (each but the last gets NEXT to the
/// following index, starting at table index `first`).
fn linked(descs: &[RawDescriptor], first: u16) -> Vec<RawDescriptor> {
    let last = descs.len() - 1;
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let (flags, next) = if i == last {
                (d.flags(), 0)
            } else {
                (d.flags() | VRING_DESC_F_NEXT as u16, first + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect()
}

/// A device on a socket pair, started on `rx` and `tx`; returns it, the
/// host end of the pair and the interrupt eventfd.
fn started(
    mem: &GuestMemoryMmap,
    rx: &Mock<'_>,
    tx: &Mock<'_>,
    mac: Option<[u8; 6]>,
) -> (Net, UnixDatagram, EventFd) {
    let (host, dev) = UnixDatagram::pair().unwrap();
    host.set_nonblocking(true).unwrap();
    dev.set_nonblocking(true).unwrap();
    let mut net = Net::with_backend("eth0", "tap0", mac, Box::new(dev)).unwrap();
    let (active, irq) = activation(mem, &[rx, tx], net.avail_features());
    net.activate(active).unwrap();
    (net, host, irq)
}

/// A frame as the TAP hands it over: a header, then `body`.
fn tap_frame(body: &[u8]) -> Vec<u8> {
    let mut f = vec![0xee; HEADER_LEN];
    f.extend_from_slice(body);
    f
}

fn recv_all(host: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME_LEN + 10];
    while let Ok(n) = host.recv(&mut buf) {
        frames.push(buf[..n].to_vec());
    }
    frames
}

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

#[test]
fn tx_sends_a_frame_split_over_descriptors_with_a_zeroed_header() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    mem.write_slice(&[0x55; HEADER_LEN], GuestAddress(0x4_0000))
        .unwrap();
    mem.write_slice(b"hello, host", GuestAddress(0x5_0000))
        .unwrap();
    let chain = linked(&[readable(0x4_0000, 12), readable(0x5_0000, 11)], 0);
    tx.add_desc_chains(&chain, 0).unwrap();
    let (mut net, host, irq) = started(&mem, &rx, &tx, Some(MAC));

    net.process_queue(TX_QUEUE);

    assert_eq!(used_count(&tx), 1);
    assert_eq!(used_entry(&tx, 0), (0, 0));
    let frames = recv_all(&host);
    assert_eq!(frames.len(), 1);
    assert_eq!(&frames[0][..HEADER_LEN], &[0u8; HEADER_LEN]);
    assert_eq!(&frames[0][HEADER_LEN..], b"hello, host");
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(net.save().tx_frames, 1);
}

#[test]
fn rx_writes_a_frame_with_num_buffers_one_and_signals() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    rx.add_desc_chains(&[writable(0x8_0000, 2048)], 0).unwrap();
    let (mut net, host, irq) = started(&mem, &rx, &tx, Some(MAC));
    host.send(&tap_frame(b"hello, guest")).unwrap();

    net.process_backend(0, EventSet::IN);

    assert_eq!(used_count(&rx), 1);
    let len = HEADER_LEN + 12;
    assert_eq!(used_entry(&rx, 0), (0, len as u32));
    let got = guest_bytes(&mem, 0x8_0000, len);
    let mut header = [0u8; HEADER_LEN];
    header[10] = 1;
    assert_eq!(&got[..HEADER_LEN], &header, "flags cleared, num_buffers 1");
    assert_eq!(&got[HEADER_LEN..], b"hello, guest");
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn no_interrupt_when_the_driver_suppresses_them() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    rx.add_desc_chains(&[writable(0x8_0000, 256)], 0).unwrap();
    // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags.
    mem.write_obj(1u16, rx.avail_addr()).unwrap();
    let (mut net, host, irq) = started(&mem, &rx, &tx, None);
    host.send(&tap_frame(b"quiet")).unwrap();

    net.process_backend(0, EventSet::IN);

    assert_eq!(used_count(&rx), 1);
    assert!(irq.read().is_err(), "the driver asked for no interrupt");
}

#[test]
fn an_rx_frame_waits_for_a_buffer_then_reading_goes_on() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    let (mut net, host, irq) = started(&mem, &rx, &tx, None);
    host.send(&tap_frame(b"first")).unwrap();
    host.send(&tap_frame(b"second")).unwrap();

    net.process_backend(0, EventSet::IN);
    assert_eq!(used_count(&rx), 0);
    assert!(irq.read().is_err(), "no interrupt without a used entry");

    // The guest adds two buffers and notifies: both frames arrive, the
    // second read from the backend only now (the edge came long ago).
    rx.add_desc_chains(&[writable(0x8_0000, 256), writable(0x9_0000, 256)], 0)
        .unwrap();
    net.process_queue(RX_QUEUE);
    assert_eq!(used_count(&rx), 2);
    assert_eq!(guest_bytes(&mem, 0x8_0000 + HEADER_LEN as u64, 5), b"first");
    assert_eq!(
        guest_bytes(&mem, 0x9_0000 + HEADER_LEN as u64, 6),
        b"second"
    );
    assert_eq!(net.save().rx_frames, 2);
}

#[test]
fn an_rx_frame_too_big_for_its_buffer_is_dropped_and_the_buffer_kept() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    rx.add_desc_chains(&[writable(0x8_0000, 100)], 0).unwrap();
    let (mut net, host, _irq) = started(&mem, &rx, &tx, None);
    host.send(&tap_frame(&[7u8; 200])).unwrap();
    host.send(&tap_frame(b"small")).unwrap();

    net.process_backend(0, EventSet::IN);

    assert_eq!(used_count(&rx), 1, "the kept buffer took the next frame");
    assert_eq!(used_entry(&rx, 0), (0, (HEADER_LEN + 5) as u32));
    assert_eq!(net.save().dropped, 1);
}

#[test]
fn rx_fills_a_chain_of_several_buffers() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    let chain = linked(&[writable(0x8_0000, 12), writable(0x9_0000, 8)], 0);
    rx.add_desc_chains(&chain, 0).unwrap();
    let (mut net, host, _irq) = started(&mem, &rx, &tx, None);
    host.send(&tap_frame(b"abcdefgh")).unwrap();

    net.process_backend(0, EventSet::IN);

    assert_eq!(used_entry(&rx, 0), (0, 20));
    assert_eq!(guest_bytes(&mem, 0x9_0000, 8), b"abcdefgh");
}

/// Puts `bad` (a broken chain at table index 0) and then a good chain on
/// the tx queue: the bad one is completed with 0 and not sent, the good one
/// still goes out.
fn tx_refuses(bad: &[RawDescriptor], fix: impl Fn(&Mock<'_>)) {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    tx.add_desc_chains(bad, 0).unwrap();
    fix(&tx);
    mem.write_slice(&[0u8; 20], GuestAddress(0x6_0000)).unwrap();
    tx.add_desc_chains(&[readable(0x6_0000, 20)], 8).unwrap();
    let (mut net, host, _irq) = started(&mem, &rx, &tx, None);

    net.process_queue(TX_QUEUE);

    assert_eq!(used_count(&tx), 2);
    assert_eq!(used_entry(&tx, 0), (0, 0));
    let frames = recv_all(&host);
    assert_eq!(frames.len(), 1, "only the good chain was sent");
    assert_eq!(frames[0].len(), 20);
    assert_eq!(net.save().dropped, 1);
}

#[test]
fn tx_refuses_a_looping_chain() {
    let chain = linked(&[readable(0x4_0000, 16), readable(0x4_1000, 16)], 0);
    tx_refuses(&chain, |tx| {
        let back = SplitDescriptor::new(0x4_1000, 16, VRING_DESC_F_NEXT as u16, 0);
        tx.desc_table().store(1, RawDescriptor::from(back)).unwrap();
    });
}

#[test]
fn tx_refuses_a_next_index_past_the_table() {
    let chain = linked(&[readable(0x4_0000, 16), readable(0x4_1000, 16)], 0);
    tx_refuses(&chain, |tx| {
        let wild = SplitDescriptor::new(0x4_0000, 16, VRING_DESC_F_NEXT as u16, 999);
        tx.desc_table().store(0, RawDescriptor::from(wild)).unwrap();
    });
}

#[test]
fn tx_refuses_a_buffer_outside_guest_memory() {
    tx_refuses(&[readable(0x20_0000, 64)], |_| {});
}

#[test]
fn tx_refuses_a_frame_longer_than_the_largest() {
    tx_refuses(&[readable(0x4_0000, MAX_FRAME_LEN as u32 + 1)], |_| {});
}

#[test]
fn tx_refuses_a_writable_buffer() {
    let chain = linked(&[readable(0x4_0000, 12), writable(0x4_1000, 64)], 0);
    tx_refuses(&chain, |_| {});
}

#[test]
fn tx_refuses_a_chain_shorter_than_the_header() {
    tx_refuses(&[readable(0x4_0000, 11)], |_| {});
}

/// Puts `bad` at table index 0 and a good chain after it on the rx queue:
/// the bad one is completed with 0 and the frame goes to the good one.
fn rx_refuses(bad: &[RawDescriptor], fix: impl Fn(&Mock<'_>)) {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    rx.add_desc_chains(bad, 0).unwrap();
    fix(&rx);
    rx.add_desc_chains(&[writable(0x9_0000, 256)], 8).unwrap();
    let (mut net, host, _irq) = started(&mem, &rx, &tx, None);
    host.send(&tap_frame(b"payload")).unwrap();

    net.process_backend(0, EventSet::IN);

    assert_eq!(used_count(&rx), 2);
    assert_eq!(used_entry(&rx, 0), (0, 0));
    assert_eq!(used_entry(&rx, 1), (8, (HEADER_LEN + 7) as u32));
    let body = guest_bytes(&mem, 0x9_0000 + HEADER_LEN as u64, 7);
    assert_eq!(body, b"payload");
}

#[test]
fn rx_refuses_a_looping_chain() {
    let chain = linked(&[writable(0x8_0000, 16), writable(0x8_1000, 16)], 0);
    rx_refuses(&chain, |rx| {
        let flags = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
        let back = SplitDescriptor::new(0x8_1000, 16, flags, 0);
        rx.desc_table().store(1, RawDescriptor::from(back)).unwrap();
    });
}

#[test]
fn rx_refuses_a_buffer_outside_guest_memory() {
    // The frame would fit the first buffer; the second is still checked.
    let chain = linked(&[writable(0x8_0000, 256), writable(0x20_0000, 64)], 0);
    rx_refuses(&chain, |_| {});
}

#[test]
fn rx_refuses_a_readable_buffer() {
    rx_refuses(&[readable(0x8_0000, 256)], |_| {});
}

#[test]
fn rx_refuses_a_chain_shorter_than_the_header() {
    rx_refuses(&[writable(0x8_0000, 8)], |_| {});
}

#[test]
fn the_configuration_space_holds_the_mac_and_link_up() {
    let (_, dev) = UnixDatagram::pair().unwrap();
    let net = Net::with_backend("eth0", "tap0", Some(MAC), Box::new(dev)).unwrap();
    let mut config = [0xffu8; 10];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(&config[6..8], &[1, 0], "VIRTIO_NET_S_LINK_UP");
    assert_eq!(&config[8..], &[0, 0], "bytes beyond the space read as zero");
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(status, [1, 0]);
    net.read_config(u64::MAX, &mut status);
    assert_eq!(status, [0, 0]);
}

#[test]
fn the_mac_feature_follows_the_mac() {
    let (_, a) = UnixDatagram::pair().unwrap();
    let (_, b) = UnixDatagram::pair().unwrap();
    let with = Net::with_backend("eth0", "tap0", Some(MAC), Box::new(a)).unwrap();
    let without = Net::with_backend("eth1", "tap1", None, Box::new(b)).unwrap();
    let mac_bit = 1u64 << VIRTIO_NET_F_MAC;
    assert_eq!(with.avail_features() & mac_bit, mac_bit);
    assert_eq!(without.avail_features() & mac_bit, 0);
    for f in [with.avail_features(), without.avail_features()] {
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_STATUS), 0);
    }
}

#[test]
fn a_multicast_or_zero_mac_is_refused_naming_the_interface() {
    for mac in [[1, 0, 0, 0, 0, 1], [0; 6]] {
        let (_, dev) = UnixDatagram::pair().unwrap();
        let err = Net::with_backend("eth3", "tap3", Some(mac), Box::new(dev))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("eth3") && err.contains("tap3"), "{err}");
        assert!(err.contains("02:00:00:00:00:01"), "{err}");
    }
}

#[test]
fn activation_needs_both_queues_ready() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    let (_, dev) = UnixDatagram::pair().unwrap();
    let mut net = Net::with_backend("eth0", "tap0", None, Box::new(dev)).unwrap();
    let (mut active, _irq) = activation(&mem, &[&rx, &tx], VIRTIO_F_VERSION_1);
    active.queues[TX_QUEUE].set_ready(false);
    let err = net.activate(active).unwrap_err();
    assert!(
        matches!(err, ActivateError::QueueNotReady(TX_QUEUE)),
        "{err}"
    );
}

#[test]
fn state_round_trips_and_the_waiting_frame_is_counted_as_dropped() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    mem.write_slice(&[0u8; 20], GuestAddress(0x6_0000)).unwrap();
    tx.add_desc_chains(&[readable(0x6_0000, 20)], 0).unwrap();
    let (mut net, host, _irq) = started(&mem, &rx, &tx, Some(MAC));
    net.process_queue(TX_QUEUE);
    host.send(&tap_frame(b"waits")).unwrap();
    net.process_backend(0, EventSet::IN);

    let state = net.save();
    assert_eq!(state.tx_frames, 1);
    assert_eq!(state.dropped, 1, "the waiting frame is not saved");
    let mut encoded = Vec::new();
    ciborium::into_writer(&state, &mut encoded).unwrap();
    let decoded: NetState = ciborium::from_reader(encoded.as_slice()).unwrap();
    assert_eq!(decoded, state);

    let (_, dev) = UnixDatagram::pair().unwrap();
    let back = Net::restore_with_backend(&decoded, "tap0", None, Box::new(dev)).unwrap();
    assert_eq!(back.save(), state);
    assert_eq!(back.id(), "eth0");
    assert_eq!(back.avail_features(), net.avail_features());
}

#[test]
fn restore_overrides_replace_the_tap_and_the_mac() {
    let (_, dev) = UnixDatagram::pair().unwrap();
    let state = Net::with_backend("eth0", "tap0", None, Box::new(dev))
        .unwrap()
        .save();
    let new_mac = [0x02, 0xaa, 0, 0, 0, 1];
    let (_, dev) = UnixDatagram::pair().unwrap();
    let net = Net::restore_with_backend(&state, "tap9", Some(new_mac), Box::new(dev)).unwrap();
    let saved = net.save();
    assert_eq!((saved.tap.as_str(), saved.mac), ("tap9", Some(new_mac)));
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, new_mac);
    assert_ne!(net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
}

#[test]
fn a_reset_device_does_nothing_until_started_again() {
    let mem = test_memory();
    let (rx, tx) = (mock_queue(&mem, 0, 16), mock_queue(&mem, 1, 16));
    let (mut net, host, _irq) = started(&mem, &rx, &tx, None);
    assert!(net.reset().is_some());
    rx.add_desc_chains(&[writable(0x8_0000, 256)], 0).unwrap();
    host.send(&tap_frame(b"late")).unwrap();
    net.process_backend(0, EventSet::IN);
    net.process_queue(TX_QUEUE);
    assert_eq!(used_count(&rx), 0);
    assert!(net.queues().is_none());
}

#[test]
fn the_backend_is_watched_edge_triggered() {
    let (_, dev) = UnixDatagram::pair().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev);
    let net = Net::with_backend("eth0", "tap0", None, Box::new(dev)).unwrap();
    let fds = net.backend_fds();
    assert_eq!(fds.len(), 1);
    assert_eq!(fds[0].fd, fd);
    assert_eq!(fds[0].events, EventSet::IN | EventSet::EDGE_TRIGGERED);
}

#[test]
fn a_missing_tap_or_a_bad_name_is_reported_with_the_fix() {
    let err = Net::new("eth0", "hiber-none0", None).err().unwrap();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("eth0") && chain.contains("hiber-none0"),
        "{chain}"
    );
    assert!(
        chain.contains("ip tuntap add hiber-none0 mode tap"),
        "{chain}"
    );

    let err = Net::new("eth0", "a/b", None).err().unwrap();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("not an interface name"), "{cause}");
}

#[test]
fn the_fuzz_entry_point_survives_pseudo_random_input() {
    for input in crate::virtio::test_utils::pseudo_random_inputs(300, 900) {
        fuzz_queue(&input);
    }
}

mod real_tap;
