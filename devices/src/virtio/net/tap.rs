//! The host side of a network interface: an existing TAP device, opened
//! through `/dev/net/tun` with a virtio-net header in front of each frame.
//!
//! The TAP is attached with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! header size of 12 bytes (`struct virtio_net_hdr_v1`, the header of
//! virtio 1.x), so frames pass between the guest's queues and the TAP with
//! their header as they are. No offload is enabled on the TAP: the host
//! hands over only complete, checksummed frames.
//!
//! Written on libc's ioctls rather than taken from a crate because the
//! rust-vmm TAP code lives inside VMMs, not in a crate of its own, and the
//! whole of it here is three ioctls.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::NetBackend;
use super::HEADER_LEN;

/// The clone device of the TUN/TAP driver.
const TUN_PATH: &str = "/dev/net/tun";

/// The longest interface name Linux takes, without its NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The TUN/TAP ioctls used, from `<linux/if_tun.h>`.
mod ioctls {
    use std::os::raw::{c_int, c_uint};

    use vmm_sys_util::ioctl_iow_nr;

    const TUNTAP: c_uint = 0x54;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);
}

/// Why a TAP could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error(
        "TAP name `{0}` is not an interface name: give 1 to {MAX_NAME_LEN} bytes \
         without `/`, spaces or NUL"
    )]
    BadName(String),
    /// No interface of that name exists in this network namespace.
    #[error(
        "the TAP device `{0}` does not exist in Hiber's network namespace: create it \
         with `ip tuntap add {0} mode tap` (and bring it up with `ip link set {0} up`)"
    )]
    NotFound(String),
    /// The TUN/TAP clone device cannot be opened.
    #[error("{TUN_PATH} cannot be opened: load the `tun` kernel module (`modprobe tun`)")]
    TunDevice(#[source] io::Error),
    /// The caller may not attach to the TAP.
    #[error(
        "attaching to the TAP `{0}` needs CAP_NET_ADMIN or a TAP owned by this user: \
         run Hiber as root or create it with `ip tuntap add {0} mode tap user $USER`"
    )]
    Permission(String),
    /// Another process holds the TAP.
    #[error(
        "the TAP `{0}` is already attached to another process: stop that process \
         or give Hiber another TAP"
    )]
    Busy(String),
    /// The interface is not a TAP (a TUN, a bridge, a physical card...).
    #[error(
        "`{0}` is not a TAP device (or is a multi-queue one): give a TAP created \
         with `ip tuntap add NAME mode tap`"
    )]
    NotTap(String),
    /// TUNSETIFF failed otherwise.
    #[error("the TAP `{0}` could not be attached")]
    Attach(String, #[source] io::Error),
    /// The TAP refused a setting Hiber needs.
    #[error("the TAP `{name}` refused {setting}: the host kernel may be too old")]
    Configure {
        /// The TAP.
        name: String,
        /// What was being set.
        setting: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An attached TAP device, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name` of the calling thread's network
    /// namespace. It is never created: a TAP made here would have no
    /// address and vanish with the process, which is never what was meant.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let c_name = interface_name(name)?;
        require_interface(name, &c_name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::TunDevice)?;
        attach(&file, name, &c_name)?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_header_size()?;
        tap.disable_offloads()?;
        log::debug!("TAP {name} attached");
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_header_size(&self) -> Result<(), TapError> {
        let size = HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // refers to `size`, alive for the call; the descriptor is ours.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&self.file, ioctls::TUNSETVNETHDRSZ(), &size)
        };
        self.check(rc, "a 12-byte virtio-net header (TUNSETVNETHDRSZ)")
    }

    fn disable_offloads(&self) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no
        // memory of ours; the descriptor is ours.
        let rc =
            unsafe { vmm_sys_util::ioctl::ioctl_with_val(&self.file, ioctls::TUNSETOFFLOAD(), 0) };
        self.check(rc, "turning its offloads off (TUNSETOFFLOAD)")
    }

    fn check(&self, rc: libc::c_int, setting: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                setting,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Checks `name` and returns it as a C string.
fn interface_name(name: &str) -> Result<CString, TapError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
    if bad {
        return Err(TapError::BadName(name.to_string()));
    }
    CString::new(name).map_err(|_| TapError::BadName(name.to_string()))
}

/// Fails unless an interface `name` exists in this thread's namespace.
/// (`if_nametoindex` asks the kernel, unlike /sys, which shows the
/// namespace it was mounted in.)
fn require_interface(name: &str, c_name: &CString) -> Result<(), TapError> {
    // SAFETY: the pointer is a NUL-terminated string that lives for the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(TapError::NotFound(name.to_string()));
    }
    Ok(())
}

/// TUNSETIFF: binds the descriptor to the TAP.
fn attach(file: &File, name: &str, c_name: &CString) -> Result<(), TapError> {
    // SAFETY: ifreq is plain data; all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(c_name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq through the pointer,
    // which refers to `req`, alive and writable for the call.
    let rc =
        unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(file, ioctls::TUNSETIFF(), &mut req) };
    if rc >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    let name = name.to_string();
    Err(match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name),
        Some(libc::EBUSY) => TapError::Busy(name),
        Some(libc::EINVAL) => TapError::NotTap(name),
        _ => TapError::Attach(name, err),
    })
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
