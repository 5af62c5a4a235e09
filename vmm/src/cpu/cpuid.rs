//! The CPUID each vCPU is given: what KVM supports, with this vCPU's APIC id
//! and the VM's topology written in, the hypervisor bit set, and the features
//! the VMM hides cleared together with everything that depends on them.
//!
//! The topology is one package of `num_vcpus` cores with one thread each.
//! KVM's paravirtual leaves (0x40000000 and 0x40000001) are kept as KVM reports
//! them: the guest needs them to find kvmclock.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use log::warn;

use super::features::{with_dependents, CpuFeature, CpuidBit, CpuidReg};

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const HYPERVISOR: CpuidBit = CpuidBit::new(1, 0, CpuidReg::Ecx, 31);
/// CPUID.1:EDX bit 28, "EBX[23:16] holds a logical processor count".
const HTT: CpuidBit = CpuidBit::new(1, 0, CpuidReg::Edx, 28);
/// The XSAVE state enumeration leaf.
const XSAVE_LEAF: u32 = 0xd;

/// Level types of the extended topology leaves 0xB and 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Builds the CPUID of vCPU `vcpu_id` out of `num_vcpus` from KVM's supported
/// CPUID, hiding `hide` and every feature that cannot work without them.
///
/// Hiding XSAVE also empties leaf 0xD, so the guest sees no XSAVE state at all.
pub fn guest_cpuid(supported: &CpuId, vcpu_id: u8, num_vcpus: u8, hide: &[CpuFeature]) -> CpuId {
    let mut cpuid = supported.clone();
    add_missing_topology_levels(&mut cpuid);
    let topology = Topology::new(vcpu_id, num_vcpus);
    let hidden = with_dependents(hide);
    let mut bits: Vec<CpuidBit> = hidden.iter().map(|f| f.bit()).collect();
    bits.extend(hidden.iter().flat_map(|f| f.dependent_bits()));
    let no_xsave = hidden.contains(&CpuFeature::Xsave);

    for entry in cpuid.as_mut_slice() {
        topology.apply(entry);
        set_bit(entry, HYPERVISOR, true);
        for bit in &bits {
            set_bit(entry, *bit, false);
        }
        if no_xsave && entry.function == XSAVE_LEAF {
            (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
        }
    }
    cpuid
}

/// Makes sure leaves 0xB and 0x1F, where present, have the SMT and core
/// levels and the invalid level that ends the list: KVM may report only
/// sub-leaf 0, and without a core level Linux would put every vCPU in a
/// package of its own.
fn add_missing_topology_levels(cpuid: &mut CpuId) {
    for leaf in [0xb, 0x1f] {
        let has = |cpuid: &CpuId, index| {
            cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == leaf && e.index == index)
        };
        if !has(cpuid, 0) {
            continue;
        }
        let missing: Vec<u32> = (1..=2).filter(|i| !has(cpuid, *i)).collect();
        for index in missing {
            let level = kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            if cpuid.push(level).is_err() {
                warn!("CPUID is full: leaf {leaf:#x} lacks topology level {index}");
            }
        }
    }
}

/// Whether `entry` is the one CPUID returns for `leaf` and `subleaf`.
pub fn entry_matches(entry: &kvm_cpuid_entry2, leaf: u32, subleaf: u32) -> bool {
    entry.function == leaf
        && (entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || entry.index == subleaf)
}

/// The entry CPUID returns for `leaf` and `subleaf`, if there is one.
pub fn find_entry(
    entries: &[kvm_cpuid_entry2],
    leaf: u32,
    subleaf: u32,
) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| entry_matches(e, leaf, subleaf))
}

/// The value of register `reg` in `entry`.
pub fn reg_value(entry: &kvm_cpuid_entry2, reg: CpuidReg) -> u32 {
    match reg {
        CpuidReg::Eax => entry.eax,
        CpuidReg::Ebx => entry.ebx,
        CpuidReg::Ecx => entry.ecx,
        CpuidReg::Edx => entry.edx,
    }
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: CpuidReg) -> &mut u32 {
    match reg {
        CpuidReg::Eax => &mut entry.eax,
        CpuidReg::Ebx => &mut entry.ebx,
        CpuidReg::Ecx => &mut entry.ecx,
        CpuidReg::Edx => &mut entry.edx,
    }
}

/// Whether `bit` is set in `entries`; a missing leaf counts as clear.
pub fn bit_is_set(entries: &[kvm_cpuid_entry2], bit: CpuidBit) -> bool {
    find_entry(entries, bit.leaf, bit.subleaf)
        .is_some_and(|e| reg_value(e, bit.reg) & bit.mask() != 0)
}

/// Sets or clears `bit` if `entry` is the entry it lives in.
fn set_bit(entry: &mut kvm_cpuid_entry2, bit: CpuidBit, on: bool) {
    if !entry_matches(entry, bit.leaf, bit.subleaf) {
        return;
    }
    let reg = reg_mut(entry, bit.reg);
    if on {
        *reg |= bit.mask();
    } else {
        *reg &= !bit.mask();
    }
}

