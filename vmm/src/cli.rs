//! The `hiber` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConsoleConfig, MemSize};

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
    /// `PUT /snapshot/load`. The guest's `reboot` or `poweroff` ends Hiber
    /// with status 0; a guest kernel panic ends it with status 1.
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
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
