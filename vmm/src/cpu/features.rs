//! CPU features the VMM may hide from a guest, where each one lives in CPUID,
//! and what Linux calls it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the four registers a CPUID leaf returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuidReg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl fmt::Display for CpuidReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CpuidReg::Eax => "EAX",
            CpuidReg::Ebx => "EBX",
            CpuidReg::Ecx => "ECX",
            CpuidReg::Edx => "EDX",
        };
        f.write_str(name)
    }
}

/// One bit of one CPUID leaf and sub-leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuidBit {
    /// The leaf (the EAX input).
    pub leaf: u32,
    /// The sub-leaf (the ECX input); 0 for leaves without sub-leaves.
    pub subleaf: u32,
    /// The output register holding the bit.
    pub reg: CpuidReg,
    /// The bit number, 0 to 31.
    pub bit: u8,
}

impl CpuidBit {
    /// A bit of `leaf`, sub-leaf `subleaf`, register `reg`.
    pub const fn new(leaf: u32, subleaf: u32, reg: CpuidReg, bit: u8) -> Self {
        CpuidBit {
            leaf,
            subleaf,
            reg,
            bit,
        }
    }

    /// The bit as a mask of its register.
    pub const fn mask(&self) -> u32 {
        1 << self.bit
    }
}

impl fmt::Display for CpuidBit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPUID.(EAX={:#x},ECX={}):{}[bit {}]",
            self.leaf, self.subleaf, self.reg, self.bit
        )
    }
}

/// Where a feature lives and its names in Linux.
#[derive(Clone, Copy, Debug)]
pub struct FeatureInfo {
    /// The CPUID bit that reports the feature.
    pub bit: CpuidBit,
    /// The name Linux's `clearcpuid=` accepts, if it has one.
    pub clearcpuid: Option<&'static str>,
    /// The flag shown in /proc/cpuinfo, if Linux shows one.
    pub cpuinfo: Option<&'static str>,
}

/// The KVM paravirtual feature leaf (KVM_CPUID_FEATURES).
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// Linux's `clearcpuid=` looks names up in the same table /proc/cpuinfo
/// prints, so one name serves both.
const fn info(
    leaf: u32,
    subleaf: u32,
    reg: CpuidReg,
    bit: u8,
    linux: Option<&'static str>,
) -> FeatureInfo {
    FeatureInfo {
        bit: CpuidBit::new(leaf, subleaf, reg, bit),
        clearcpuid: linux,
        cpuinfo: linux,
    }
}

