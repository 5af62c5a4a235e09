//! Snapshot creation and restore of a whole machine.
//!
//! The state file holds, in this order, the sections `meta` (who wrote it,
//! the host it ran on, the snapshot id), `config` (the machine
//! configuration), `memory` (where each RAM region lies in the memory file
//! and its checksum), `vm` (irqchips, PIT, clock), one `vcpu` per vCPU and
//! `devices`. Restore reads them back and rebuilds the machine in the order
//! KVM needs; see docs/DESIGN.md.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use devices::LegacyDevicesState;
use serde::{Deserialize, Serialize};
use snapshot::{MemRegion, MemoryFile, MemoryFileInfo, SnapshotWriter, StateFile};
use vm_memory::{
    mmap::MmapRegionBuilder, Address, FileOffset, GuestAddress, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::config::MachineConfig;
use crate::cpu::{self, CpuidEntry, HostFingerprint, HostQuirks};
use crate::legacy::LegacyDevices;
use crate::machine::{open_kvm, supported_cpuid, Machine, MachineError, PanicWatch, Parts};
use crate::virtio::{self, VirtioDeviceState, VirtioDevices};
use crate::vstate::vcpu::{Vcpu, VcpuState};
use crate::vstate::vm::{Vm, VmState};

pub mod drift;

/// Section names of the state file.
pub mod sections {
    /// Who wrote the snapshot, where, and its id.
    pub const META: &str = "meta";
    /// The machine configuration.
    pub const CONFIG: &str = "config";
    /// The memory file's layout and checksums.
    pub const MEMORY: &str = "memory";
    /// Irqchips, PIT and kvmclock.
    pub const VM: &str = "vm";
    /// One per vCPU.
    pub const VCPU: &str = "vcpu";
    /// The legacy devices.
    pub const DEVICES: &str = "devices";
    /// The virtio devices, with their transports and queues.
    pub const VIRTIO: &str = "virtio";
}

/// How a restore brings guest RAM back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemBackend {
    /// Map the memory file MAP_PRIVATE: pages load lazily, copy-on-write.
    Map,
    /// Read the whole memory file into anonymous memory up front.
    Copy,
}

/// How a restore is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// How guest RAM comes back.
    pub backend: MemBackend,
    /// Check every memory region's checksum before the guest runs. Costs
    /// a read of the memory file's data; turned off only for files whose
    /// storage is trusted.
    pub verify_memory: bool,
    /// New host backends for network interfaces (for clones).
    pub net_overrides: Vec<NetOverride>,
    /// A new host socket path for the vsock device.
    pub vsock_uds_override: Option<std::path::PathBuf>,
    /// New image files for drives (for clones that write).
    pub drive_overrides: Vec<DriveOverride>,
}

/// A drive of the snapshot given another image file on restore (Hiber's
/// addition: Firecracker restores drives from the paths they had). The
/// image must have the size the snapshot recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveOverride {
    /// The drive, by the id it was configured with.
    pub drive_id: String,
    /// The image file to use instead.
    pub path_on_host: std::path::PathBuf,
}

/// A network interface of the snapshot given a new host side on restore
/// (Firecracker's `network_overrides`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOverride {
    /// The interface, by the id it was configured with.
    pub iface_id: String,
    /// The host TAP interface to use instead.
    pub host_dev_name: String,
    /// A new MAC address for the device's configuration space, if given.
    pub guest_mac: Option<crate::config::MacAddr>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            backend: MemBackend::Map,
            verify_memory: true,
            net_overrides: Vec::new(),
            vsock_uds_override: None,
            drive_overrides: Vec::new(),
        }
    }
}

/// The `meta` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The Hiber version that wrote the snapshot.
    pub vmm_version: String,
    /// Seconds since the Unix epoch when it was written.
    pub created_unix: u64,
    /// The id shared with the memory file.
    pub snapshot_id: snapshot::SnapshotId,
    /// The host the guest ran on.
    pub host: HostFingerprint,
    /// The CPU features the VMM hid on that host, and the command-line
    /// switches it added.
    pub quirks: HostQuirks,
}

