//! Facts about the machine the VMM runs on: its processor as the `cpuid`
//! instruction reports it, its kernel release, and which KVM modules it loaded.

use std::ffi::CStr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::features::{CpuidBit, CpuidReg};

/// The KVM modules whose presence tells which kind of KVM this host runs.
const KVM_MODULES: &[&str] = &["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];

/// The host processor's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// The vendor string of leaf 0, such as "GenuineIntel".
    pub vendor: String,
    /// The display family (base plus extended family).
    pub family: u32,
    /// The display model (base plus extended model).
    pub model: u32,
    /// The stepping.
    pub stepping: u32,
    /// The brand string of leaves 0x80000002-4, trimmed; empty if absent.
    pub brand: String,
}

/// Runs the `cpuid` instruction on the host for `leaf` and `subleaf`.
pub fn native_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: every x86_64 processor has `cpuid`; it only reads identification
    // registers. (The intrinsic is safe in newer Rust, hence the allow.)
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Whether the host processor itself reports `bit`.
pub fn host_has(bit: CpuidBit) -> bool {
    let range_leaf = bit.leaf & 0xffff_0000;
    if native_cpuid(range_leaf, 0)[0] < bit.leaf {
        return false;
    }
    let regs = native_cpuid(bit.leaf, bit.subleaf);
    let value = match bit.reg {
        CpuidReg::Eax => regs[0],
        CpuidReg::Ebx => regs[1],
        CpuidReg::Ecx => regs[2],
        CpuidReg::Edx => regs[3],
    };
    value & bit.mask() != 0
}

/// Reads the host processor's vendor, family, model, stepping and brand.
pub fn host_cpu() -> HostCpu {
    let leaf0 = native_cpuid(0, 0);
    let vendor = regs_to_string(&[leaf0[1], leaf0[3], leaf0[2]]);
    let sig = native_cpuid(1, 0)[0];
    let base_family = (sig >> 8) & 0xf;
    let base_model = (sig >> 4) & 0xf;
    let family = match base_family {
        0xf => base_family + ((sig >> 20) & 0xff),
        f => f,
    };
    let model = match base_family {
        6 | 0xf => base_model | (((sig >> 16) & 0xf) << 4),
        _ => base_model,
    };
    HostCpu {
        vendor,
        family,
        model,
        stepping: sig & 0xf,
        brand: brand_string(),
    }
}

fn brand_string() -> String {
    if native_cpuid(0x8000_0000, 0)[0] < 0x8000_0004 {
        return String::new();
    }
    let regs: Vec<u32> = (0x8000_0002..=0x8000_0004u32)
        .flat_map(|leaf| native_cpuid(leaf, 0))
        .collect();
    regs_to_string(&regs).trim().to_string()
}

/// The ASCII text that CPUID packs into registers, up to the first NUL.
fn regs_to_string(regs: &[u32]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The host kernel's release, as `uname -r` prints it; empty if unknown.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname for the call to fill.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates `release` inside the array it filled.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// The KVM modules loaded on this host, such as `["kvm", "kvm_intel"]`.
///
/// Read as a fact about the host for cache keys and reports; nothing decides
/// behaviour on these names.
pub fn kvm_modules() -> Vec<String> {
    kvm_modules_in(Path::new("/sys/module"))
}

fn kvm_modules_in(sys_module: &Path) -> Vec<String> {
    KVM_MODULES
        .iter()
        .filter(|m| sys_module.join(m).exists())
        .map(|m| m.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cpu_is_readable() {
        let cpu = host_cpu();
        assert_eq!(cpu.vendor.len(), 12, "vendor {:?}", cpu.vendor);
        assert!(cpu.family >= 6, "family {}", cpu.family);
        // Every x86_64 processor has SSE2 (leaf 1 EDX bit 26) and long mode.
        assert!(host_has(CpuidBit::new(1, 0, CpuidReg::Edx, 26)));
        assert!(host_has(CpuidBit::new(0x8000_0001, 0, CpuidReg::Edx, 29)));
        assert!(!host_has(CpuidBit::new(0x7fff_ffff, 0, CpuidReg::Eax, 0)));
    }

    #[test]
    fn kernel_release_matches_proc() {
        let proc = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(kernel_release(), proc.trim());
    }

    #[test]
    fn kvm_modules_are_read_from_the_directory() {
        let dir = std::env::temp_dir().join(format!("hiber-kvm-modules-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm")).unwrap();
        std::fs::create_dir_all(dir.join("kvm_amd")).unwrap();
        assert_eq!(kvm_modules_in(&dir), vec!["kvm", "kvm_amd"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