/// Declares `CpuFeature` from one table row per feature, so a feature's bit
/// and names cannot drift apart from its variant.
macro_rules! cpu_features {
    ($(
        $(#[$doc:meta])*
        $name:ident => $leaf:expr, $sub:expr, $reg:ident, $bit:expr, $linux:expr;
    )*) => {
        /// A CPU feature the VMM knows how to hide from the guest.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(Serialize, Deserialize)]
        pub enum CpuFeature {
            $($(#[$doc])* $name,)*
        }

        impl CpuFeature {
            /// Every feature, in declaration order.
            pub const ALL: &'static [CpuFeature] = &[$(CpuFeature::$name,)*];

            /// Where the feature lives and its names in Linux.
            pub const fn info(self) -> FeatureInfo {
                match self {
                    $(CpuFeature::$name => info($leaf, $sub, CpuidReg::$reg, $bit, $linux),)*
                }
            }
        }
    };
}

cpu_features! {
    /// SSSE3 (`pshufb` and friends).
    Ssse3 => 1, 0, Ecx, 9, Some("ssse3");
    /// PCLMULQDQ, carry-less multiplication.
    Pclmulqdq => 1, 0, Ecx, 1, Some("pclmulqdq");
    /// Fused multiply-add (FMA3).
    Fma => 1, 0, Ecx, 12, Some("fma");
    /// `cmpxchg16b`.
    Cx16 => 1, 0, Ecx, 13, Some("cx16");
    /// Process-context identifiers.
    Pcid => 1, 0, Ecx, 17, Some("pcid");
    /// SSE4.1.
    Sse4_1 => 1, 0, Ecx, 19, Some("sse4_1");
    /// SSE4.2 (`crc32`, `pcmpistri`).
    Sse4_2 => 1, 0, Ecx, 20, Some("sse4_2");
    /// `movbe`.
    Movbe => 1, 0, Ecx, 22, Some("movbe");
    /// `popcnt`.
    Popcnt => 1, 0, Ecx, 23, Some("popcnt");
    /// AES-NI.
    Aes => 1, 0, Ecx, 25, Some("aes");
    /// `xsave`/`xrstor` and XCR0.
    Xsave => 1, 0, Ecx, 26, Some("xsave");
    /// CR4.OSXSAVE as reflected in CPUID; Linux has no name for it.
    Osxsave => 1, 0, Ecx, 27, None;
    /// AVX.
    Avx => 1, 0, Ecx, 28, Some("avx");
    /// Half-precision conversions.
    F16c => 1, 0, Ecx, 29, Some("f16c");
    /// `rdrand`.
    Rdrand => 1, 0, Ecx, 30, Some("rdrand");
    /// `rdfsbase` and friends at any privilege level.
    Fsgsbase => 7, 0, Ebx, 0, Some("fsgsbase");
    /// Bit manipulation set 1 (`andn`, `tzcnt`, ...).
    Bmi1 => 7, 0, Ebx, 3, Some("bmi1");
    /// AVX2.
    Avx2 => 7, 0, Ebx, 5, Some("avx2");
    /// Bit manipulation set 2 (`pdep`, `shlx`, ...).
    Bmi2 => 7, 0, Ebx, 8, Some("bmi2");
    /// Enhanced `rep movsb`/`rep stosb`: Linux then copies and clears byte-wise.
    Erms => 7, 0, Ebx, 9, Some("erms");
    /// `invpcid`.
    Invpcid => 7, 0, Ebx, 10, Some("invpcid");
    /// AVX-512 foundation.
    Avx512f => 7, 0, Ebx, 16, Some("avx512f");
    /// `rdseed`.
    Rdseed => 7, 0, Ebx, 18, Some("rdseed");
    /// `adcx`/`adox`.
    Adx => 7, 0, Ebx, 19, Some("adx");
    /// Supervisor-mode access prevention (`clac`/`stac`).
    Smap => 7, 0, Ebx, 20, Some("smap");
    /// `clflushopt`.
    Clflushopt => 7, 0, Ebx, 23, Some("clflushopt");
    /// `clwb`.
    Clwb => 7, 0, Ebx, 24, Some("clwb");
    /// SHA extensions.
    ShaNi => 7, 0, Ebx, 29, Some("sha_ni");
    /// User-mode instruction prevention.
    Umip => 7, 0, Ecx, 2, Some("umip");
    /// Protection keys for user pages.
    Pku => 7, 0, Ecx, 3, Some("pku");
    /// Galois field instructions.
    Gfni => 7, 0, Ecx, 8, Some("gfni");
    /// VEX-encoded AES.
    Vaes => 7, 0, Ecx, 9, Some("vaes");
    /// VEX-encoded PCLMULQDQ.
    Vpclmulqdq => 7, 0, Ecx, 10, Some("vpclmulqdq");
    /// `rdpid`.
    Rdpid => 7, 0, Ecx, 22, Some("rdpid");
    /// Fast short `rep movsb`: Linux then copies byte-wise.
    Fsrm => 7, 0, Edx, 4, Some("fsrm");
    /// `lzcnt` (AMD's "advanced bit manipulation").
    Abm => 0x8000_0001, 0, Ecx, 5, Some("abm");
    /// `rdtscp`.
    Rdtscp => 0x8000_0001, 0, Edx, 27, Some("rdtscp");
    /// KVM steal-time accounting (KVM_FEATURE_STEAL_TIME).
    KvmStealTime => KVM_FEATURES_LEAF, 0, Eax, 5, None;
    /// KVM's kvmclock stable bit (KVM_FEATURE_CLOCKSOURCE_STABLE_BIT).
    KvmClockStable => KVM_FEATURES_LEAF, 0, Eax, 24, None;
    /// Paravirtual spinlock kicks (KVM_FEATURE_PV_UNHALT): a hypercall.
    KvmPvUnhalt => KVM_FEATURES_LEAF, 0, Eax, 7, None;
    /// Paravirtual IPIs (KVM_FEATURE_PV_SEND_IPI): a hypercall.
    KvmPvSendIpi => KVM_FEATURES_LEAF, 0, Eax, 11, None;
    /// Paravirtual directed yield (KVM_FEATURE_PV_SCHED_YIELD): a hypercall.
    KvmPvSchedYield => KVM_FEATURES_LEAF, 0, Eax, 13, None;
}

impl CpuFeature {
    /// The CPUID bit that reports the feature.
    pub const fn bit(self) -> CpuidBit {
        self.info().bit
    }

    /// The name Linux's `clearcpuid=` accepts, if any.
    pub const fn clearcpuid_name(self) -> Option<&'static str> {
        self.info().clearcpuid
    }

    /// The flag Linux shows in /proc/cpuinfo, if any.
    pub const fn cpuinfo_name(self) -> Option<&'static str> {
        self.info().cpuinfo
    }

    /// A short lower-case name: the Linux name where there is one.
    pub fn name(self) -> &'static str {
        match self {
            CpuFeature::Osxsave => "osxsave",
            CpuFeature::KvmStealTime => "kvm-steal-time",
            CpuFeature::KvmClockStable => "kvm-clock-stable",
            CpuFeature::KvmPvUnhalt => "kvm-pv-unhalt",
            CpuFeature::KvmPvSendIpi => "kvm-pv-send-ipi",
            CpuFeature::KvmPvSchedYield => "kvm-pv-sched-yield",
            other => other.clearcpuid_name().unwrap_or("unnamed"),
        }
    }

    /// The feature reported by `bit`, if it is one of ours.
    pub fn from_bit(bit: CpuidBit) -> Option<CpuFeature> {
        CpuFeature::ALL.iter().copied().find(|f| f.bit() == bit)
    }

    /// Features that cannot work once this one is hidden, not counting this one.
    pub fn dependents(self) -> &'static [CpuFeature] {
        use CpuFeature::*;
        match self {
            Xsave => &[Osxsave, Avx, Pku],
            Avx => &[Avx2, Fma, F16c, Vaes, Vpclmulqdq, Avx512f],
            _ => &[],
        }
    }

    /// The feature whose clearing makes Linux clear this one too (its
    /// `cpuid-deps` table), among ours: a `clearcpuid=` that names the
    /// parent need not name this one.
    pub fn linux_parent(self) -> Option<CpuFeature> {
        use CpuFeature::*;
        match self {
            Avx | Pku => Some(Xsave),
            Fma | Vaes | Vpclmulqdq | Avx2 | Avx512f => Some(Avx),
            _ => None,
        }
    }

    /// Whether Linux clears this feature when it clears `root` (directly or
    /// through a chain of [`linux_parent`](Self::linux_parent)s).
    pub fn cleared_by_linux_with(self, root: CpuFeature) -> bool {
        let mut parent = self.linux_parent();
        while let Some(p) = parent {
            if p == root {
                return true;
            }
            parent = p.linux_parent();
        }
        false
    }

    /// CPUID bits without a `CpuFeature` of their own that go with this one.
    pub fn dependent_bits(self) -> &'static [CpuidBit] {
        match self {
            CpuFeature::Xsave => XSAVE_ONLY_BITS,
            CpuFeature::Avx => AVX_ONLY_BITS,
            CpuFeature::Avx512f => AVX512_FAMILY_BITS,
            CpuFeature::Pku => OSPKE_BITS,
            _ => &[],
        }
    }
}

