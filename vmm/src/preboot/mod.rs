//! The machine a `hiber run --api-sock` process without `--kernel` will
//! boot, configured piece by piece through Firecracker's pre-boot calls
//! until `InstanceStart`; and the checks every device setting passes, from
//! the API or from the command line, before anything is created.
//!
//! A setting is checked when it arrives (a missing drive file is refused by
//! its `PUT`, not at start) and once more when the guest starts, since files
//! can change in between.

use std::io;
use std::path::PathBuf;

use crate::config::{DriveConfig, MachineConfig, MemSize, NetConfig, VsockConfig, MAX_VCPUS};

mod checks;

use checks::check_net_pair;
pub use checks::{
    check_devices, check_drive, check_drive_overrides, check_id, check_initrd, check_kernel,
    check_net, check_overrides, check_uds_path, check_vsock,
};

/// Longest device id, as in Firecracker.
pub const MAX_ID_LEN: usize = 64;
/// Longest Linux interface name (IFNAMSIZ less its NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// The lowest context id a guest may have: 0 to 2 are reserved.
pub const MIN_GUEST_CID: u32 = 3;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_UDS_PATH_LEN: usize = 107;
/// The guest device name of the first drive, which a root drive becomes.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// Why a pre-boot setting, or the command line's device flags, are refused.
#[derive(Debug, thiserror::Error)]
pub enum PrebootError {
    /// A pre-boot call came after the guest started.
    #[error(
        "{operation} is only allowed before InstanceStart: this VM has already started \
         or was loaded from a snapshot"
    )]
    AfterStart { operation: String },
    /// `InstanceStart` without a kernel.
    #[error(
        "InstanceStart needs a kernel: send PUT /boot-source \
         {{\"kernel_image_path\": \"...\"}} first"
    )]
    NoBootSource,
    /// A snapshot load into a process already given pre-boot settings.
    #[error(
        "a snapshot cannot be loaded after pre-boot configuration (the snapshot brings \
         its own machine): load it in a new `hiber run --api-sock PATH` process"
    )]
    LoadAfterConfig,
    /// An id with characters or a length Hiber does not accept.
    #[error("{kind} id `{id}` is not valid: use 1 to 64 letters, digits, `_` or `-`")]
    BadId { kind: &'static str, id: String },
    /// Two devices of a kind with one id.
    #[error("two {kind}s have the id `{id}`: give each its own id")]
    DuplicateId { kind: &'static str, id: String },
    /// The kernel file cannot be read.
    #[error("cannot open kernel {}", path.display())]
    Kernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel file is not a kernel.
    #[error(
        "{} is not a Linux kernel: give an uncompressed ELF vmlinux or a bzImage",
        path.display()
    )]
    NotAKernel { path: PathBuf },
    /// The initrd file cannot be read.
    #[error("cannot open initrd {}", path.display())]
    Initrd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A path setting is empty.
    #[error("{what} is empty: give the path of a file")]
    EmptyPath { what: String },
    /// The vCPU count is out of range.
    #[error("vcpu_count {count} is out of range: give 1 to {MAX_VCPUS}")]
    Vcpus { count: u64 },
    /// The memory size is zero or too large.
    #[error("mem_size_mib {mib} is out of range: give at least 1 MiB (and what fits the host)")]
    MemSize { mib: u64 },
    /// A drive's file cannot be opened for reading.
    #[error("drive `{id}`: cannot open {}", path.display())]
    DriveOpen {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A read-write drive's file cannot be written.
    #[error(
        "drive `{id}`: {} is not writable: make it writable or make the drive read-only",
        path.display()
    )]
    DriveNotWritable {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A drive's path names a directory or a special file.
    #[error("drive `{id}`: {} is not a regular file or a block device", path.display())]
    DriveNotAFile { id: String, path: PathBuf },
    /// A second root device.
    #[error(
        "drive `{id}` cannot be the root device: drive `{root}` already is; put `{root}` \
         again with is_root_device false first"
    )]
    RootTwice { id: String, root: String },
    /// A TAP name Linux would refuse.
    #[error("interface `{id}`: `{tap}` is not a valid TAP name: {reason}")]
    TapName {
        id: String,
        tap: String,
        reason: &'static str,
    },
    /// Two interfaces on one TAP.
    #[error("interfaces `{a}` and `{b}` both use the TAP {tap}: give each its own")]
    DuplicateTap { a: String, b: String, tap: String },
    /// Two interfaces with one MAC address.
    #[error("interfaces `{a}` and `{b}` both have the MAC address {mac}: give each its own")]
    DuplicateMac { a: String, b: String, mac: String },
    /// The all-zero MAC address.
    #[error("interface `{id}`: 00:00:00:00:00:00 is not a usable MAC address")]
    ZeroMac { id: String },
    /// A reserved context id.
    #[error(
        "guest cid {cid} is reserved: give 3 or more, below 4294967295 (0 to 2 name the \
         hypervisor, the local host and the host)"
    )]
    Cid { cid: u32 },
    /// The vsock socket's directory does not exist.
    #[error(
        "the vsock socket {} is in a directory that does not exist: create {} first",
        path.display(), parent.display()
    )]
    UdsParent { path: PathBuf, parent: PathBuf },
    /// The vsock socket path does not fit a socket address.
    #[error(
        "the vsock socket path {} is {len} bytes long: a Unix socket path has at most \
         {MAX_UDS_PATH_LEN}; choose a shorter one",
        path.display()
    )]
    UdsTooLong { path: PathBuf, len: usize },
    /// Two restore overrides for one interface.
    #[error("two network overrides name the interface `{id}`: give one per interface")]
    DuplicateOverride { id: String },
    /// Two restore overrides for one drive.
    #[error("two drive overrides name the drive `{id}`: give one per drive")]
    DuplicateDriveOverride { id: String },
    /// Something other than a socket is at the vsock path.
    #[error("{} exists and is not a socket: remove it or choose another vsock path",
        path.display())]
    UdsNotASocket { path: PathBuf },
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSource {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line; without one, the process's default.
    pub boot_args: Option<String>,
}

