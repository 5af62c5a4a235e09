//! One stream connection between a guest vsock socket and a host Unix
//! stream: its state machine and its credit-based flow control.
//!
//! Credit works in both directions, as the virtio specification describes:
//! every packet carries the sender's receive buffer size (`buf_alloc`) and
//! how much of it the sender ever consumed (`fwd_cnt`).
//! - Guest to host: the device offers [`TX_BUF_SIZE`] bytes. Data the host
//!   socket does not take at once waits in `tx_buf`, and a guest that sends
//!   more than its credit allows is reset, so `tx_buf` never grows beyond
//!   that size. The device tells the guest about forwarded bytes in every
//!   packet, and with a credit update once half the buffer was forwarded
//!   unannounced.
//! - Host to guest: the device reads from the host socket only into a guest
//!   RX buffer and never more than the guest's free space
//!   (`buf_alloc - (rx_cnt - fwd_cnt)`), so it buffers nothing; with no
//!   credit left it asks the guest for an update once and waits.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    op, Header, RxPacket, HOST_CID, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// The receive buffer the device offers the guest on each connection: the
/// most guest data the VMM ever holds for one connection.
pub const TX_BUF_SIZE: u32 = 256 << 10;
/// Forwarded bytes the guest has not been told about that make the device
/// send a credit update.
pub const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 2;
/// How long the guest may take to answer a connection request. Generous,
/// since a guest whose kernel is emulated answers slowly.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest may take to reset a connection the host closed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// A host program connected; the REQUEST to the guest is pending or
    /// sent, and its answer awaited.
    HostInit,
    /// Data flows (perhaps in one direction only, after a shutdown).
    Established,
    /// Over: the muxer forgets the connection and closes its host stream.
    Closed,
}

/// Control packets owed to the guest.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    rst: bool,
    response: bool,
    request: bool,
    shutdown: u32,
    credit_update: bool,
}

