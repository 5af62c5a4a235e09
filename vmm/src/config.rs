//! The machine configuration: what `hiber run` was asked to build, kept in
//! every snapshot so that a restore can rebuild the same machine.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most vCPUs a Hiber guest can have (the MP table's limit here).
pub const MAX_VCPUS: u8 = 32;

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleConfig {
    /// This process's standard input and output.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// A Unix socket this process listens on; one client at a time.
    Unix(PathBuf),
}

impl fmt::Display for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleConfig::Stdio => write!(f, "stdio"),
            ConsoleConfig::File(p) => write!(f, "file:{}", p.display()),
            ConsoleConfig::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ConsoleConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |p: &str| {
            if p.is_empty() {
                Err(format!("console `{s}` needs a path after the colon"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s.split_once(':') {
            None if s == "stdio" => Ok(ConsoleConfig::Stdio),
            Some(("file", p)) => Ok(ConsoleConfig::File(path(p)?)),
            Some(("unix", p)) => Ok(ConsoleConfig::Unix(path(p)?)),
            _ => Err(format!(
                "unknown console `{s}`: use stdio, file:PATH or unix:PATH"
            )),
        }
    }
}

/// A memory size given as `256M`, `1G`, `65536K` or a plain number of MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemSize(pub u64);

impl MemSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The size in MiB, rounded down.
    pub fn mib(self) -> u64 {
        self.0 >> 20
    }
}

impl FromStr for MemSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
            Some('K') => (&t[..t.len() - 1], 10),
            Some('M') => (&t[..t.len() - 1], 20),
            Some('G') => (&t[..t.len() - 1], 30),
            _ => (t, 20),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("memory size `{s}` is not a number with K, M or G"))?;
        let bytes = n
            .checked_shl(shift)
            .filter(|b| b >> shift == n)
            .ok_or_else(|| format!("memory size `{s}` is too large"))?;
        if bytes % 4096 != 0 {
            return Err(format!(
                "memory size `{s}` is not a whole number of 4 KiB pages"
            ));
        }
        Ok(MemSize(bytes))
    }
}

/// Everything needed to build (or rebuild) the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM.
    pub mem: MemSize,
    /// The kernel image it booted (for reference after a restore).
    pub kernel: Option<PathBuf>,
    /// The initrd it booted with, if any.
    pub initrd: Option<PathBuf>,
    /// The full kernel command line the guest got.
    pub cmdline: String,
    /// Where the serial console goes.
    pub console: ConsoleConfig,
    /// The block devices, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// The network interfaces, in the order the guest sees them (eth0, ...).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The vsock device, if any.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Whether the guest gets a virtio-rng entropy device.
    #[serde(default = "entropy_default")]
    pub entropy: bool,
}

fn entropy_default() -> bool {
    true
}

/// A virtio-blk device backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveConfig {
    /// A name unique among the drives (Firecracker's `drive_id`).
    pub id: String,
    /// The raw image file.
    pub path: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// A virtio-net device backed by a TAP interface of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// A name unique among the interfaces (Firecracker's `iface_id`).
    pub id: String,
    /// The host TAP interface (Firecracker's `host_dev_name`).
    pub tap: String,
    /// The guest's MAC address; without one the guest driver picks one.
    pub mac: Option<MacAddr>,
}

/// The virtio-vsock device, mapped to Unix sockets on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket host programs connect to (`CONNECT <port>`);
    /// guest-initiated connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// An Ethernet MAC address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("MAC address `{s}` is not six hex bytes like 02:00:00:00:00:01");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 != 0 {
            return Err(format!(
                "MAC address `{s}` is a multicast address: the first byte must be even"
            ));
        }
        Ok(MacAddr(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_units() {
        assert_eq!("256M".parse::<MemSize>().unwrap().bytes(), 256 << 20);
        assert_eq!("1g".parse::<MemSize>().unwrap().bytes(), 1 << 30);
        assert_eq!("128".parse::<MemSize>().unwrap().bytes(), 128 << 20);
        assert_eq!("4096K".parse::<MemSize>().unwrap().mib(), 4);
        assert!("12X".parse::<MemSize>().is_err());
        assert!("1K".parse::<MemSize>().is_err());
        assert!("99999999999999G".parse::<MemSize>().is_err());
    }

    #[test]
    fn consoles_parse_and_print_back() {
        for s in ["stdio", "file:/x/y.log", "unix:/run/c.sock"] {
            assert_eq!(s.parse::<ConsoleConfig>().unwrap().to_string(), s);
        }
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tcp:1".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn mac_addresses_parse_and_print_back() {
        let mac: MacAddr = "02:00:0a:0B:00:ff".parse().unwrap();
        assert_eq!(mac.to_string(), "02:00:0a:0b:00:ff");
        assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:0g".parse::<MacAddr>().is_err());
        assert!("01:00:00:00:00:01".parse::<MacAddr>().is_err());
    }
}
