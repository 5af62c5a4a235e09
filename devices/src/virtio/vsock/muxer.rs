//! The host side of the vsock device: the listening Unix socket, the
//! connections, and one epoll set of its own that holds them all.
//!
//! Host programs reach the guest the way Firecracker's vsock does, so the
//! same tools work: connect to the device's socket, send `CONNECT <port>\n`,
//! and read `OK <host port>\n` once the guest accepted (the socket closes
//! if it refused). A guest that connects to the host (cid 2) port `P` is
//! joined to the Unix socket `<socket path>_P`.
//!
//! The device exposes the epoll set as its one backend descriptor; when it
//! is ready, [`Muxer::process_events`] handles what it reports. Packets for
//! the guest are produced on demand by [`Muxer::next_packet`] when the
//! guest offers an RX buffer, so nothing queues up while it offers none.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection};
use super::packet::{op, FaultLog, Header, RxPacket, TxPacket, HOST_CID, TYPE_STREAM};
use super::uds::{self, FileId};
use super::VsockError;

/// The most connections at once; with [`super::connection::TX_BUF_SIZE`]
/// this bounds the guest data the VMM may hold to 16 MiB.
pub const MAX_CONNECTIONS: usize = 64;
/// The most host programs that connected but did not send `CONNECT` yet.
pub const MAX_HANDSHAKES: usize = 32;
/// The longest `CONNECT <port>` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// The most RSTs for packets that belong to no connection held at once.
pub const MAX_STRAY_RESETS: usize = 64;
/// The first host port given to connections that host programs open.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// A connection's ports: (host side, guest side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

/// A connection and the events its stream is registered for.
struct Slot {
    conn: Connection,
    registered: Option<EventSet>,
}

/// A host program that connected and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The host side of the device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_id: FileId,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: Option<Instant>,
    conns: BTreeMap<ConnKey, Slot>,
    fd_keys: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    stray: VecDeque<RxPacket>,
    cursor: ConnKey,
    next_port: u32,
    faults: FaultLog,
}

/// Fault kinds of guest packets the muxer refuses, for [`FaultLog`].
mod fault {
    pub const SOURCE_CID: u32 = 16;
    pub const DEST_CID: u32 = 17;
    pub const SOCKET_TYPE: u32 = 18;
    pub const TOO_MANY: u32 = 19;
}

