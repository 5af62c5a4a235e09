//! The instructions the start-up probe tries at CPL 0, and what the VMM can
//! do about each one if this host's KVM cannot run it.
//!
//! Memory operands use `[rbx]`, which the scratch VM points at a zeroed,
//! page-aligned data area; [`MXCSR_OFFSET`] and [`SELECTOR_OFFSET`] in that
//! area hold a valid MXCSR value and a valid data selector.

use crate::cpu::features::{CpuFeature, CpuidBit, CpuidReg};

/// Offset in the data area of a 32-bit MXCSR image (the reset value).
pub const MXCSR_OFFSET: u64 = 0x100;
/// Offset in the data area of a 16-bit selector (the data segment).
pub const SELECTOR_OFFSET: u64 = 0x200;

/// CR4.OSXSAVE: the snippet needs XSAVE enabled (the probe also sets XCR0).
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.FSGSBASE: the snippet needs `rdfsbase` enabled.
pub const CR4_FSGSBASE: u64 = 1 << 16;

/// What the VMM can do when a guest kernel's instruction makes KVM fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing to do: the probe's control, which must pass.
    Control,
    /// Hide the feature (and its dependents) from the guest.
    Hide(CpuFeature),
    /// The VMM delivers the #BP that `int3` should have raised.
    InjectBreakpoint,
    /// The VMM steps over `fwait`, which only reports pending x87 exceptions.
    SkipFwait,
    /// These guest kernel command-line switches keep the kernel off it.
    Cmdline(&'static [&'static str]),
    /// Part of the base architecture: no switch keeps a kernel off it.
    Unavoidable,
}

/// How the ModR/M byte after the opcode identifies an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modrm {
    /// The opcode bytes alone identify it.
    Ignore,
    /// The reg field must be this value, any addressing.
    Reg(u8),
    /// The reg field must be this value with a memory operand.
    MemReg(u8),
    /// The reg field must be this value with a register operand.
    RegReg(u8),
}

/// One instruction the probe runs.
#[derive(Clone, Copy, Debug)]
pub struct Snippet {
    /// A short name, also the key of its result.
    pub name: &'static str,
    /// Instructions run first to give it operands (plain `mov`s).
    pub setup: &'static [u8],
    /// The instruction under test.
    pub insn: &'static [u8],
    /// Opcode bytes of `insn`, counted after removing REX prefixes, that
    /// identify it in a failure report; 0 for "do not try to recognise".
    pub opcode_len: usize,
    /// What the ModR/M byte after those opcode bytes must hold.
    pub modrm: Modrm,
    /// The host CPU feature it needs; without it the probe is skipped.
    pub requires: Option<CpuidBit>,
    /// CR4 bits it needs beyond PAE, OSFXSR and OSXMMEXCPT.
    pub cr4: u64,
    /// The exception vector it is meant to raise, if any (`int3`: 3).
    pub raises: Option<u8>,
    /// What the VMM can do if it fails.
    pub remedy: Remedy,
}

const XSAVES: CpuidBit = CpuidBit::new(0xd, 1, CpuidReg::Eax, 3);
const XSAVEOPT: CpuidBit = CpuidBit::new(0xd, 1, CpuidReg::Eax, 0);
/// `mov eax, -1; mov edx, -1`: every XSAVE component requested.
const ALL_COMPONENTS: &[u8] = &[0xb8, 0xff, 0xff, 0xff, 0xff, 0xba, 0xff, 0xff, 0xff, 0xff];
/// Kernel switches that stop Linux clearing CPU buffers with `verw`.
const NO_VERW_SWITCHES: &[&str] = &[
    "mds=off",
    "tsx_async_abort=off",
    "mmio_stale_data=off",
    "reg_file_data_sampling=off",
];

const fn snippet(name: &'static str, insn: &'static [u8], opcode_len: usize) -> Snippet {
    Snippet {
        name,
        setup: &[],
        insn,
        opcode_len,
        modrm: Modrm::Ignore,
        requires: None,
        cr4: 0,
        raises: None,
        remedy: Remedy::Unavoidable,
    }
}

