//! The fields of a snapshot that legitimately differ between two snapshots
//! of the same, unchanged guest, in one place with the reason for each.
//!
//! A restore followed at once by a snapshot must give the same state file
//! as the one restored, except for these.

use super::SavedMachine;

/// MSR_IA32_TSC: the guest TSC runs on with host time even while the guest
/// is paused in KVM.
const MSR_IA32_TSC: u32 = 0x10;
/// The LAPIC's timer current-count register (TMCCT) counts down with host
/// time while a timer is armed.
const APIC_TMCCT: usize = 0x390;

/// kvmclock MSRs: the guest physical address of the wall-clock structure,
/// and of the per-vCPU time structure (bit 0: enabled).
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Sizes of those structures (pvclock_wall_clock, pvclock_vcpu_time_info).
const WALL_CLOCK_LEN: u64 = 12;
const VCPU_TIME_LEN: u64 = 32;

/// The guest memory that KVM itself writes, without the guest running:
/// the kvmclock structures, updated whenever the clock is set and on every
/// vCPU entry. A snapshot of an unchanged guest may differ there.
pub fn kvmclock_areas(m: &SavedMachine) -> Vec<std::ops::Range<u64>> {
    let mut areas = Vec::new();
    for vcpu in &m.vcpus {
        for msr in &vcpu.msrs {
            let len = match msr.index {
                MSR_KVM_WALL_CLOCK_NEW => WALL_CLOCK_LEN,
                MSR_KVM_SYSTEM_TIME_NEW if msr.data & 1 == 1 => VCPU_TIME_LEN,
                _ => continue,
            };
            let start = msr.data & !1;
            areas.push(start..start + len);
        }
    }
    areas
}

/// Clears the fields that drift, so that what remains can be compared.
pub fn normalize(m: &mut SavedMachine) {
    // A new id and creation time with every snapshot, by design.
    m.meta.snapshot_id = Default::default();
    m.meta.created_unix = 0;
    m.memory.snapshot_id = Default::default();
    // KVM writes the kvmclock structures in guest memory (see
    // `kvmclock_areas`); compare memory contents outside them instead.
    for region in m.memory.regions.iter_mut() {
        region.checksum = 0;
    }
    // kvmclock counts host time; `realtime` and `host_tsc` are host
    // readings taken with it.
    m.vm.clock.clock = 0;
    m.vm.clock.realtime = 0;
    m.vm.clock.host_tsc = 0;
    m.vm.clock.flags = 0;
    // The PIT records when each channel's count was loaded, in host time.
    for channel in m.vm.pit.channels.iter_mut() {
        channel.count_load_time = 0;
    }
    for vcpu in m.vcpus.iter_mut() {
        for msr in vcpu.msrs.iter_mut().filter(|e| e.index == MSR_IA32_TSC) {
            msr.data = 0;
        }
        for b in vcpu.lapic.regs[APIC_TMCCT..APIC_TMCCT + 4].iter_mut() {
            *b = 0;
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("state types encode");
    out
}

/// The parts in which two (normalized) snapshots differ, by name.
pub fn differences(a: &SavedMachine, b: &SavedMachine) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |name: String, x: Vec<u8>, y: Vec<u8>| {
        if x != y {
            diffs.push(name);
        }
    };
    check("meta".into(), encode(&a.meta), encode(&b.meta));
    check("config".into(), encode(&a.config), encode(&b.config));
    check("memory".into(), encode(&a.memory), encode(&b.memory));
    check("vm".into(), encode(&a.vm), encode(&b.vm));
    check("devices".into(), encode(&a.devices), encode(&b.devices));
    check("virtio".into(), encode(&a.virtio), encode(&b.virtio));
    check(
        "vcpu count".into(),
        encode(&a.vcpus.len()),
        encode(&b.vcpus.len()),
    );
    for (x, y) in a.vcpus.iter().zip(&b.vcpus) {
        let id = x.id;
        check(format!("vcpu {id} regs"), encode(&x.regs), encode(&y.regs));
        check(
            format!("vcpu {id} sregs"),
            encode(&x.sregs),
            encode(&y.sregs),
        );
        check(
            format!("vcpu {id} lapic"),
            encode(&x.lapic),
            encode(&y.lapic),
        );
        check(
            format!("vcpu {id} events"),
            encode(&x.events),
            encode(&y.events),
        );
        check(format!("vcpu {id} xsave"), x.xsave.clone(), y.xsave.clone());
        check(
            format!("vcpu {id} cpuid"),
            encode(&x.cpuid),
            encode(&y.cpuid),
        );
        for (m, n) in x.msrs.iter().zip(&y.msrs) {
            check(
                format!("vcpu {id} msr {:#x}", m.index),
                encode(&(m.index, m.data)),
                encode(&(n.index, n.data)),
            );
        }
        check(
            format!("vcpu {id} msr list"),
            encode(&x.msrs.len()),
            encode(&y.msrs.len()),
        );
        check(
            format!("vcpu {id} other"),
            encode(&(x.mp_state, x.tsc_khz, x.debug_regs, x.xcrs)),
            encode(&(y.mp_state, y.tsc_khz, y.debug_regs, y.xcrs)),
        );
    }
    diffs
}