/// One connection: a guest port and a host port joined to a host stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    /// The host-side vsock port.
    local_port: u32,
    /// The guest-side vsock port.
    peer_port: u32,
    state: ConnState,
    pending: Pending,
    /// Guest data the host stream has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host stream, ever.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer size.
    peer_buf_alloc: u32,
    /// Bytes the guest consumed from that buffer, ever.
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest, ever.
    rx_cnt: Wrapping<u32>,
    /// A credit request went out and no credit came back yet.
    credit_requested: bool,
    /// The host stream may have data (or its end) to read.
    readable: bool,
    /// The host stream ended: read returned 0.
    host_eof: bool,
    /// The host closed the stream or it failed (epoll reported it).
    host_hup: bool,
    /// The host stream's write side is shut (the guest will send no more).
    host_write_shut: bool,
    /// The `SHUTDOWN_*` flags the guest sent.
    guest_shut: u32,
    /// When the connection is reset unless the guest answers.
    expiry: Option<Instant>,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: ConnState::HostInit,
            pending: Pending::default(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            readable: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            guest_shut: 0,
            expiry: None,
        }
    }

    /// A connection a host program asked for: a REQUEST to guest port
    /// `peer_port` from host port `local_port` is owed.
    pub fn host_init(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Connection::new(stream, guest_cid, local_port, peer_port);
        c.pending.request = true;
        c
    }

    /// A connection the guest asked for with `request`, already joined to
    /// the host listener's `stream`: a RESPONSE is owed.
    pub fn guest_init(stream: UnixStream, request: &Header) -> Self {
        let mut c = Connection::new(stream, request.src_cid, request.dst_port, request.src_port);
        c.state = ConnState::Established;
        c.pending.response = true;
        c.take_credit(request);
        c
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host stream's descriptor.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// When the connection times out, if it waits for the guest.
    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Guest bytes held because the host stream has not taken them.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// What the guest may still send before it must wait for credit.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn take_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Ends the connection with an RST to the guest.
    pub fn kill(&mut self, why: &str) {
        log::debug!(
            "vsock: reset of host port {} / guest port {}: {why}",
            self.local_port,
            self.peer_port
        );
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.readable = false;
        self.expiry = None;
        self.tx_buf.clear();
    }

    /// The guest reset the connection: forward what the host takes now,
    /// then forget it.
    fn close(&mut self) {
        self.flush();
        self.state = ConnState::Closed;
        self.pending = Pending::default();
        self.expiry = None;
    }

    /// Takes in a packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if self.state == ConnState::Closed {
            return;
        }
        self.take_credit(hdr);
        match (hdr.op, self.state) {
            (op::RESPONSE, ConnState::HostInit) => self.accepted_by_guest(),
            (op::RW, ConnState::Established) => self.forward(payload),
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => self.pending.credit_update = true,
            (op::SHUTDOWN, ConnState::Established) => self.guest_shutdown(hdr.flags),
            (op::RST, _) => self.close(),
            (other, state) => self.kill(&format!("operation {other} is not valid in {state:?}")),
        }
    }

    /// The guest accepted a host program's connection: tell the program.
    fn accepted_by_guest(&mut self) {
        self.state = ConnState::Established;
        self.expiry = None;
        let line = format!("OK {}\n", self.local_port);
        // A fresh stream's send buffer is empty: a short line fits, and a
        // host program that does not take it is not worth buffering for.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            Ok(_) => self.kill("the host program did not take the OK line"),
            Err(e) => self.kill(&format!("the OK line could not be written: {e}")),
        }
    }

    /// Forwards guest data to the host stream, holding what it cannot take.
    fn forward(&mut self, payload: &[u8]) {
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            return self.kill("the guest sent data after shutting down its sending");
        }
        if self.tx_buf.len() + payload.len() > TX_BUF_SIZE as usize {
            return self.kill("the guest sent more than its credit");
        }
        if !self.tx_buf.is_empty() {
            self.tx_buf.extend(payload);
            return;
        }
        match write_stream(&mut self.stream, payload) {
            Ok(n) => {
                self.count_forwarded(n);
                self.tx_buf.extend(&payload[n..]);
            }
            Err(e) => self.kill(&format!("writing to the host stream failed: {e}")),
        }
    }

    fn count_forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Writes held guest data to the host stream, as much as it takes.
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let (head, _) = self.tx_buf.as_slices();
            let len = head.len();
            match write_stream(&mut self.stream, head) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.count_forwarded(n);
                    if n < len {
                        return;
                    }
                }
                Err(e) => {
                    self.tx_buf.clear();
                    return self.kill(&format!("writing to the host stream failed: {e}"));
                }
            }
        }
        self.apply_guest_shutdown();
    }

    fn guest_shutdown(&mut self, flags: u32) {
        self.guest_shut |= flags & SHUTDOWN_BOTH;
        if self.guest_shut & SHUTDOWN_RCV != 0 {
            self.readable = false;
        }
        self.apply_guest_shutdown();
    }

    /// Once held data is out: a guest that sends no more gets the host
    /// stream's write side shut; one that closed both ways gets its RST.
    fn apply_guest_shutdown(&mut self) {
        if !self.tx_buf.is_empty() {
            return;
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            // The stream may already be gone; the RST below ends it anyway.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.guest_shut == SHUTDOWN_BOTH {
            self.kill("the guest closed its socket");
        }
    }

    /// Takes in readiness of the host stream.
    pub fn on_host_event(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            if self.state == ConnState::HostInit {
                return self.host_gave_up();
            }
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.readable = self.state == ConnState::Established;
        }
        if events.contains(EventSet::OUT) || self.host_hup {
            self.flush();
        }
    }

    /// The host program left before the guest answered.
    fn host_gave_up(&mut self) {
        if self.pending.request {
            // The guest never heard of it: nothing to reset.
            self.state = ConnState::Closed;
            self.pending = Pending::default();
        } else {
            self.kill("the host program closed its stream before the guest answered");
        }
    }

    /// Resets the connection if the guest did not answer in time.
    pub fn check_expiry(&mut self, now: Instant) {
        if self.expiry.is_some_and(|t| t <= now) {
            self.kill("the guest did not answer in time");
        }
    }

    /// The readiness to watch the host stream for; `None` when it must
    /// leave the epoll set (it hung up, or the connection is over).
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.host_hup || self.state == ConnState::Closed {
            return None;
        }
        let mut ev = EventSet::empty();
        let may_read = self.state == ConnState::Established
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && !self.pending.rst;
        if may_read && !self.readable {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.pending.rst {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    fn data_wanted(&self) -> bool {
        self.readable
            && self.state == ConnState::Established
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_pending(&self) -> bool {
        let p = &self.pending;
        if self.state == ConnState::Closed {
            return false;
        }
        p.rst
            || p.response
            || p.request
            || p.shutdown != 0
            || p.credit_update
            || (self.data_wanted() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// The next packet for the guest, with at most `room` payload bytes.
    pub fn next_packet(&mut self, room: usize) -> Option<RxPacket> {
        if self.state == ConnState::Closed {
            return None;
        }
        if self.pending.rst {
            self.state = ConnState::Closed;
            self.pending = Pending::default();
            return Some(self.packet(op::RST, 0, Vec::new()));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some(self.packet(op::RESPONSE, 0, Vec::new()));
        }
        if self.pending.request {
            self.pending.request = false;
            self.expiry = Some(Instant::now() + REQUEST_TIMEOUT);
            return Some(self.packet(op::REQUEST, 0, Vec::new()));
        }
        if self.pending.shutdown != 0 {
            let flags = std::mem::take(&mut self.pending.shutdown);
            return Some(self.packet(op::SHUTDOWN, flags, Vec::new()));
        }
        if self.data_wanted() {
            if let Some(pkt) = self.data_packet(room) {
                return Some(pkt);
            }
        }
        if self.pending.credit_update {
            return Some(self.packet(op::CREDIT_UPDATE, 0, Vec::new()));
        }
        None
    }

    /// Reads host data for the guest, within its credit and `room`.
    fn data_packet(&mut self, room: usize) -> Option<RxPacket> {
        let credit = self.peer_credit();
        if credit == 0 {
            if self.credit_requested {
                return None;
            }
            self.credit_requested = true;
            return Some(self.packet(op::CREDIT_REQUEST, 0, Vec::new()));
        }
        let max = room.min(credit as usize).min(MAX_PAYLOAD);
        if max == 0 {
            return None;
        }
        let mut buf = vec![0u8; max];
        match read_retrying(&mut self.stream, &mut buf) {
            Ok(0) => Some(self.host_ended()),
            Ok(n) => {
                buf.truncate(n);
                self.rx_cnt += Wrapping(n as u32);
                Some(self.packet(op::RW, 0, buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.readable = false;
                None
            }
            Err(e) => {
                self.kill(&format!("reading the host stream failed: {e}"));
                self.next_packet(0)
            }
        }
    }

    /// The host stream's end: the guest hears that the host sends no more,
    /// and, when the host closed the stream entirely, receives no more.
    fn host_ended(&mut self) -> RxPacket {
        self.host_eof = true;
        self.readable = false;
        let flags = if self.host_hup {
            self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
            SHUTDOWN_BOTH
        } else {
            SHUTDOWN_SEND
        };
        self.packet(op::SHUTDOWN, flags, Vec::new())
    }

    /// A packet to the guest; it carries the current credit, so no update
    /// stays owed.
    fn packet(&mut self, op: u16, flags: u32, payload: Vec<u8>) -> RxPacket {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        let hdr = Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        };
        RxPacket { hdr, payload }
    }
}

/// Writes what the stream takes now: 0 bytes when it is full.
fn write_stream(stream: &mut UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            other => return other,
        }
    }
}

fn read_retrying(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(op: u16) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 52,
            dst_port: 1 << 30,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 4096,
            ..Header::default()
        }
    }

    fn host_initiated() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (Connection::host_init(ours, 3, 1 << 30, 52), theirs)
    }

    #[test]
    fn an_unanswered_request_times_out_with_a_reset() {
        let (mut c, _host) = host_initiated();
        let req = c.next_packet(4096).unwrap();
        assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 52));
        let expiry = c.expiry().expect("a request waits for an answer");
        c.check_expiry(expiry - Duration::from_millis(1));
        assert!(!c.has_pending(), "not yet expired");
        c.check_expiry(expiry);
        assert_eq!(c.next_packet(4096).unwrap().hdr.op, op::RST);
        assert_eq!(c.state(), ConnState::Closed);
        assert!(c.next_packet(4096).is_none());
    }

    #[test]
    fn the_guests_response_writes_ok_to_the_host() {
        let (mut c, mut host) = host_initiated();
        c.next_packet(4096);
        c.on_guest_packet(&guest(op::RESPONSE), &[]);
        assert_eq!(c.state(), ConnState::Established);
        assert_eq!(c.expiry(), None);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        assert_eq!(c.wanted_events(), Some(EventSet::IN));
    }

    #[test]
    fn a_host_that_leaves_before_the_request_went_out_owes_nothing() {
        let (mut c, host) = host_initiated();
        drop(host);
        c.on_host_event(EventSet::HANG_UP);
        assert_eq!(c.state(), ConnState::Closed);
        assert!(c.next_packet(4096).is_none());
    }

    #[test]
    fn data_before_the_response_is_a_protocol_error() {
        let (mut c, _host) = host_initiated();
        c.next_packet(4096);
        c.on_guest_packet(&guest(op::RW), b"early");
        assert_eq!(c.next_packet(4096).unwrap().hdr.op, op::RST);
    }

    #[test]
    fn credit_survives_counter_wrap_and_never_goes_negative() {
        let (mut c, _host) = host_initiated();
        c.rx_cnt = Wrapping(5);
        let hdr = Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 4,
            ..guest(op::CREDIT_UPDATE)
        };
        c.take_credit(&hdr);
        assert_eq!(c.peer_credit(), 90, "10 bytes in flight across the wrap");
        // A guest claiming to have consumed more than it got has no credit.
        c.take_credit(&Header { fwd_cnt: 6, ..hdr });
        assert_eq!(c.peer_credit(), 0);
    }
}