/// CR4.PKE as reflected in CPUID (OSPKE).
const OSPKE_BITS: &[CpuidBit] = &[CpuidBit::new(7, 0, CpuidReg::Ecx, 4)];

/// State components kept by XSAVE alone: AMX tiles (leaf 7 EDX 22, 24, 25).
const XSAVE_ONLY_BITS: &[CpuidBit] = &[
    CpuidBit::new(7, 0, CpuidReg::Edx, 22),
    CpuidBit::new(7, 0, CpuidReg::Edx, 24),
    CpuidBit::new(7, 0, CpuidReg::Edx, 25),
];

/// VEX extensions beyond AVX2 (AVX-VNNI, AVX-IFMA) that need AVX state.
const AVX_ONLY_BITS: &[CpuidBit] = &[
    CpuidBit::new(7, 1, CpuidReg::Eax, 4),
    CpuidBit::new(7, 1, CpuidReg::Eax, 23),
];

/// The AVX-512 extensions that need AVX-512 foundation.
const AVX512_FAMILY_BITS: &[CpuidBit] = &[
    CpuidBit::new(7, 0, CpuidReg::Ebx, 17), // DQ
    CpuidBit::new(7, 0, CpuidReg::Ebx, 21), // IFMA
    CpuidBit::new(7, 0, CpuidReg::Ebx, 26), // PF
    CpuidBit::new(7, 0, CpuidReg::Ebx, 27), // ER
    CpuidBit::new(7, 0, CpuidReg::Ebx, 28), // CD
    CpuidBit::new(7, 0, CpuidReg::Ebx, 30), // BW
    CpuidBit::new(7, 0, CpuidReg::Ebx, 31), // VL
    CpuidBit::new(7, 0, CpuidReg::Ecx, 1),  // VBMI
    CpuidBit::new(7, 0, CpuidReg::Ecx, 6),  // VBMI2
    CpuidBit::new(7, 0, CpuidReg::Ecx, 11), // VNNI
    CpuidBit::new(7, 0, CpuidReg::Ecx, 12), // BITALG
    CpuidBit::new(7, 0, CpuidReg::Ecx, 14), // VPOPCNTDQ
    CpuidBit::new(7, 0, CpuidReg::Edx, 2),  // 4VNNIW
    CpuidBit::new(7, 0, CpuidReg::Edx, 3),  // 4FMAPS
    CpuidBit::new(7, 0, CpuidReg::Edx, 8),  // VP2INTERSECT
    CpuidBit::new(7, 0, CpuidReg::Edx, 23), // FP16
    CpuidBit::new(7, 1, CpuidReg::Eax, 5),  // BF16
];