impl Muxer {
    /// Binds the listening socket at `uds_path` and builds the epoll set.
    pub fn bind(guest_cid: u64, uds_path: &Path) -> Result<Muxer, VsockError> {
        let (listener, listener_id) = uds::bind_listener(uds_path)?;
        let setup = |source| VsockError::EventSet {
            path: uds_path.to_path_buf(),
            source,
        };
        let epoll = Epoll::new().map_err(setup)?;
        let timer = TimerFd::new().map_err(|e| setup(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(setup)?;
        for fd in [listener.as_raw_fd(), timer.as_raw_fd()] {
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            epoll.ctl(ControlOperation::Add, fd, ev).map_err(setup)?;
        }
        log::info!(
            "vsock: listening on {} for cid {guest_cid}",
            uds_path.display()
        );
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listener_id,
            epoll,
            timer,
            timer_armed: None,
            conns: BTreeMap::new(),
            fd_keys: HashMap::new(),
            handshakes: HashMap::new(),
            stray: VecDeque::new(),
            cursor: ConnKey {
                local_port: 0,
                peer_port: 0,
            },
            next_port: FIRST_HOST_PORT,
            faults: FaultLog::default(),
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The epoll set's descriptor, the device's one backend descriptor.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// How many connections exist.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest bytes held for host streams that have not taken them, in all.
    pub fn buffered(&self) -> usize {
        self.conns.values().map(|s| s.conn.buffered()).sum()
    }

    /// Drops every connection (the driver reset the device, or the
    /// connections cannot survive a snapshot): host streams are closed.
    pub fn drop_connections(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.stray.clear();
        self.rearm_timer();
    }

    /// Handles what the epoll set reports (without waiting).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => {
                log::error!("vsock: waiting on the device's epoll set failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            self.dispatch(ev.data() as RawFd, ev.event_set());
        }
        self.sweep();
        self.rearm_timer();
    }

    fn dispatch(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_all();
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer();
        } else if let Some(key) = self.fd_keys.get(&fd).copied() {
            if let Some(slot) = self.conns.get_mut(&key) {
                slot.conn.on_host_event(events);
            }
            self.sync(key);
        } else if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
        }
        // Anything else was closed earlier in this batch.
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_handshake(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!(
                        "vsock: accepting on {} failed: {e}",
                        self.uds_path.display()
                    );
                    return;
                }
            }
        }
    }

    fn add_handshake(&mut self, stream: UnixStream) {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            log::warn!(
                "vsock: {MAX_HANDSHAKES} host connections are waiting to send CONNECT; \
                 closing a new one"
            );
            return;
        }
        let fd = stream.as_raw_fd();
        let ev = EpollEvent::new(EventSet::IN, fd as u64);
        let added = stream
            .set_nonblocking(true)
            .and_then(|()| self.epoll.ctl(ControlOperation::Add, fd, ev));
        if let Err(e) = added {
            log::warn!("vsock: could not watch a new host connection: {e}");
            return;
        }
        let line = Vec::new();
        self.handshakes.insert(fd, Handshake { stream, line });
    }

    /// Reads the `CONNECT` line a byte at a time, so that data the host
    /// program sends after it stays in the stream for the guest.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let why = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break "it closed before its CONNECT line",
                Ok(_) if byte[0] == b'\n' => return self.finish_handshake(fd),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break "its CONNECT line is too long",
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break "reading its CONNECT line failed",
            }
        };
        self.end_handshake(fd, why);
    }

    /// Takes a handshake out of the epoll set and the table.
    fn take_handshake(&mut self, fd: RawFd) -> Option<Handshake> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.handshakes.remove(&fd)
    }

    /// Closes a host connection that did not send a good `CONNECT` line.
    fn end_handshake(&mut self, fd: RawFd, why: &str) {
        self.take_handshake(fd);
        log::debug!("vsock: closing a host connection: {why}");
    }

    fn finish_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.take_handshake(fd) else {
            return;
        };
        let Some(peer_port) = parse_connect(&hs.line) else {
            let line = String::from_utf8_lossy(&hs.line);
            log::debug!("vsock: closing a host connection that sent {line:?}, not CONNECT <port>");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return log::warn!("vsock: {MAX_CONNECTIONS} connections exist; refusing another");
        }
        let Some(local_port) = self.allocate_port() else {
            return log::warn!("vsock: no host port is free for a new connection");
        };
        let conn = Connection::host_init(hs.stream, self.guest_cid, local_port, peer_port);
        log::debug!("vsock: host port {local_port} connects to guest port {peer_port}");
        self.insert(conn, local_port, peer_port);
    }

    fn allocate_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            // u32::MAX is VMADDR_PORT_ANY, never a real port.
            self.next_port = if port >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn insert(&mut self, conn: Connection, local_port: u32, peer_port: u32) {
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let fd = conn.fd();
        let wanted = conn.wanted_events().unwrap_or(EventSet::empty());
        let ev = EpollEvent::new(wanted, fd as u64);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
            log::warn!("vsock: could not watch a connection's host stream: {e}");
            return;
        }
        self.fd_keys.insert(fd, key);
        let registered = Some(wanted);
        self.conns.insert(key, Slot { conn, registered });
    }

    /// Brings the epoll registration of `key`'s stream up to date.
    fn sync(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = slot.conn.wanted_events();
        if wanted == slot.registered {
            return;
        }
        let fd = slot.conn.fd();
        let result = match wanted {
            Some(ev) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, fd as u64))
            }
            None => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
        };
        if let Err(e) = result {
            log::warn!("vsock: could not update a host stream's epoll registration: {e}");
        }
        slot.registered = wanted;
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.remove(&key) else {
            return;
        };
        let fd = slot.conn.fd();
        if slot.registered.is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.fd_keys.remove(&fd);
        log::debug!(
            "vsock: connection of host port {} / guest port {} closed",
            key.local_port,
            key.peer_port
        );
    }

    /// Forgets connections that are over.
    fn sweep(&mut self) {
        let over: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, s)| s.conn.state() == ConnState::Closed)
            .map(|(k, _)| *k)
            .collect();
        for key in over {
            self.remove(key);
        }
    }

    fn on_timer(&mut self) {
        // Non-blocking: a read finding no expiry (the timer was re-armed
        // since it fired) is harmless.
        let _ = self.timer.wait();
        self.timer_armed = None;
        let now = Instant::now();
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(slot) = self.conns.get_mut(&key) {
                slot.conn.check_expiry(now);
            }
            self.sync(key);
        }
    }

    /// Arms the timer for the earliest connection timeout.
    fn rearm_timer(&mut self) {
        let next = self.conns.values().filter_map(|s| s.conn.expiry()).min();
        if next == self.timer_armed {
            return;
        }
        let result = match next {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("vsock: could not arm the connection timer: {e}");
        }
        self.timer_armed = next;
    }

    /// Takes in a packet the guest sent.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket) {
        let hdr = &pkt.hdr;
        if hdr.src_cid != self.guest_cid {
            let (got, cid) = (hdr.src_cid, self.guest_cid);
            let msg = format!("dropped a packet from cid {got}; the guest's cid is {cid}");
            return self.faults.report(fault::SOURCE_CID, &msg);
        }
        if hdr.dst_cid != HOST_CID {
            let msg = format!(
                "refused a packet for cid {}; only the host is reachable",
                hdr.dst_cid
            );
            self.faults.report(fault::DEST_CID, &msg);
            return self.reply_rst(hdr);
        }
        if hdr.kind != TYPE_STREAM {
            let msg = format!("refused a packet of socket type {}; only streams", hdr.kind);
            self.faults.report(fault::SOCKET_TYPE, &msg);
            return self.reply_rst(hdr);
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(slot) = self.conns.get_mut(&key) {
            slot.conn.on_guest_packet(hdr, &pkt.payload);
            self.sync(key);
        } else if hdr.op == op::REQUEST {
            self.guest_connect(hdr);
        } else {
            self.reply_rst(hdr);
        }
        self.sweep();
        self.rearm_timer();
    }

    /// Resets the connection `hdr` names, for a packet the guest sent that
    /// was refused after its header was read.
    pub fn on_refused_packet(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(slot) => {
                slot.conn.kill("the guest sent a malformed packet");
                self.sync(key);
            }
            None => self.reply_rst(hdr),
        }
    }

    /// Joins a guest's connection to the host listener `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            let msg = format!("refused a connection: {MAX_CONNECTIONS} exist");
            self.faults.report(fault::TOO_MANY, &msg);
            return self.reply_rst(hdr);
        }
        let path = self.host_listener_path(hdr.dst_port);
        match uds::connect_nonblocking(&path) {
            Ok(stream) => {
                log::debug!(
                    "vsock: guest port {} joined {}",
                    hdr.src_port,
                    path.display()
                );
                let conn = Connection::guest_init(stream, hdr);
                self.insert(conn, hdr.dst_port, hdr.src_port);
            }
            Err(e) => {
                log::debug!("vsock: guest connection to {} refused: {e}", path.display());
                self.reply_rst(hdr);
            }
        }
    }

    /// The Unix socket a guest connection to host port `port` joins.
    pub fn host_listener_path(&self, port: u32) -> PathBuf {
        let mut name = self.uds_path.as_os_str().to_owned();
        name.push(format!("_{port}"));
        PathBuf::from(name)
    }

    /// Owes the guest an RST for a packet that has no connection.
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == op::RST {
            return;
        }
        if self.stray.len() >= MAX_STRAY_RESETS {
            log::debug!("vsock: too many resets owed to the guest; dropping one");
            return;
        }
        let hdr = hdr.reply(op::RST);
        let payload = Vec::new();
        self.stray.push_back(RxPacket { hdr, payload });
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_pending(&self) -> bool {
        !self.stray.is_empty() || self.conns.values().any(|s| s.conn.has_pending())
    }

    /// The next packet for the guest, with at most `room` payload bytes;
    /// connections take turns.
    pub fn next_packet(&mut self, room: usize) -> Option<RxPacket> {
        if let Some(pkt) = self.stray.pop_front() {
            return Some(pkt);
        }
        let after = self
            .conns
            .range((Bound::Excluded(self.cursor), Bound::Unbounded));
        let before = self.conns.range(..=self.cursor);
        let turns: Vec<ConnKey> = after
            .chain(before)
            .filter(|(_, s)| s.conn.has_pending())
            .map(|(k, _)| *k)
            .collect();
        let mut found = None;
        for key in turns {
            let pkt = self
                .conns
                .get_mut(&key)
                .and_then(|s| s.conn.next_packet(room));
            self.sync(key);
            if pkt.is_some() {
                self.cursor = key;
                found = pkt;
                break;
            }
        }
        self.sweep();
        self.rearm_timer();
        found
    }

    /// A packet from [`Self::next_packet`] could not be given to the guest:
    /// its connection cannot go on.
    pub fn lost(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.src_port,
            peer_port: hdr.dst_port,
        };
        if let Some(slot) = self.conns.get_mut(&key) {
            slot.conn
                .kill("a packet could not be written to guest memory");
            self.sync(key);
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        uds::remove_if_ours(&self.uds_path, self.listener_id);
    }
}

/// The port of a `CONNECT <port>` line (a trailing `\r` is allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text
        .strip_suffix('\r')
        .unwrap_or(text)
        .strip_prefix("CONNECT ")?;
    port.parse().ok()
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor the caller owns, with no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