/// Errors of creating or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Saving the state of the machine failed.
    #[error("could not read the machine's state")]
    Save(#[source] MachineError),
    /// The state file could not be written or read.
    #[error(transparent)]
    State(#[from] snapshot::StateError),
    /// The memory file could not be written or read.
    #[error(transparent)]
    Memory(#[from] snapshot::MemoryError),
    /// The two files could not be put in place.
    #[error(transparent)]
    Commit(#[from] snapshot::AtomicError),
    /// No random id could be made.
    #[error("could not make a snapshot id")]
    Id(#[source] snapshot::IdError),
    /// The host cannot give the guest the CPU it had.
    #[error("the snapshot {path} cannot run on this host")]
    Cpuid {
        /// The state file.
        path: PathBuf,
        /// Which features are missing.
        #[source]
        source: cpu::IncompatibleCpuid,
    },
    /// Guest memory could not be mapped.
    #[error("could not map guest memory from {path}")]
    Map {
        /// The memory file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Rebuilding the machine failed.
    #[error("could not rebuild the machine from the snapshot")]
    Rebuild(#[source] MachineError),
    /// The restored machine could not resume.
    #[error("the restored machine could not resume")]
    Resume(#[source] MachineError),
}

impl PersistError {
    /// The HTTP status an API client gets for this error: the client's
    /// input for refusals, the server for failures.
    pub fn status(&self) -> u16 {
        match self {
            PersistError::State(_) | PersistError::Memory(_) | PersistError::Cpuid { .. } => 400,
            PersistError::Rebuild(MachineError::Virtio(e)) if e.is_refusal() => 400,
            _ => 500,
        }
    }
}

impl From<MachineError> for PersistError {
    fn from(e: MachineError) -> Self {
        PersistError::Rebuild(e)
    }
}

/// Writes a snapshot of the (paused) machine to `state_path` and
/// `mem_path`.
pub fn create_snapshot(
    m: &Machine,
    state_path: &Path,
    mem_path: &Path,
) -> Result<(), PersistError> {
    let start = Instant::now();
    let vcpus = m.save_vcpus().map_err(PersistError::Save)?;
    let vm =
        m.vm.save_state()
            .map_err(|e| PersistError::Save(MachineError::Vm(e)))?;
    let devices = m.devices.save();
    m.virtio
        .quiesce()
        .map_err(|e| PersistError::Save(e.into()))?;
    let virtio = m.virtio.save();
    let id = snapshot::random_snapshot_id().map_err(PersistError::Id)?;
    let saved = start.elapsed();

    let regions = guest_regions(&m.mem);
    let (staged_mem, mem_info) = snapshot::stage_memory_file(mem_path, id, &regions)?;
    let meta = SnapshotMeta {
        vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: unix_now(),
        snapshot_id: id,
        host: HostFingerprint::collect(&m.kvm),
        quirks: m.quirks.clone(),
    };
    let parts = StateParts {
        meta: &meta,
        config: &m.config,
        memory: &mem_info,
        vm: &vm,
        vcpus: &vcpus,
        devices: &devices,
        virtio: &virtio,
    };
    let writer = state_writer(&parts)?;
    let staged_state = writer.stage(state_path)?;
    snapshot::commit_pair(staged_mem, staged_state)?;

    let ram: u64 = mem_info.regions.iter().map(|r| r.size).sum();
    log::info!(
        "snapshot written: {} MiB of RAM to {} and {} in {} ms (state read in {} us)",
        ram >> 20,
        state_path.display(),
        mem_path.display(),
        start.elapsed().as_millis(),
        saved.as_micros()
    );
    Ok(())
}

/// Every section of a state file, borrowed.
struct StateParts<'a> {
    meta: &'a SnapshotMeta,
    config: &'a MachineConfig,
    memory: &'a MemoryFileInfo,
    vm: &'a VmState,
    vcpus: &'a [VcpuState],
    devices: &'a LegacyDevicesState,
    virtio: &'a [VirtioDeviceState],
}

fn state_writer(p: &StateParts) -> Result<SnapshotWriter, PersistError> {
    let mut w = SnapshotWriter::new();
    w.add_section(sections::META, p.meta)?;
    w.add_section(sections::CONFIG, p.config)?;
    w.add_section(sections::MEMORY, p.memory)?;
    w.add_section(sections::VM, p.vm)?;
    for vcpu in p.vcpus {
        w.add_section(sections::VCPU, vcpu)?;
    }
    w.add_section(sections::DEVICES, p.devices)?;
    w.add_section(sections::VIRTIO, &p.virtio)?;
    Ok(w)
}

/// Every RAM region of `mem` as bytes.
fn guest_regions(mem: &GuestMemoryMmap) -> Vec<MemRegion<'_>> {
    mem.iter()
        .map(|region| {
            let len = region.len() as usize;
            // SAFETY: the region is mapped for its whole length for as long
            // as `mem` lives, and the vCPUs are paused, so nothing writes to
            // it while the slice is read.
            let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
            MemRegion {
                guest_addr: region.start_addr().raw_value(),
                bytes,
            }
        })
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything a state file holds, decoded.
pub struct SavedMachine {
    /// The `meta` section.
    pub meta: SnapshotMeta,
    /// The `config` section.
    pub config: MachineConfig,
    /// The `memory` section.
    pub memory: MemoryFileInfo,
    /// The `vm` section.
    pub vm: VmState,
    /// The `vcpu` sections.
    pub vcpus: Vec<VcpuState>,
    /// The `devices` section.
    pub devices: LegacyDevicesState,
    /// The `virtio` section.
    pub virtio: Vec<VirtioDeviceState>,
}

impl SavedMachine {
    /// Reads and checks the state file at `path`.
    pub fn read(path: &Path) -> Result<SavedMachine, PersistError> {
        let file = StateFile::read(path)?;
        let saved = SavedMachine {
            meta: file.section(sections::META)?,
            config: file.section(sections::CONFIG)?,
            memory: file.section(sections::MEMORY)?,
            vm: file.section(sections::VM)?,
            vcpus: file.sections_named(sections::VCPU)?,
            devices: file.section(sections::DEVICES)?,
            virtio: read_virtio(&file)?,
        };
        // `sections_named` refuses a file without any "vcpu" section.
        Ok(saved)
    }

    /// Writes this state as a state file at `path`, for tools and tests
    /// that edit a snapshot (the memory file is left as it is).
    pub fn write(&self, path: &Path) -> Result<(), PersistError> {
        let w = state_writer(&StateParts {
            meta: &self.meta,
            config: &self.config,
            memory: &self.memory,
            vm: &self.vm,
            vcpus: &self.vcpus,
            devices: &self.devices,
            virtio: &self.virtio,
        })?;
        w.write_atomic(path)?;
        Ok(())
    }
}

/// The `virtio` section; a snapshot written before Hiber had virtio devices
/// has none, which means exactly that: no virtio devices.
fn read_virtio(file: &StateFile) -> Result<Vec<VirtioDeviceState>, PersistError> {
    if file.sections().iter().any(|s| s.name() == sections::VIRTIO) {
        Ok(file.section(sections::VIRTIO)?)
    } else {
        Ok(Vec::new())
    }
}

/// Rebuilds a paused machine from a snapshot.
pub fn restore(
    state_path: &Path,
    mem_path: &Path,
    opts: RestoreOptions,
    out: Box<dyn Write + Send>,
) -> Result<Machine, PersistError> {
    let start = Instant::now();
    let saved = SavedMachine::read(state_path)?;
    let kvm = open_kvm()?;
    check_host(&kvm, state_path, &saved)?;
    let mem_file = MemoryFile::open(mem_path, &saved.memory)?;
    if opts.verify_memory {
        mem_file.verify()?;
    } else {
        log::warn!("memory checksums not verified (--trust-memory)");
    }
    let checked = start.elapsed();
    let mem = restore_memory(&mem_file, opts.backend)?;

    let vm = Vm::new(&kvm).map_err(MachineError::Vm)?;
    vm.register_memory(&mem).map_err(MachineError::Vm)?;
    vm.restore_irqchips(&saved.vm).map_err(MachineError::Vm)?;
    let panic_seen = Arc::new(AtomicBool::new(false));
    let out = Box::new(PanicWatch::new(out, panic_seen.clone()));
    let devices = LegacyDevices::restore(&vm, out, &saved.devices).map_err(MachineError::Legacy)?;
    let mut config = saved.config;
    virtio::check_overrides(&config, &opts).map_err(MachineError::Virtio)?;
    let virtio =
        VirtioDevices::restore(&vm, &mem, &saved.virtio, &opts).map_err(MachineError::Virtio)?;
    virtio::apply_overrides(&mut config, &opts);
    let vcpus = restore_vcpus(&vm, &saved.vcpus)?;
    vm.restore_clock(&saved.vm).map_err(MachineError::Vm)?;
    // After the LAPICs are back: restoring a LAPIC replaces its pending
    // interrupts, so an earlier pulse would be lost.
    virtio.replay_pending_interrupts();

    let parts = Parts {
        config,
        kvm,
        vm,
        mem,
        vcpus,
        devices,
        virtio,
        panic_seen,
        quirks: saved.meta.quirks,
    };
    let machine = Machine::start(parts, true)?;
    log::info!(
        "snapshot restored from {} in {} ms (checks {} ms, memory {:?})",
        state_path.display(),
        start.elapsed().as_millis(),
        checked.as_millis(),
        opts.backend
    );
    Ok(machine)
}

fn check_host(
    kvm: &kvm_ioctls::Kvm,
    path: &Path,
    saved: &SavedMachine,
) -> Result<(), PersistError> {
    let supported = supported_cpuid(kvm)?;
    let entries: Vec<CpuidEntry> = saved.vcpus[0].cpuid.iter().map(CpuidEntry::from).collect();
    cpu::check_cpuid_compatible(&entries, &supported).map_err(|source| PersistError::Cpuid {
        path: path.to_path_buf(),
        source,
    })
}

fn restore_vcpus(vm: &Vm, states: &[VcpuState]) -> Result<Vec<Vcpu>, PersistError> {
    let mut vcpus = Vec::with_capacity(states.len());
    for state in states {
        let mut vcpu = Vcpu::new(vm.fd(), state.id).map_err(MachineError::Vcpu)?;
        vcpu.restore_state(state).map_err(MachineError::Vcpu)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

fn restore_memory(file: &MemoryFile, backend: MemBackend) -> Result<GuestMemoryMmap, PersistError> {
    let map_err = |source| PersistError::Map {
        path: file.path().to_path_buf(),
        source,
    };
    let mut regions = Vec::with_capacity(file.regions().len());
    for (index, info) in file.regions().iter().enumerate() {
        let region = match backend {
            MemBackend::Map => region_mapping(Some(file.file()), info).map_err(map_err)?,
            MemBackend::Copy => {
                let region = region_mapping(None, info).map_err(map_err)?;
                // SAFETY: the region was just mapped, writable, for `size`
                // bytes, and nothing else uses it yet.
                let dest =
                    unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), info.size as usize) };
                file.read_region_into(index, dest, snapshot::HoleFill::AlreadyZero)?;
                region
            }
        };
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| PersistError::Map {
        path: file.path().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// A private, writable mapping of one region: of the memory file at the
/// region's offset (copy-on-write), or anonymous (zero) without a file.
fn region_mapping(
    file: Option<&File>,
    info: &snapshot::RegionInfo,
) -> std::io::Result<GuestRegionMmap> {
    let mut builder = MmapRegionBuilder::new(info.size as usize)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
    builder = match file {
        Some(file) => builder
            .with_file_offset(FileOffset::new(file.try_clone()?, info.file_offset))
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE),
        None => {
            builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        }
    };
    let region = builder
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    GuestRegionMmap::new(region, GuestAddress(info.guest_addr))
        .ok_or_else(|| std::io::Error::other("region overflows the guest address space"))
}

/// The machine configuration in the shape of Firecracker's `GET /vm/config`.
pub fn firecracker_vm_config(c: &MachineConfig) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": c.kernel,
            "initrd_path": c.initrd,
            "boot_args": c.cmdline,
        },
        "machine-config": {
            "vcpu_count": c.vcpus,
            "mem_size_mib": c.mem.mib(),
            "smt": false,
            "track_dirty_pages": false,
        },
        "drives": c.drives.iter().enumerate().map(|(i, d)| serde_json::json!({
            "drive_id": d.id,
            "path_on_host": d.path,
            "is_read_only": d.read_only,
            "is_root_device": i == 0 && c.cmdline.split(' ').any(|w| w == "root=/dev/vda"),
        })).collect::<Vec<_>>(),
        "network-interfaces": c.nets.iter().map(|n| serde_json::json!({
            "iface_id": n.id,
            "host_dev_name": n.tap,
            "guest_mac": n.mac.map(|m| m.to_string()),
        })).collect::<Vec<_>>(),
        "vsock": c.vsock.as_ref().map(|v| serde_json::json!({
            "guest_cid": v.guest_cid,
            "uds_path": v.uds_path,
        })),
        "entropy": c.entropy.then(|| serde_json::json!({})),
        "console": c.console.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsoleConfig, MemSize};
    use devices::i8042::I8042;
    use devices::rtc::Rtc;
    use devices::serial::Serial;
    use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry};
    use vmm_sys_util::eventfd::EventFd;

    fn evt() -> EventFd {
        EventFd::new(0).unwrap()
    }

    /// A machine state with something other than zeros in every part.
    fn sample() -> SavedMachine {
        let mut vcpu = VcpuState {
            id: 1,
            cpuid: vec![kvm_cpuid_entry2 {
                function: 7,
                ebx: 0x1234,
                ..Default::default()
            }],
            msrs: vec![kvm_msr_entry {
                index: 0xc000_0082,
                data: 0xffff_ffff_8140_0000,
                ..Default::default()
            }],
            regs: Default::default(),
            sregs: Default::default(),
            xsave: (0..4096u32).map(|i| i as u8).collect(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
            tsc_khz: Some(2_400_000),
        };
        vcpu.regs.rip = 0xffff_ffff_8100_0000;
        vcpu.sregs.cr3 = 0x1000;
        vcpu.lapic.regs[0x20] = 5;
        let mut vm = VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        };
        vm.clock.clock = 123_456_789;
        vm.pit.channels[0].count = 0x1234;
        let devices = LegacyDevicesState {
            serial: Serial::new(evt(), Box::new(std::io::sink())).save(),
            i8042: I8042::new(evt(), evt()).save(),
            rtc: Rtc::new().save(),
        };
        SavedMachine {
            meta: SnapshotMeta {
                vmm_version: "0.1.0".into(),
                created_unix: 1_700_000_000,
                snapshot_id: [7; 16],
                host: HostFingerprint {
                    cpu_vendor: "AuthenticAMD".into(),
                    family: 25,
                    model: 1,
                    stepping: 1,
                    brand: "AMD EPYC".into(),
                    kvm_api_version: 12,
                    host_kernel_release: "6.1.0".into(),
                    tsc_khz: Some(2_400_000),
                },
                quirks: HostQuirks::default(),
            },
            config: MachineConfig {
                vcpus: 2,
                mem: MemSize(128 << 20),
                kernel: Some("vmlinux".into()),
                initrd: None,
                cmdline: "console=ttyS0".into(),
                console: ConsoleConfig::Stdio,
                drives: Vec::new(),
                nets: Vec::new(),
                vsock: None,
                entropy: true,
            },
            memory: MemoryFileInfo {
                snapshot_id: [7; 16],
                file_size: 130 << 20,
                regions: vec![snapshot::RegionInfo {
                    guest_addr: 0,
                    size: 128 << 20,
                    file_offset: 2 << 20,
                    checksum: 42,
                }],
            },
            vm,
            vcpus: vec![vcpu.clone(), VcpuState { id: 2, ..vcpu }],
            devices,
            virtio: Vec::new(),
        }
    }

    #[test]
    fn a_saved_machine_round_trips_through_a_state_file() {
        let dir = std::env::temp_dir().join(format!("hiber-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.state");
        let m = sample();
        m.write(&path).unwrap();
        let back = SavedMachine::read(&path).unwrap();
        assert!(drift::differences(&m, &back).is_empty());
        assert_eq!(back.vcpus[1].regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(back.vcpus[1].xsave, m.vcpus[1].xsave);
        assert_eq!(back.vm.clock.clock, 123_456_789);
        assert_eq!(back.devices, m.devices);
        assert_eq!(back.config, m.config);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_drift_list_ignores_only_what_it_names() {
        let a = sample();
        let mut b = sample();
        b.vm.clock.clock += 1_000;
        b.vcpus[0].msrs.push(kvm_msr_entry {
            index: 0x10,
            data: 99,
            ..Default::default()
        });
        let (mut na, mut nb) = (sample(), b);
        drift::normalize(&mut na);
        drift::normalize(&mut nb);
        // The clock drifts; an MSR more is a real difference.
        assert_eq!(
            drift::differences(&na, &nb),
            vec!["vcpu 1 msr list".to_string()]
        );
        let mut c = sample();
        c.vcpus[0].regs.rax = 1;
        assert_eq!(drift::differences(&a, &c), vec!["vcpu 1 regs".to_string()]);
    }

    #[test]
    fn a_state_file_without_vcpus_is_refused() {
        let dir = std::env::temp_dir().join(format!("hiber-novcpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.state");
        let mut m = sample();
        m.vcpus.clear();
        m.write(&path).unwrap();
        let err = SavedMachine::read(&path).err().expect("refused");
        assert!(err.to_string().contains("has no section \"vcpu\""), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