/// `PUT /machine-config`: the sizes, as given (checked on arrival).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineSize {
    /// Number of vCPUs.
    pub vcpu_count: u64,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
}

/// `PUT /drives/{id}`: a drive and whether the guest boots from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSpec {
    /// The drive.
    pub drive: DriveConfig,
    /// Whether it is the root device (first drive, `root=/dev/vda`).
    pub is_root_device: bool,
}

/// One pre-boot configuration call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrebootRequest {
    /// `PUT /boot-source`.
    BootSource(BootSource),
    /// `PUT /machine-config`.
    Machine(MachineSize),
    /// `PUT /drives/{id}`.
    Drive(DriveSpec),
    /// `PUT /network-interfaces/{id}`.
    Network(NetConfig),
    /// `PUT /vsock`.
    Vsock(VsockConfig),
    /// `PUT /entropy`.
    Entropy,
}

impl PrebootRequest {
    /// The call, as a client wrote it.
    pub fn operation(&self) -> String {
        match self {
            PrebootRequest::BootSource(_) => "PUT /boot-source".into(),
            PrebootRequest::Machine(_) => "PUT /machine-config".into(),
            PrebootRequest::Drive(d) => format!("PUT /drives/{}", d.drive.id),
            PrebootRequest::Network(n) => format!("PUT /network-interfaces/{}", n.id),
            PrebootRequest::Vsock(_) => "PUT /vsock".into(),
            PrebootRequest::Entropy => "PUT /entropy".into(),
        }
    }
}

/// The configuration being built before `InstanceStart`.
#[derive(Clone, Debug)]
pub struct PendingConfig {
    /// What will boot; drives in the order they were first put.
    config: MachineConfig,
    /// The command line used when `PUT /boot-source` gives none.
    default_cmdline: String,
    /// The id of the root drive.
    root: Option<String>,
    /// Whether a pre-boot call changed anything.
    configured: bool,
    /// Whether the guest started (or a snapshot was loaded).
    started: bool,
}