/// `features` plus everything that depends on them, sorted, without repeats.
pub fn with_dependents(features: &[CpuFeature]) -> Vec<CpuFeature> {
    let mut all: Vec<CpuFeature> = features.to_vec();
    let mut next = 0;
    while next < all.len() {
        for dep in all[next].dependents() {
            if !all.contains(dep) {
                all.push(*dep);
            }
        }
        next += 1;
    }
    all.sort();
    all
}

impl fmt::Display for CpuFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A feature name that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown CPU feature {0:?}: use a Linux clearcpuid= name such as cx16, popcnt or xsave, \
     or kvm-steal-time / kvm-clock-stable"
)]
pub struct UnknownFeature(pub String);

impl FromStr for CpuFeature {
    type Err = UnknownFeature;

    /// Parses a feature by its name (see [`CpuFeature::name`]); `lzcnt` means `abm`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('.', "_");
        let wanted = if wanted == "lzcnt" {
            "abm".into()
        } else {
            wanted
        };
        CpuFeature::ALL
            .iter()
            .copied()
            .find(|f| f.name() == wanted)
            .ok_or_else(|| UnknownFeature(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bits_are_unique() {
        for f in CpuFeature::ALL {
            assert_eq!(f.name().parse::<CpuFeature>().unwrap(), *f);
            assert_eq!(CpuFeature::from_bit(f.bit()), Some(*f), "{f} shares a bit");
        }
        assert_eq!("LZCNT".parse::<CpuFeature>().unwrap(), CpuFeature::Abm);
        assert!("warp-drive".parse::<CpuFeature>().is_err());
    }

    #[test]
    fn dependents_close_transitively() {
        let all = with_dependents(&[CpuFeature::Xsave]);
        for f in [CpuFeature::Osxsave, CpuFeature::Avx, CpuFeature::Avx512f] {
            assert!(all.contains(&f), "{f} missing from {all:?}");
        }
        assert_eq!(with_dependents(&[CpuFeature::Cx16]), vec![CpuFeature::Cx16]);
    }

    #[test]
    fn linux_parents_are_also_dependents() {
        // Linux clears a child with its parent; so must our CPUID hiding.
        for f in CpuFeature::ALL {
            if let Some(parent) = f.linux_parent() {
                assert!(with_dependents(&[parent]).contains(f), "{f} of {parent}");
            }
        }
        assert!(CpuFeature::Avx2.cleared_by_linux_with(CpuFeature::Xsave));
        assert!(CpuFeature::Avx2.cleared_by_linux_with(CpuFeature::Avx));
        assert!(!CpuFeature::F16c.cleared_by_linux_with(CpuFeature::Avx));
        assert!(!CpuFeature::Avx.cleared_by_linux_with(CpuFeature::Avx));
    }
}