/// One package of `count` single-threaded cores; this vCPU is core `apic_id`.
struct Topology {
    apic_id: u32,
    count: u32,
    /// APIC-id bits that number the cores of the package.
    core_bits: u32,
}

impl Topology {
    fn new(vcpu_id: u8, num_vcpus: u8) -> Self {
        let count = u32::from(num_vcpus.max(1));
        Topology {
            apic_id: u32::from(vcpu_id),
            count,
            core_bits: u32::BITS - (count - 1).leading_zeros(),
        }
    }

    fn apply(&self, entry: &mut kvm_cpuid_entry2) {
        match entry.function {
            1 => self.basic_info(entry),
            4 | 0x8000_001d => self.cache_sharing(entry),
            0xb | 0x1f => self.extended_topology(entry),
            0x8000_0008 => self.amd_core_count(entry),
            0x8000_001e => self.amd_extended_apic_id(entry),
            _ => {}
        }
    }

    /// Leaf 1: initial APIC id in EBX[31:24], logical count in EBX[23:16].
    fn basic_info(&self, entry: &mut kvm_cpuid_entry2) {
        entry.ebx = (entry.ebx & 0xffff) | (self.apic_id << 24) | ((self.count & 0xff) << 16);
        set_bit(entry, HTT, self.count > 1);
    }

    /// Leaf 4 and AMD's 0x8000001D: who shares each cache. L1 and L2 belong
    /// to one core, L3 and beyond to the whole package.
    fn cache_sharing(&self, entry: &mut kvm_cpuid_entry2) {
        if entry.eax & 0x1f == 0 {
            return; // no cache at this index
        }
        let level = (entry.eax >> 5) & 0x7;
        let ids = (1u32 << self.core_bits) - 1;
        let sharing = if level >= 3 { ids } else { 0 };
        entry.eax = (entry.eax & 0x3fff) | (sharing << 14);
        if entry.function == 4 {
            entry.eax |= ids << 26;
        }
    }

    /// Leaves 0xB and 0x1F: an SMT level of one thread, then a core level.
    fn extended_topology(&self, entry: &mut kvm_cpuid_entry2) {
        let (shift, count, level_type) = match entry.index {
            0 => (0, 1, LEVEL_SMT),
            1 => (self.core_bits, self.count, LEVEL_CORE),
            _ => (0, 0, 0),
        };
        entry.eax = shift;
        entry.ebx = count;
        entry.ecx = (level_type << 8) | (entry.index & 0xff);
        entry.edx = self.apic_id;
    }

    /// AMD 0x80000008 ECX: core count minus one and the core-id width.
    fn amd_core_count(&self, entry: &mut kvm_cpuid_entry2) {
        entry.ecx = (entry.ecx & !0xf0ff) | (self.core_bits << 12) | (self.count - 1);
    }

