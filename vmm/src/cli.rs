//! The `hiber` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConsoleConfig, MemSize};
use crate::device_args::{DriveArg, DriveOverrideArg, NetArg, NetOverrideArg, VsockArg};

/// The command line the guest gets when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux";

/// Hiber: run a Linux guest on KVM, snapshot it, and bring it back.
///
/// A snapshot is two files: a small state file (vCPUs, interrupt controllers,
/// clocks, devices) and a memory file (guest RAM, sparse). Both are versioned
/// and checksummed; `hiber inspect` shows what is inside.
#[derive(Debug, Parser)]
#[command(name = "hiber", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log level: error, warn, info, debug or trace (also RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a kernel and attach to its serial console.
    ///
    /// Without --kernel (and with --api-sock), start empty and wait for
    /// `PUT /snapshot/load`, or for Firecracker's pre-boot calls
    /// (`PUT /boot-source`, `/machine-config`, `/drives/ID`, ...) and
    /// `PUT /actions {"action_type": "InstanceStart"}`; the flags given here
    /// are the defaults those calls change. The guest's `reboot` or
    /// `poweroff` ends Hiber with status 0; a guest kernel panic ends it
    /// with status 1.
    Run(RunArgs),
    /// Start a new VMM from a snapshot and resume the guest.
    Restore(RestoreArgs),
    /// Pause the guest of a running Hiber.
    Pause(ApiArgs),
    /// Resume a paused guest.
    Resume(ApiArgs),
    /// Snapshot a paused guest to a state file and a memory file.
    Snapshot(SnapshotArgs),
    /// Print what a snapshot holds: header, host, vCPU registers, devices, memory.
    Inspect(InspectArgs),
    /// Show how Hiber will set up guest CPUs on this host, and why.
    HostCheck(HostArgs),
}

/// When to probe the host for instructions its KVM cannot run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuirksArg {
    /// Probe once per host (cached), then hide what fails.
    Auto,
    /// Hide nothing and add nothing.
    Off,
    /// Probe again, ignoring the cache.
    Reprobe,
}

/// Options shared by `run` and `restore` about the host CPU.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Host-quirk handling (see `hiber host-check`).
    #[arg(long, value_enum, default_value = "auto")]
    pub cpu_quirks: QuirksArg,
    /// Extra CPU features to hide from the guest, comma separated
    /// (clearcpuid names, e.g. `avx2,popcnt`).
    #[arg(long, value_delimiter = ',')]
    pub cpu_hide: Vec<String>,
}

/// `hiber run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// An initramfs (newc cpio, compressed or not).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line; Hiber appends what this host needs.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest RAM, e.g. 256M or 1G.
    #[arg(long, default_value = "256M")]
    pub mem: MemSize,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Where the serial console goes: stdio, file:PATH or unix:PATH.
    #[arg(long, default_value = "stdio")]
    pub console: ConsoleConfig,
    /// Serve the control API (Firecracker-compatible HTTP) on this Unix socket.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Create the VM but leave its vCPUs paused (resume through the API).
    #[arg(long)]
    pub paused: bool,
    /// A virtio-blk drive backed by a raw image file; repeat for more. Ids
    /// default to drive0, drive1, ... by position; the first drive is vda.
    #[arg(long = "drive", value_name = "path=PATH[,read-only=on|off][,id=NAME]")]
    pub drives: Vec<DriveArg>,
    /// A virtio-net interface on a host TAP; repeat for more. Ids default
    /// to eth0, eth1, ... by position.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,id=NAME]")]
    pub nets: Vec<NetArg>,
    /// A virtio-vsock device: the guest's context id (3 or more) and the
    /// host Unix socket it is reached through.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<VsockArg>,
    /// Leave out the virtio-rng entropy device the guest gets by default.
    #[arg(long)]
    pub no_entropy: bool,
    #[command(flatten)]
    /// Host CPU handling.
    pub host: HostArgs,
}

/// How `restore` brings guest memory back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemBackendArg {
    /// Map the memory file copy-on-write; pages load on first touch.
    Map,
    /// Read the whole memory file up front.
    Copy,
}

