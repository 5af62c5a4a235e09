//! What the network device needs of its host side, so tests can put a
//! socket pair where the TAP would be.

use std::io;
use std::os::fd::RawFd;

/// A host endpoint that carries whole frames, each starting with its
/// 12-byte virtio-net header, one frame per read or write.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;

    /// The non-blocking descriptor that becomes readable when a frame
    /// arrives.
    fn raw_fd(&self) -> RawFd;
}

/// A datagram socket keeps frame boundaries as a TAP does: the pretend TAP
/// of the tests and the fuzz entry point.
#[cfg(any(test, feature = "test-utils"))]
impl NetBackend for std::os::unix::net::UnixDatagram {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::recv(self, buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::send(self, frame)
    }

    fn raw_fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}