impl PendingConfig {
    /// Starts from `defaults`: the command line's sizes, console, devices,
    /// and its `cmdline` as the default kernel command line.
    pub fn new(defaults: MachineConfig) -> Self {
        PendingConfig {
            default_cmdline: defaults.cmdline.clone(),
            config: defaults,
            root: None,
            configured: false,
            started: false,
        }
    }

    /// Applies one call, or refuses it and changes nothing.
    pub fn apply(&mut self, request: PrebootRequest) -> Result<(), PrebootError> {
        if self.started {
            let operation = request.operation();
            return Err(PrebootError::AfterStart { operation });
        }
        match request {
            PrebootRequest::BootSource(b) => self.set_boot_source(b)?,
            PrebootRequest::Machine(m) => self.set_size(m)?,
            PrebootRequest::Drive(d) => self.put_drive(d)?,
            PrebootRequest::Network(n) => self.put_net(n)?,
            PrebootRequest::Vsock(v) => {
                check_vsock(&v)?;
                self.config.vsock = Some(v);
            }
            PrebootRequest::Entropy => self.config.entropy = true,
        }
        self.configured = true;
        Ok(())
    }

    fn set_boot_source(&mut self, b: BootSource) -> Result<(), PrebootError> {
        check_kernel(&b.kernel)?;
        if let Some(initrd) = &b.initrd {
            check_initrd(initrd)?;
        }
        self.config.kernel = Some(b.kernel);
        self.config.initrd = b.initrd;
        self.config.cmdline = b.boot_args.unwrap_or_else(|| self.default_cmdline.clone());
        Ok(())
    }

    fn set_size(&mut self, m: MachineSize) -> Result<(), PrebootError> {
        let vcpus = u8::try_from(m.vcpu_count)
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or(PrebootError::Vcpus {
                count: m.vcpu_count,
            })?;
        let bytes = m
            .mem_size_mib
            .checked_mul(1 << 20)
            .filter(|b| *b > 0)
            .ok_or(PrebootError::MemSize {
                mib: m.mem_size_mib,
            })?;
        self.config.vcpus = vcpus;
        self.config.mem = MemSize(bytes);
        Ok(())
    }

    fn put_drive(&mut self, spec: DriveSpec) -> Result<(), PrebootError> {
        check_drive(&spec.drive)?;
        let id = spec.drive.id.clone();
        match &self.root {
            Some(root) if spec.is_root_device && *root != id => {
                let root = root.clone();
                return Err(PrebootError::RootTwice { id, root });
            }
            Some(root) if !spec.is_root_device && *root == id => self.root = None,
            _ if spec.is_root_device => self.root = Some(id.clone()),
            _ => {}
        }
        let drives = &mut self.config.drives;
        match drives.iter_mut().find(|d| d.id == id) {
            Some(existing) => *existing = spec.drive,
            None => drives.push(spec.drive),
        }
        Ok(())
    }

    fn put_net(&mut self, net: NetConfig) -> Result<(), PrebootError> {
        check_net(&net)?;
        let others = self.config.nets.iter().filter(|n| n.id != net.id);
        for other in others {
            check_net_pair(other, &net)?;
        }
        let nets = &mut self.config.nets;
        match nets.iter_mut().find(|n| n.id == net.id) {
            Some(existing) => *existing = net,
            None => nets.push(net),
        }
        Ok(())
    }

    /// Whether any pre-boot call changed the configuration.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// Whether the guest started or a snapshot was loaded.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Records that the guest started or a snapshot was loaded: every
    /// pre-boot call is refused from now on.
    pub fn mark_started(&mut self) {
        self.started = true;
    }

    /// The configuration as it would boot now, kernel or not: the root
    /// drive first and `root=/dev/vda ro|rw` on the command line.
    pub fn preview(&self) -> MachineConfig {
        let mut config = self.config.clone();
        let Some(root) = &self.root else {
            return config;
        };
        if let Some(at) = config.drives.iter().position(|d| d.id == *root) {
            let drive = config.drives.remove(at);
            let mode = if drive.read_only { "ro" } else { "rw" };
            config.cmdline = format!("{} root={ROOT_DEVICE} {mode}", config.cmdline.trim_end());
            config.drives.insert(0, drive);
        }
        config
    }

