//! What a snapshot records about the host and the guest's CPU, and the check
//! that a host restoring a snapshot can give the guest the CPU it had.

use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::cpuid::{find_entry, reg_value};
use super::features::{CpuFeature, CpuidBit, CpuidReg};
use super::host::{host_cpu, kernel_release};

/// The host a snapshot was taken on, for reports and sanity checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// CPU vendor string, such as "GenuineIntel" or "AuthenticAMD".
    pub cpu_vendor: String,
    /// Display family.
    pub family: u32,
    /// Display model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// The CPU's brand string.
    pub brand: String,
    /// KVM_GET_API_VERSION.
    pub kvm_api_version: i32,
    /// The host kernel's release (`uname -r`).
    pub host_kernel_release: String,
    /// The TSC frequency KVM gives vCPUs, in kHz, if KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl HostFingerprint {
    /// Fingerprints this host. The TSC frequency comes from a throw-away
    /// vCPU (the rate KVM gives new vCPUs); it is `None` if KVM will not say.
    pub fn collect(kvm: &Kvm) -> Self {
        let tsc_khz = kvm
            .create_vm()
            .and_then(|vm| vm.create_vcpu(0))
            .and_then(|vcpu| vcpu.get_tsc_khz())
            .ok();
        HostFingerprint {
            tsc_khz,
            ..Self::without_tsc(kvm)
        }
    }

    /// Fingerprints this host, asking `vcpu` for the TSC frequency.
    pub fn collect_with(kvm: &Kvm, vcpu: &VcpuFd) -> Self {
        HostFingerprint {
            tsc_khz: vcpu.get_tsc_khz().ok(),
            ..Self::without_tsc(kvm)
        }
    }

    fn without_tsc(kvm: &Kvm) -> Self {
        let cpu = host_cpu();
        HostFingerprint {
            cpu_vendor: cpu.vendor,
            family: cpu.family,
            model: cpu.model,
            stepping: cpu.stepping,
            brand: cpu.brand,
            kvm_api_version: kvm.get_api_version(),
            host_kernel_release: kernel_release(),
            tsc_khz: None,
        }
    }
}

/// One CPUID entry as a snapshot stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuidEntry {
    /// The leaf.
    pub function: u32,
    /// The sub-leaf.
    pub index: u32,
    /// KVM_CPUID_FLAG_*.
    pub flags: u32,
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// The entries of `cpuid`, ready to serialize.
pub fn cpuid_entries(cpuid: &CpuId) -> Vec<CpuidEntry> {
    cpuid.as_slice().iter().map(CpuidEntry::from).collect()
}

/// A stored CPUID with more entries than KVM accepts.
#[derive(Debug, thiserror::Error)]
#[error("the stored CPUID has {0} entries, more than KVM's limit; the snapshot is damaged")]
pub struct TooManyEntries(pub usize);

/// Rebuilds the KVM CPUID a snapshot stored.
pub fn cpuid_from_entries(entries: &[CpuidEntry]) -> Result<CpuId, TooManyEntries> {
    let raw: Vec<kvm_cpuid_entry2> = entries.iter().map(kvm_cpuid_entry2::from).collect();
    CpuId::from_entries(&raw).map_err(|_| TooManyEntries(entries.len()))
}

/// The guest had CPU features this host cannot provide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncompatibleCpuid {
    /// Each missing feature: its name where known, else its CPUID bit.
    pub missing: Vec<String>,
}

impl fmt::Display for IncompatibleCpuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this host cannot give the guest the CPU it had when the snapshot was taken; \
             missing: {}. Restore on a host with these features, or take the snapshot with \
             them hidden (--cpu-hide)",
            self.missing.join(", ")
        )
    }
}

impl std::error::Error for IncompatibleCpuid {}

/// A register of feature flags, less the bits the VMM or the guest's own
/// state set whatever KVM supports.
struct FeatureReg {
    leaf: u32,
    subleaf: u32,
    reg: CpuidReg,
    ignore: u32,
}

const fn feature_reg(leaf: u32, subleaf: u32, reg: CpuidReg, ignore: u32) -> FeatureReg {
    FeatureReg {
        leaf,
        subleaf,
        reg,
        ignore,
    }
}

/// Leaf 1 ECX: TSC deadline (24) and hypervisor (31) are the VMM's to set,
/// OSXSAVE (27) mirrors the guest's CR4. Leaf 1 EDX: HTT (28) is topology.
/// Leaf 7 ECX: OSPKE (4) mirrors the guest's CR4.
const FEATURE_REGS: &[FeatureReg] = &[
    feature_reg(1, 0, CpuidReg::Ecx, (1 << 24) | (1 << 27) | (1 << 31)),
    feature_reg(1, 0, CpuidReg::Edx, 1 << 28),
    feature_reg(7, 0, CpuidReg::Ebx, 0),
    feature_reg(7, 0, CpuidReg::Ecx, 1 << 4),
    feature_reg(7, 0, CpuidReg::Edx, 0),
    feature_reg(7, 1, CpuidReg::Eax, 0),
    feature_reg(0xd, 0, CpuidReg::Eax, 0),
    feature_reg(0xd, 0, CpuidReg::Edx, 0),
    feature_reg(0xd, 1, CpuidReg::Eax, 0),
    feature_reg(0x4000_0001, 0, CpuidReg::Eax, 0),
    feature_reg(0x8000_0001, 0, CpuidReg::Ecx, 0),
    feature_reg(0x8000_0001, 0, CpuidReg::Edx, 0),
    feature_reg(0x8000_0007, 0, CpuidReg::Edx, 0),
    feature_reg(0x8000_0008, 0, CpuidReg::Ebx, 0),
];