    /// AMD 0x8000001E: extended APIC id, one thread per core, node 0.
    fn amd_extended_apic_id(&self, entry: &mut kvm_cpuid_entry2) {
        entry.eax = self.apic_id;
        entry.ebx = (entry.ebx & !0xffff) | (self.apic_id & 0xff);
        entry.ecx &= !0x7ff;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let flags = match function {
            4 | 7 | 0xb | 0xd | 0x1f => KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            _ => 0,
        };
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A host that has every feature bit and one of each topology leaf.
    pub(crate) fn synthetic_supported() -> CpuId {
        let all = u32::MAX;
        CpuId::from_entries(&[
            entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x000a_06a1, 0xff00_0800, 0x7fff_ffff, all]),
            entry(4, 0, [0x0000_0121, 0, 0, 0]),
            entry(4, 1, [0x0000_0163, 0, 0, 0]),
            entry(7, 0, [0, all, all, all]),
            entry(7, 1, [all, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 9]),
            entry(0xb, 1, [4, 16, 0x201, 9]),
            entry(0xb, 2, [0, 0, 2, 9]),
            entry(0xd, 0, [0x2e7, 0x988, 0x988, 0]),
            entry(0xd, 1, [0xf, 0, 0, 0]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x4000_0001, 0, [all, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, all, all]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_001e, 0, [5, 0x105, 0x301, 0]),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, leaf: u32, subleaf: u32) -> kvm_cpuid_entry2 {
        *find_entry(cpuid.as_slice(), leaf, subleaf).unwrap()
    }

    #[test]
    fn hidden_features_and_their_dependents_are_cleared() {
        let supported = synthetic_supported();
        let hide = [
            CpuFeature::Cx16,
            CpuFeature::Xsave,
            CpuFeature::KvmStealTime,
        ];
        let cpuid = guest_cpuid(&supported, 0, 1, &hide);
        let entries = cpuid.as_slice();

        for f in [
            CpuFeature::Cx16,
            CpuFeature::Xsave,
            CpuFeature::KvmStealTime,
        ] {
            assert!(!bit_is_set(entries, f.bit()), "{f} still set");
        }
        for f in [
            CpuFeature::Osxsave,
            CpuFeature::Avx,
            CpuFeature::Avx2,
            CpuFeature::Fma,
        ] {
            assert!(!bit_is_set(entries, f.bit()), "dependent {f} still set");
        }
        assert_eq!(get(&cpuid, 7, 0).ebx & (1 << 30), 0, "AVX512BW survived");
        assert_eq!(get(&cpuid, 7, 1).eax & (1 << 5), 0, "AVX512_BF16 survived");
        for sub in [0, 1] {
            let d = get(&cpuid, 0xd, sub);
            assert_eq!((d.eax, d.ebx, d.ecx, d.edx), (0, 0, 0, 0), "leaf 0xD.{sub}");
        }
        for f in [
            CpuFeature::Popcnt,
            CpuFeature::Sse4_2,
            CpuFeature::KvmClockStable,
        ] {
            assert!(
                bit_is_set(entries, f.bit()),
                "{f} cleared though not hidden"
            );
        }
        assert!(bit_is_set(entries, HYPERVISOR));
        assert_eq!(cpuid.as_slice().len(), supported.as_slice().len());
    }

    #[test]
    fn hiding_nothing_keeps_features_and_leaf_0xd() {
        let supported = synthetic_supported();
        let cpuid = guest_cpuid(&supported, 0, 1, &[]);
        for f in CpuFeature::ALL {
            assert!(bit_is_set(cpuid.as_slice(), f.bit()), "{f} cleared");
        }
        assert_eq!(get(&cpuid, 0xd, 0), get(&supported, 0xd, 0));
        assert_eq!(get(&cpuid, 0x4000_0001, 0), get(&supported, 0x4000_0001, 0));
    }

    #[test]
    fn apic_ids_and_topology_are_per_vcpu() {
        let supported = synthetic_supported();
        let cpuid = guest_cpuid(&supported, 2, 3, &[]);

        let leaf1 = get(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2, "initial APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 3, "logical processor count");
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert!(bit_is_set(cpuid.as_slice(), HTT));

        let smt = get(&cpuid, 0xb, 0);
        let core = get(&cpuid, 0xb, 1);
        let none = get(&cpuid, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        assert_eq!((none.ebx, none.ecx >> 8, none.edx), (0, 0, 2));

        let l1 = get(&cpuid, 4, 0);
        let l3 = get(&cpuid, 4, 1);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (3, 0));
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 3));
        assert_eq!(get(&cpuid, 0x8000_0008, 0).ecx & 0xf0ff, 0x2002);
        assert_eq!(get(&cpuid, 0x8000_001e, 0).eax, 2);
    }

    #[test]
    fn missing_topology_levels_are_added() {
        let only_level_0: Vec<kvm_cpuid_entry2> = synthetic_supported()
            .as_slice()
            .iter()
            .filter(|e| e.function != 0xb || e.index == 0)
            .copied()
            .collect();
        let supported = CpuId::from_entries(&only_level_0).unwrap();
        let cpuid = guest_cpuid(&supported, 1, 4, &[]);
        let core = get(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 1));
        assert_eq!(get(&cpuid, 0xb, 2).ecx >> 8, 0, "the list must end");
        assert_eq!(cpuid.as_slice().len(), supported.as_slice().len() + 2);
        assert!(
            find_entry(cpuid.as_slice(), 0x1f, 0).is_none(),
            "no 0x1F invented"
        );
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let cpuid = guest_cpuid(&synthetic_supported(), 0, 1, &[]);
        let leaf1 = get(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 16, 1);
        assert!(!bit_is_set(cpuid.as_slice(), HTT));
        assert_eq!(get(&cpuid, 0xb, 1).eax, 0);
    }

    #[test]
    fn kvm_accepts_the_guest_cpuid() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs a usable /dev/kvm");
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let vm = kvm.create_vm().unwrap();
        for (id, hide) in [(0u8, &[][..]), (1, CpuFeature::ALL)] {
            let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
            vcpu.set_cpuid2(&guest_cpuid(&supported, id, 2, hide))
                .unwrap();
            let back = vcpu
                .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .unwrap();
            let leaf1 = find_entry(back.as_slice(), 1, 0).unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(id), "APIC id of vCPU {id}");
            assert!(bit_is_set(back.as_slice(), HYPERVISOR));
            let pv = find_entry(back.as_slice(), 0x4000_0001, 0).expect("KVM leaf dropped");
            assert_ne!(
                pv.eax & 1 << 3,
                0,
                "kvmclock (KVM_FEATURE_CLOCKSOURCE2) lost"
            );
        }
    }
}