const fn feature(name: &'static str, insn: &'static [u8], len: usize, f: CpuFeature) -> Snippet {
    Snippet {
        requires: Some(f.bit()),
        remedy: Remedy::Hide(f),
        ..snippet(name, insn, len)
    }
}

const fn with_modrm(s: Snippet, modrm: Modrm) -> Snippet {
    Snippet { modrm, ..s }
}

const fn xsave_family(
    name: &'static str,
    insn: &'static [u8],
    reg: u8,
    needs: CpuidBit,
) -> Snippet {
    Snippet {
        setup: ALL_COMPONENTS,
        cr4: CR4_OSXSAVE,
        requires: Some(needs),
        remedy: Remedy::Hide(CpuFeature::Xsave),
        modrm: Modrm::MemReg(reg),
        ..snippet(name, insn, 2)
    }
}

const fn avx(name: &'static str, insn: &'static [u8], f: CpuFeature) -> Snippet {
    Snippet {
        cr4: CR4_OSXSAVE,
        ..feature(name, insn, 0, f)
    }
}

/// The control: it must pass on every host, or the probe itself is broken.
pub const CONTROL: Snippet = Snippet {
    remedy: Remedy::Control,
    ..snippet("nop", &[0x90], 0)
};

/// Every snippet the probe runs, the control first.
pub const SNIPPETS: &[Snippet] = &[
    CONTROL,
    with_modrm(
        feature(
            "cmpxchg16b",
            &[0xf0, 0x48, 0x0f, 0xc7, 0x0b],
            3,
            CpuFeature::Cx16,
        ),
        Modrm::MemReg(1),
    ),
    xsave_family(
        "xsave",
        &[0x48, 0x0f, 0xae, 0x23],
        4,
        CpuFeature::Xsave.bit(),
    ),
    xsave_family(
        "xrstor",
        &[0x48, 0x0f, 0xae, 0x2b],
        5,
        CpuFeature::Xsave.bit(),
    ),
    xsave_family("xsaveopt", &[0x48, 0x0f, 0xae, 0x33], 6, XSAVEOPT),
    Snippet {
        opcode_len: 2,
        ..xsave_family("xsaves", &[0x48, 0x0f, 0xc7, 0x2b], 5, XSAVES)
    },
    Snippet {
        setup: &[0x31, 0xc9],
        cr4: CR4_OSXSAVE,
        ..feature("xgetbv", &[0x0f, 0x01, 0xd0], 3, CpuFeature::Xsave)
    },
    feature(
        "popcnt",
        &[0xf3, 0x48, 0x0f, 0xb8, 0xc3],
        3,
        CpuFeature::Popcnt,
    ),
    feature("clac", &[0x0f, 0x01, 0xca], 3, CpuFeature::Smap),
    feature("stac", &[0x0f, 0x01, 0xcb], 3, CpuFeature::Smap),
    Snippet {
        raises: Some(3),
        remedy: Remedy::InjectBreakpoint,
        ..snippet("int3", &[0xcc], 1)
    },
    Snippet {
        remedy: Remedy::SkipFwait,
        ..snippet("fwait", &[0x9b], 1)
    },
    feature("rdtscp", &[0x0f, 0x01, 0xf9], 3, CpuFeature::Rdtscp),
    with_modrm(
        feature("rdpid", &[0xf3, 0x0f, 0xc7, 0xf8], 3, CpuFeature::Rdpid),
        Modrm::RegReg(7),
    ),
    with_modrm(
        snippet("ldmxcsr", &[0x0f, 0xae, 0x93, 0x00, 0x01, 0x00, 0x00], 2),
        Modrm::MemReg(2),
    ),
    with_modrm(snippet("stmxcsr", &[0x0f, 0xae, 0x1b], 2), Modrm::MemReg(3)),
    with_modrm(
        snippet("fxsave", &[0x48, 0x0f, 0xae, 0x03], 2),
        Modrm::MemReg(0),
    ),
    with_modrm(
        snippet("fxrstor", &[0x48, 0x0f, 0xae, 0x0b], 2),
        Modrm::MemReg(1),
    ),
    snippet("fnclex", &[0xdb, 0xe2], 2),
    snippet("fninit", &[0xdb, 0xe3], 2),
    snippet("emms", &[0x0f, 0x77], 2),
    snippet("addps", &[0x0f, 0x58, 0xc1], 2),
    feature(
        "pshufb",
        &[0x66, 0x0f, 0x38, 0x00, 0xc1],
        4,
        CpuFeature::Ssse3,
    ),
    feature(
        "ptest",
        &[0x66, 0x0f, 0x38, 0x17, 0xc1],
        4,
        CpuFeature::Sse4_1,
    ),
    feature(
        "crc32",
        &[0xf2, 0x0f, 0x38, 0xf1, 0xc3],
        4,
        CpuFeature::Sse4_2,
    ),
    feature("movbe", &[0x0f, 0x38, 0xf0, 0x03], 3, CpuFeature::Movbe),
    feature("lzcnt", &[0xf3, 0x48, 0x0f, 0xbd, 0xc3], 3, CpuFeature::Abm),
    feature(
        "tzcnt",
        &[0xf3, 0x48, 0x0f, 0xbc, 0xc3],
        3,
        CpuFeature::Bmi1,
    ),
    feature("andn", &[0xc4, 0xe2, 0xe0, 0xf2, 0xc1], 0, CpuFeature::Bmi1),
    feature("pdep", &[0xc4, 0xe2, 0xe3, 0xf5, 0xc1], 0, CpuFeature::Bmi2),
    feature(
        "adcx",
        &[0x66, 0x48, 0x0f, 0x38, 0xf6, 0xc3],
        4,
        CpuFeature::Adx,
    ),
    with_modrm(
        feature("rdrand", &[0x48, 0x0f, 0xc7, 0xf0], 2, CpuFeature::Rdrand),
        Modrm::RegReg(6),
    ),
    with_modrm(
        feature("rdseed", &[0x48, 0x0f, 0xc7, 0xf8], 2, CpuFeature::Rdseed),
        Modrm::RegReg(7),
    ),
    with_modrm(
        feature("clwb", &[0x66, 0x0f, 0xae, 0x33], 3, CpuFeature::Clwb),
        Modrm::MemReg(6),
    ),
    with_modrm(
        feature(
            "clflushopt",
            &[0x66, 0x0f, 0xae, 0x3b],
            3,
            CpuFeature::Clflushopt,
        ),
        Modrm::MemReg(7),
    ),
    Snippet {
        modrm: Modrm::Reg(5),
        remedy: Remedy::Cmdline(NO_VERW_SWITCHES),
        ..snippet("verw", &[0x0f, 0x00, 0xab, 0x00, 0x02, 0x00, 0x00], 2)
    },
    feature(
        "aesenc",
        &[0x66, 0x0f, 0x38, 0xdc, 0xc1],
        4,
        CpuFeature::Aes,
    ),
    feature(
        "pclmulqdq",
        &[0x66, 0x0f, 0x3a, 0x44, 0xc1, 0x00],
        4,
        CpuFeature::Pclmulqdq,
    ),
    feature("sha1msg1", &[0x0f, 0x38, 0xc9, 0xc1], 3, CpuFeature::ShaNi),
    feature(
        "gf2p8mulb",
        &[0x66, 0x0f, 0x38, 0xcf, 0xc1],
        4,
        CpuFeature::Gfni,
    ),
    avx("vxorps", &[0xc5, 0xfc, 0x57, 0xc1], CpuFeature::Avx),
    avx("vpaddd", &[0xc5, 0xfd, 0xfe, 0xc1], CpuFeature::Avx2),
    Snippet {
        cr4: CR4_FSGSBASE,
        modrm: Modrm::RegReg(0),
        ..feature(
            "rdfsbase",
            &[0xf3, 0x48, 0x0f, 0xae, 0xc0],
            3,
            CpuFeature::Fsgsbase,
        )
    },
    Snippet {
        setup: &[0xb8, 0x02, 0x00, 0x00, 0x00],
        ..feature(
            "invpcid",
            &[0x66, 0x0f, 0x38, 0x82, 0x03],
            4,
            CpuFeature::Invpcid,
        )
    },
];