/// Checks that every feature the guest was given (`saved`, one vCPU's CPUID
/// from a snapshot) is among those this host's KVM `supported`.
pub fn check_cpuid_compatible(
    saved: &[CpuidEntry],
    supported: &CpuId,
) -> Result<(), IncompatibleCpuid> {
    let saved: Vec<kvm_cpuid_entry2> = saved.iter().map(kvm_cpuid_entry2::from).collect();
    let host = supported.as_slice();
    let mut missing = vendor_mismatch(&saved, host)
        .into_iter()
        .collect::<Vec<_>>();
    for fr in FEATURE_REGS {
        let Some(guest) = find_entry(&saved, fr.leaf, fr.subleaf) else {
            continue;
        };
        let had = reg_value(guest, fr.reg) & !fr.ignore;
        let can = find_entry(host, fr.leaf, fr.subleaf).map_or(0, |e| reg_value(e, fr.reg));
        missing.extend(bits_of(had & !can).map(|bit| {
            let bit = CpuidBit::new(fr.leaf, fr.subleaf, fr.reg, bit);
            CpuFeature::from_bit(bit).map_or(bit.to_string(), |f| f.to_string())
        }));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(IncompatibleCpuid { missing })
    }
}

/// "CPU vendor X (this host: Y)" when leaf 0 names different vendors.
fn vendor_mismatch(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Option<String> {
    let vendor = |entries: &[kvm_cpuid_entry2]| {
        find_entry(entries, 0, 0).map(|e| {
            let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    match (vendor(saved), vendor(host)) {
        (Some(had), Some(has)) if had != has => {
            Some(format!("CPU vendor {had} (this host: {has})"))
        }
        _ => None,
    }
}

fn bits_of(mask: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |b| mask & (1 << b) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::cpuid::guest_cpuid;
    use crate::cpu::cpuid::tests::synthetic_supported;

    #[test]
    fn entries_round_trip_through_json_and_kvm() {
        let cpuid = synthetic_supported();
        let entries = cpuid_entries(&cpuid);
        let json = serde_json::to_string(&entries).unwrap();
        let back: Vec<CpuidEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(cpuid_from_entries(&back).unwrap(), cpuid);
        assert!(cpuid_from_entries(&vec![CpuidEntry::default(); 300]).is_err());
    }

    #[test]
    fn a_guest_cpuid_fits_the_host_it_came_from() {
        let supported = synthetic_supported();
        let guest = guest_cpuid(&supported, 1, 2, &[CpuFeature::Cx16]);
        assert_eq!(
            check_cpuid_compatible(&cpuid_entries(&guest), &supported),
            Ok(())
        );
    }

    #[test]
    fn missing_features_are_named() {
        let supported = synthetic_supported();
        let saved = cpuid_entries(&guest_cpuid(&supported, 0, 1, &[]));
        let smaller = guest_cpuid(&supported, 0, 1, &[CpuFeature::Avx512f, CpuFeature::Popcnt]);

        let err = check_cpuid_compatible(&saved, &smaller).unwrap_err();
        assert!(err.missing.contains(&"popcnt".to_string()), "{err}");
        assert!(err.missing.contains(&"avx512f".to_string()), "{err}");
        // AVX512DQ has no feature of ours: it is named by its bit.
        assert!(err
            .missing
            .contains(&"CPUID.(EAX=0x7,ECX=0):EBX[bit 17]".to_string()));
        assert!(err.to_string().contains("missing: "));
    }

    #[test]
    fn another_vendor_is_refused() {
        let supported = synthetic_supported();
        let mut saved = cpuid_entries(&supported);
        saved[0].ebx = u32::from_le_bytes(*b"Auth");
        let err = check_cpuid_compatible(&saved, &supported).unwrap_err();
        assert!(err.missing[0].starts_with("CPU vendor Auth"), "{err}");
    }

    #[test]
    fn fingerprint_of_this_host() {
        let kvm = Kvm::new().expect("this test needs a usable /dev/kvm");
        let fp = HostFingerprint::collect(&kvm);
        assert_eq!(fp.kvm_api_version, 12);
        assert!(
            fp.tsc_khz.is_some_and(|khz| khz > 100_000),
            "{:?}",
            fp.tsc_khz
        );
        assert!(!fp.cpu_vendor.is_empty() && !fp.host_kernel_release.is_empty());
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(serde_json::from_str::<HostFingerprint>(&json).unwrap(), fp);
    }
}