    /// The configuration `InstanceStart` boots, checked once more.
    pub fn to_boot(&self) -> Result<MachineConfig, PrebootError> {
        if self.started {
            let operation = "InstanceStart".to_string();
            return Err(PrebootError::AfterStart { operation });
        }
        let config = self.preview();
        let kernel = config.kernel.as_deref().ok_or(PrebootError::NoBootSource)?;
        check_kernel(kernel)?;
        if let Some(initrd) = &config.initrd {
            check_initrd(initrd)?;
        }
        check_devices(&config)?;
        Ok(config)
    }
}

/// The body of `GET /machine-config` for `config`.
pub fn machine_config_json(config: &MachineConfig) -> serde_json::Value {
    serde_json::json!({
        "vcpu_count": config.vcpus,
        "mem_size_mib": config.mem.mib(),
        "smt": false,
        "track_dirty_pages": false,
        "huge_pages": "None",
    })
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};

    use super::*;
    use crate::api::test_dir::TestDir;
    use crate::config::{ConsoleConfig, MacAddr};
    use crate::persist::NetOverride;

    fn defaults() -> MachineConfig {
        MachineConfig {
            vcpus: 1,
            mem: MemSize(128 << 20),
            kernel: None,
            initrd: None,
            cmdline: "console=ttyS0".into(),
            console: ConsoleConfig::Stdio,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            entropy: true,
        }
    }

    /// A scratch directory with a fake kernel and two disk images.
    struct Files {
        dir: TestDir,
        kernel: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir = TestDir::new(name);
            let kernel = dir.path().join("vmlinux");
            let mut elf = b"\x7fELF".to_vec();
            elf.resize(4096, 0);
            fs::write(&kernel, elf).unwrap();
            for disk in ["a.img", "b.img"] {
                fs::write(dir.path().join(disk), vec![0u8; 4096]).unwrap();
            }
            Files { dir, kernel }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn drive(&self, id: &str, file: &str, root: bool) -> PrebootRequest {
            PrebootRequest::Drive(DriveSpec {
                drive: DriveConfig {
                    id: id.into(),
                    path: self.path(file),
                    read_only: true,
                },
                is_root_device: root,
            })
        }

        fn boot_source(&self, args: Option<&str>) -> PrebootRequest {
            PrebootRequest::BootSource(BootSource {
                kernel: self.kernel.clone(),
                initrd: None,
                boot_args: args.map(str::to_string),
            })
        }
    }

    fn net(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            id: id.into(),
            tap: tap.into(),
            mac: mac.map(|m| m.parse::<MacAddr>().unwrap()),
        }
    }

    fn message(err: PrebootError) -> String {
        crate::api::error_chain(&err)
    }

    #[test]
    fn the_boot_source_is_needed_and_the_default_cmdline_fills_in() {
        let f = Files::new("preboot-boot");
        let mut p = PendingConfig::new(defaults());
        assert!(!p.configured());
        assert!(matches!(p.to_boot(), Err(PrebootError::NoBootSource)));
        p.apply(f.boot_source(None)).unwrap();
        assert!(p.configured());
        let c = p.to_boot().unwrap();
        assert_eq!(
            (c.kernel.unwrap(), c.cmdline.as_str()),
            (f.kernel.clone(), "console=ttyS0")
        );
        p.apply(f.boot_source(Some("quiet"))).unwrap();
        assert_eq!(p.to_boot().unwrap().cmdline, "quiet");
        p.apply(f.boot_source(None)).unwrap();
        assert_eq!(p.to_boot().unwrap().cmdline, "console=ttyS0");
    }

    #[test]
    fn kernels_and_initrds_are_checked_on_arrival() {
        let f = Files::new("preboot-kernel");
        let mut p = PendingConfig::new(defaults());
        let mut source = BootSource {
            kernel: f.path("a.img"),
            initrd: None,
            boot_args: None,
        };
        let text = message(
            p.apply(PrebootRequest::BootSource(source.clone()))
                .unwrap_err(),
        );
        assert!(text.contains("is not a Linux kernel"), "{text}");
        source.kernel = f.path("missing");
        let text = message(
            p.apply(PrebootRequest::BootSource(source.clone()))
                .unwrap_err(),
        );
        assert!(
            text.contains("cannot open kernel") && text.contains("No such file"),
            "{text}"
        );
        source.kernel = f.kernel.clone();
        source.initrd = Some(f.path("nope.cpio"));
        let text = message(p.apply(PrebootRequest::BootSource(source)).unwrap_err());
        assert!(text.contains("cannot open initrd"), "{text}");
        assert!(!p.configured(), "refused calls change nothing");
    }

    #[test]
    fn machine_sizes_are_range_checked() {
        let mut p = PendingConfig::new(defaults());
        let size = |vcpu_count, mem_size_mib| {
            PrebootRequest::Machine(MachineSize {
                vcpu_count,
                mem_size_mib,
            })
        };
        p.apply(size(2, 256)).unwrap();
        let c = p.preview();
        assert_eq!((c.vcpus, c.mem.mib()), (2, 256));
        for (v, m, needle) in [
            (0, 128, "vcpu_count 0"),
            (33, 128, "vcpu_count 33"),
            (300, 128, "vcpu_count 300"),
            (1, 0, "mem_size_mib 0"),
            (1, u64::MAX, "mem_size_mib 18446744073709551615"),
        ] {
            let text = message(p.apply(size(v, m)).unwrap_err());
            assert!(text.contains(needle), "{text}");
        }
        assert_eq!(
            p.preview().vcpus,
            2,
            "a refused size keeps the last good one"
        );
    }

    #[test]
    fn the_root_drive_goes_first_and_names_itself_on_the_cmdline() {
        let f = Files::new("preboot-root");
        let mut p = PendingConfig::new(defaults());
        p.apply(f.boot_source(Some("console=ttyS0 "))).unwrap();
        p.apply(f.drive("data", "a.img", false)).unwrap();
        p.apply(f.drive("rootfs", "b.img", true)).unwrap();
        let c = p.to_boot().unwrap();
        let ids: Vec<&str> = c.drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
        assert_eq!(c.cmdline, "console=ttyS0 root=/dev/vda ro");

        let text = message(p.apply(f.drive("data", "a.img", true)).unwrap_err());
        assert!(text.contains("drive `rootfs` already is"), "{text}");
        // The root drive put again as a plain drive: no root any more.
        p.apply(f.drive("rootfs", "b.img", false)).unwrap();
        let c = p.to_boot().unwrap();
        let ids: Vec<&str> = c.drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            (ids, c.cmdline.as_str()),
            (vec!["data", "rootfs"], "console=ttyS0 ")
        );
    }

    #[test]
    fn a_read_write_root_is_mounted_rw() {
        let f = Files::new("preboot-rw");
        let mut p = PendingConfig::new(defaults());
        p.apply(f.boot_source(None)).unwrap();
        let mut spec = DriveSpec {
            drive: DriveConfig {
                id: "root".into(),
                path: f.path("a.img"),
                read_only: false,
            },
            is_root_device: true,
        };
        p.apply(PrebootRequest::Drive(spec.clone())).unwrap();
        assert!(p.to_boot().unwrap().cmdline.ends_with("root=/dev/vda rw"));
        spec.drive.path = f.path("b.img");
        p.apply(PrebootRequest::Drive(spec)).unwrap();
        let c = p.to_boot().unwrap();
        assert_eq!(
            c.drives.len(),
            1,
            "a second put of an id replaces the drive"
        );
        assert_eq!(c.drives[0].path, f.path("b.img"));
    }

    #[test]
    fn drive_files_are_checked_for_the_access_the_guest_gets() {
        let f = Files::new("preboot-drive");
        let drive = |id: &str, path: PathBuf, read_only| DriveConfig {
            id: id.into(),
            path,
            read_only,
        };
        check_drive(&drive("d", f.path("a.img"), false)).unwrap();
        let missing = message(check_drive(&drive("d", f.path("no.img"), true)).unwrap_err());
        assert!(missing.contains("drive `d`: cannot open") && missing.contains("No such"));
        let dir = message(check_drive(&drive("d", f.path(""), true)).unwrap_err());
        assert!(
            dir.contains("not a regular file or a block device"),
            "{dir}"
        );
        let empty = message(check_drive(&drive("d", PathBuf::new(), true)).unwrap_err());
        assert!(empty.contains("is empty"), "{empty}");
        let bad_id = message(check_drive(&drive("a b", f.path("a.img"), true)).unwrap_err());
        assert!(bad_id.contains("drive id `a b` is not valid"), "{bad_id}");
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(check_drive(&drive(&long, f.path("a.img"), true)).is_err());
    }

    #[test]
    fn a_file_the_process_cannot_write_is_refused_for_a_read_write_drive() {
        use std::os::unix::fs::PermissionsExt;
        let f = Files::new("preboot-ro");
        let file = f.path("locked.img");
        fs::write(&file, [0u8; 512]).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
        // root may write a 0444 file; no one may write this sysfs file.
        let target = if OpenOptions::new().write(true).open(&file).is_ok() {
            PathBuf::from("/sys/devices/system/cpu/online")
        } else {
            file
        };
        let mut d = DriveConfig {
            id: "ro".into(),
            path: target,
            read_only: false,
        };
        let text = message(check_drive(&d).unwrap_err());
        assert!(text.contains("is not writable"), "{text}");
        assert!(text.contains("make the drive read-only"), "{text}");
        d.read_only = true;
        check_drive(&d).unwrap();
    }

    #[test]
    fn tap_names_follow_the_kernel_rules() {
        check_net(&net("eth0", "tap0", Some("02:00:00:00:00:01"))).unwrap();
        check_net(&net("eth0", &"t".repeat(15), None)).unwrap();
        for (tap, needle) in [
            ("", "it is empty"),
            ("a-very-long-tap-name", "longer than 15 bytes"),
            ("..", "are not interface names"),
            ("tap/0", "contains"),
            ("tap 0", "contains"),
        ] {
            let text = message(check_net(&net("eth0", tap, None)).unwrap_err());
            assert!(text.contains(needle), "{tap:?}: {text}");
        }
        let zero = message(check_net(&net("eth0", "t", Some("00:00:00:00:00:00"))).unwrap_err());
        assert!(zero.contains("not a usable MAC"), "{zero}");
        assert!(check_net(&net("", "t", None)).is_err());
    }

    #[test]
    fn interfaces_are_replaced_by_id_and_may_not_share_a_tap_or_a_mac() {
        let mut p = PendingConfig::new(defaults());
        let mac = Some("02:00:00:00:00:01");
        p.apply(PrebootRequest::Network(net("eth0", "tap0", mac)))
            .unwrap();
        p.apply(PrebootRequest::Network(net("eth0", "tap0", None)))
            .unwrap();
        assert_eq!(p.preview().nets, vec![net("eth0", "tap0", None)]);
        let text = message(
            p.apply(PrebootRequest::Network(net("eth1", "tap0", None)))
                .unwrap_err(),
        );
        assert!(text.contains("both use the TAP tap0"), "{text}");
        p.apply(PrebootRequest::Network(net("eth0", "tap0", mac)))
            .unwrap();
        let text = message(
            p.apply(PrebootRequest::Network(net("eth1", "tap1", mac)))
                .unwrap_err(),
        );
        assert!(
            text.contains("both have the MAC address 02:00:00:00:00:01"),
            "{text}"
        );
        p.apply(PrebootRequest::Network(net("eth1", "tap1", None)))
            .unwrap();
        assert_eq!(p.preview().nets.len(), 2);
    }

    #[test]
    fn vsock_settings_are_checked() {
        let f = Files::new("preboot-vsock");
        let vsock = |cid, path: PathBuf| VsockConfig {
            guest_cid: cid,
            uds_path: path,
        };
        check_vsock(&vsock(3, f.path("v.sock"))).unwrap();
        check_vsock(&vsock(3, PathBuf::from("relative.sock"))).unwrap();
        for cid in [0, 1, 2, u32::MAX] {
            let text = message(check_vsock(&vsock(cid, f.path("v.sock"))).unwrap_err());
            assert!(
                text.contains(&format!("guest cid {cid} is reserved")),
                "{text}"
            );
        }
        let text = message(check_vsock(&vsock(3, f.path("no/dir/v.sock"))).unwrap_err());
        assert!(text.contains("directory that does not exist"), "{text}");
        let long = f.path(&"s".repeat(MAX_UDS_PATH_LEN));
        let text = message(check_vsock(&vsock(3, long)).unwrap_err());
        assert!(text.contains("at most 107"), "{text}");
        let text = message(check_vsock(&vsock(3, f.path("a.img"))).unwrap_err());
        assert!(text.contains("is not a socket"), "{text}");
        let mut p = PendingConfig::new(defaults());
        p.apply(PrebootRequest::Vsock(vsock(9, f.path("v.sock"))))
            .unwrap();
        assert_eq!(p.preview().vsock.unwrap().guest_cid, 9);
    }

    #[test]
    fn nothing_is_configured_after_the_start() {
        let f = Files::new("preboot-after");
        let mut p = PendingConfig::new(defaults());
        p.apply(f.boot_source(None)).unwrap();
        p.apply(PrebootRequest::Entropy).unwrap();
        p.mark_started();
        assert!(p.started());
        let text = message(p.apply(f.drive("d", "a.img", false)).unwrap_err());
        assert_eq!(
            text,
            "PUT /drives/d is only allowed before InstanceStart: this VM has already started \
             or was loaded from a snapshot"
        );
        let text = message(p.to_boot().unwrap_err());
        assert!(
            text.starts_with("InstanceStart is only allowed before"),
            "{text}"
        );
    }

    #[test]
    fn command_line_devices_may_not_share_ids() {
        let f = Files::new("preboot-cli");
        let mut c = defaults();
        let disk = |id: &str| DriveConfig {
            id: id.into(),
            path: f.path("a.img"),
            read_only: true,
        };
        c.drives = vec![disk("drive0"), disk("drive1")];
        check_devices(&c).unwrap();
        c.drives.push(disk("drive1"));
        let text = message(check_devices(&c).unwrap_err());
        assert_eq!(
            text,
            "two drives have the id `drive1`: give each its own id"
        );
        c.drives.clear();
        c.nets = vec![net("eth0", "t0", None), net("eth0", "t1", None)];
        let text = message(check_devices(&c).unwrap_err());
        assert!(
            text.contains("two network interfaces have the id `eth0`"),
            "{text}"
        );
        c.nets = vec![net("eth0", "t0", None), net("eth1", "t0", None)];
        assert!(message(check_devices(&c).unwrap_err()).contains("both use the TAP t0"));
        c.nets.clear();
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: f.path("v.sock"),
        });
        assert!(message(check_devices(&c).unwrap_err()).contains("guest cid 2"));
    }

    #[test]
    fn restore_overrides_are_checked() {
        let f = Files::new("preboot-overrides");
        let o = |id: &str, tap: &str| NetOverride {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: None,
        };
        check_overrides(&[o("eth0", "tap1"), o("eth1", "tap2")], Some(&f.path("v"))).unwrap();
        let text = message(check_overrides(&[o("eth0", "a"), o("eth0", "b")], None).unwrap_err());
        assert!(
            text.contains("two network overrides name the interface `eth0`"),
            "{text}"
        );
        let long = "x".repeat(16);
        let text = message(check_overrides(&[o("eth0", &long)], None).unwrap_err());
        assert!(text.contains("longer than 15 bytes"), "{text}");
        let text = message(check_overrides(&[], Some(&f.path("no/v"))).unwrap_err());
        assert!(text.contains("does not exist"), "{text}");
    }

    #[test]
    fn machine_config_reads_like_firecracker() {
        let json = machine_config_json(&defaults());
        assert_eq!(json["vcpu_count"], 1);
        assert_eq!(json["mem_size_mib"], 128);
        assert_eq!(
            (json["smt"].clone(), json["huge_pages"].clone()),
            (false.into(), "None".into())
        );
    }
}