/// The snippet named `name`.
pub fn by_name(name: &str) -> Option<&'static Snippet> {
    SNIPPETS.iter().find(|s| s.name == name)
}

/// The probed instruction that `bytes` (as KVM reported them) starts with.
///
/// Best effort: it knows only the forms listed here, with any registers.
pub fn identify(bytes: &[u8]) -> Option<&'static Snippet> {
    let bytes = without_rex(bytes);
    SNIPPETS
        .iter()
        .find(|s| s.opcode_len > 0 && s.matches(&bytes))
}

impl Snippet {
    fn matches(&self, bytes: &[u8]) -> bool {
        let own = without_rex(self.insn);
        let opcode = &own[..self.opcode_len];
        if !bytes.starts_with(opcode) {
            return false;
        }
        let Some(&modrm) = bytes.get(self.opcode_len) else {
            return self.modrm == Modrm::Ignore;
        };
        let (is_reg, reg) = (modrm >> 6 == 3, (modrm >> 3) & 7);
        match self.modrm {
            Modrm::Ignore => true,
            Modrm::Reg(r) => reg == r,
            Modrm::MemReg(r) => reg == r && !is_reg,
            Modrm::RegReg(r) => reg == r && is_reg,
        }
    }
}

/// `bytes` without the REX prefixes among its leading prefix bytes, which
/// vary with the registers an instruction names.
fn without_rex(bytes: &[u8]) -> Vec<u8> {
    const LEGACY: &[u8] = &[
        0xf0, 0xf2, 0xf3, 0x66, 0x67, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65,
    ];
    let prefix_len = bytes
        .iter()
        .position(|b| !LEGACY.contains(b) && !(0x40..=0x4f).contains(b))
        .unwrap_or(bytes.len());
    let (prefixes, rest) = bytes.split_at(prefix_len);
    let mut out: Vec<u8> = prefixes
        .iter()
        .copied()
        .filter(|b| LEGACY.contains(b))
        .collect();
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_control_is_first() {
        assert_eq!(SNIPPETS[0].remedy, Remedy::Control);
        for (i, s) in SNIPPETS.iter().enumerate() {
            assert!(
                SNIPPETS[i + 1..].iter().all(|o| o.name != s.name),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn every_recognisable_snippet_identifies_itself() {
        for s in SNIPPETS.iter().filter(|s| s.opcode_len > 0) {
            assert_eq!(identify(s.insn).map(|f| f.name), Some(s.name));
        }
    }

    #[test]
    fn kernel_forms_are_recognised() {
        // Encodings as they appear in Linux: other registers, other REX bits.
        let cases: &[(&[u8], &str)] = &[
            (&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], "cmpxchg16b"),
            (&[0x48, 0x0f, 0xc7, 0x2f], "xsaves"),
            (&[0x48, 0x0f, 0xae, 0x2f], "xrstor"),
            (&[0xf3, 0x0f, 0xb8, 0xc7], "popcnt"),
            (&[0x0f, 0x01, 0xca, 0x90], "clac"),
            (&[0xcc, 0x90, 0x90], "int3"),
            (&[0x9b, 0x90], "fwait"),
            (&[0x0f, 0x00, 0x2d, 0x10, 0x20, 0x30, 0x40], "verw"),
        ];
        for (bytes, name) in cases {
            assert_eq!(identify(bytes).map(|s| s.name), Some(*name), "{bytes:02x?}");
        }
        // lfence shares 0f ae /5 with xrstor but has a register operand.
        assert!(identify(&[0x0f, 0xae, 0xe8]).is_none());
        assert!(identify(&[0x0f, 0x0b]).is_none());
    }
}