/// `hiber restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The state file.
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The memory file.
    #[arg(long)]
    pub mem: PathBuf,
    /// How to bring guest memory back.
    #[arg(long, value_enum, default_value = "map")]
    pub mem_backend: MemBackendArg,
    /// Where the serial console goes: stdio, file:PATH or unix:PATH.
    #[arg(long, default_value = "stdio")]
    pub console: ConsoleConfig,
    /// Serve the control API on this Unix socket.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Leave the guest paused after the restore.
    #[arg(long)]
    pub paused: bool,
    /// Skip the memory file's checksums (its header, id and size are still
    /// checked): faster for large guests, for storage you trust.
    #[arg(long)]
    pub trust_memory: bool,
    /// Give the snapshot's interface ID a new host TAP (and MAC address),
    /// as for a clone; repeat for more interfaces.
    #[arg(long = "net-override", value_name = "ID=TAP[,mac=MAC]")]
    pub net_overrides: Vec<NetOverrideArg>,
    /// A new host socket path for the snapshot's vsock device.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Give the snapshot's drive ID another image file of the same size,
    /// as for a clone that writes; repeat for more drives.
    #[arg(long = "drive-override", value_name = "ID=PATH")]
    pub drive_overrides: Vec<DriveOverrideArg>,
}

/// Options of the API client subcommands.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The control socket of the running Hiber.
    #[arg(long)]
    pub api_sock: PathBuf,
}

/// `hiber snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The control socket of the running Hiber.
    #[arg(long)]
    pub api_sock: PathBuf,
    /// Where to write the state file.
    #[arg(long)]
    pub snapshot: PathBuf,
    /// Where to write the memory file.
    #[arg(long)]
    pub mem: PathBuf,
}

/// `hiber inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The state file.
    pub snapshot: PathBuf,
    /// The memory file, to show its allocated and apparent sizes.
    #[arg(long)]
    pub mem: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["hiber", "run", "--kernel", "k", "--mem", "12X"]).is_err());
        assert!(parse(&["hiber", "run", "--kernel", "k", "--console", "tcp:1"]).is_err());
        assert!(parse(&["hiber", "run", "--kernel", "k", "--vcpus", "-1"]).is_err());
        let ok = parse(&[
            "hiber", "run", "--kernel", "k", "--mem", "1G", "--vcpus", "2",
        ])
        .unwrap();
        match ok.command {
            Command::Run(r) => {
                assert_eq!(r.mem.bytes(), 1 << 30);
                assert_eq!(r.vcpus, 2);
                assert!(r.drives.is_empty() && r.nets.is_empty() && r.vsock.is_none());
                assert!(!r.no_entropy, "entropy is on by default");
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let all = ["hiber", "run"].iter().chain(args).copied();
        match Cli::try_parse_from(all)?.command {
            Command::Run(r) => Ok(r),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn device_flags_repeat_and_parse() {
        let r = run_args(&[
            "--drive",
            "path=a.img",
            "--drive",
            "path=b.img,read-only=on,id=data",
            "--net",
            "tap=tap0",
            "--vsock",
            "cid=3,uds=v.sock",
            "--no-entropy",
        ])
        .unwrap();
        assert_eq!(r.drives.len(), 2);
        assert!(r.drives[1].read_only);
        assert_eq!(r.nets[0].tap, "tap0");
        assert_eq!(r.vsock.unwrap().0.guest_cid, 3);
        assert!(r.no_entropy);
    }

    #[test]
    fn bad_device_flags_are_refused_by_the_parser() {
        use clap::error::ErrorKind;
        let err = run_args(&["--drive", "file=a.img"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no key `file`"), "{err}");
        let err = run_args(&["--vsock", "cid=3,uds=a", "--vsock", "cid=4,uds=b"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(run_args(&["--net", "tap=t,mac=nope"]).is_err());
    }

    #[test]
    fn restore_overrides_parse() {
        let parse = |args: &[&str]| {
            let all = ["hiber", "restore", "--snapshot", "s", "--mem", "m"];
            match Cli::try_parse_from(all.iter().chain(args).copied()).map(|c| c.command) {
                Ok(Command::Restore(r)) => Ok(r),
                Ok(other) => panic!("parsed as {other:?}"),
                Err(e) => Err(e),
            }
        };
        let r = parse(&[
            "--net-override",
            "eth0=tap3",
            "--net-override",
            "eth1=tap4,mac=02:00:00:00:00:04",
            "--vsock-uds",
            "new.sock",
        ])
        .unwrap();
        assert_eq!(r.net_overrides.len(), 2);
        assert_eq!(r.net_overrides[1].0.host_dev_name, "tap4");
        assert_eq!(r.vsock_uds, Some(PathBuf::from("new.sock")));
        assert!(parse(&["--net-override", "eth0"]).is_err());
    }
}
