//! The start-up probe: runs a handful of instructions at CPL 0 in scratch VMs
//! and records which ones this host's KVM cannot run for a guest kernel.
//!
//! On bare-metal KVM every probe passes (or faults where the CPU lacks the
//! instruction). On a host whose KVM runs guest kernels through its
//! instruction emulator, some fail with KVM_EXIT_INTERNAL_ERROR; the quirks
//! module turns those failures into hidden features and guest switches.
//! A second check runs `cpuid` with every hideable feature cleared, to learn
//! which bits reach the guest whatever KVM_SET_CPUID2 says; a third sets the
//! guest's TSC and reads it back, to learn whether KVM applies the offset.

mod internal_error;
mod scratch;
pub mod snippets;
pub mod tsc;

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_regs, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::Kvm;
use log::{debug, info};
use serde::{Deserialize, Serialize};

pub use internal_error::{describe_internal_error, InternalErrorInfo};
use scratch::{Exit, ScratchVm, DONE_PORT, FAULT_PORT};
use snippets::{Remedy, Snippet, SNIPPETS};
pub use tsc::{TscOffsetCheck, TscReading, TscVerdict};

use super::cpuid::{bit_is_set, guest_cpuid};
use super::features::CpuFeature;
use super::host::host_has;

/// Bumped whenever the probe's snippets or their meaning change, so cached
/// results of an older probe are not reused. Version 2 added the TSC offset
/// check.
pub const PROBE_VERSION: u32 = 2;

/// The breakpoint exception, raised by `int3`.
const BP_VECTOR: u8 = 3;
/// Port the CPUID check writes to after each `cpuid`.
const CPUID_PORT: u8 = 0x12;

/// Errors of running the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A KVM ioctl failed while setting up or running a scratch VM.
    #[error("the KVM call {0} failed in the probe's scratch VM; is /dev/kvm usable?")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The scratch VM's memory could not be allocated.
    #[error("could not allocate the probe's scratch guest memory")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// Writing the scratch VM's memory failed (a bug in its layout).
    #[error("could not lay out the probe's scratch guest memory")]
    Layout(#[from] vm_memory::GuestMemoryError),
    /// A snippet does not fit the scratch VM (a bug in the snippet table).
    #[error("probe code of {0} bytes does not fit the scratch VM")]
    CodeTooLong(usize),
    /// The control instruction did not pass: the probe cannot be trusted.
    #[error("the probe's control instruction (nop) did not pass ({0}); not trusting the probe")]
    ControlFailed(String),
    /// The MSR list for KVM_SET_MSRS could not be built (a bug).
    #[error("could not build the probe's MSR list for KVM_SET_MSRS")]
    MsrArray,
    /// KVM_SET_MSRS did not take an MSR every KVM accepts.
    #[error("KVM refused the probe's write of MSR {0:#x}; is /dev/kvm usable?")]
    MsrRefused(u32),
}

impl ProbeError {
    fn kvm(call: &'static str) -> impl Fn(kvm_ioctls::Error) -> ProbeError {
        move |e| ProbeError::Kvm(call, e)
    }
}

/// What happened when one instruction ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ProbeOutcome {
    /// It completed (or raised the exception it is meant to raise).
    Passed,
    /// KVM_RUN stopped with an internal error: KVM cannot run it.
    Failed {
        /// What KVM reported.
        error: InternalErrorInfo,
    },
    /// The guest took an exception at it: the CPU (or KVM's CPUID) lacks
    /// it. Not an emulator gap.
    Faulted {
        /// The exception vector (6 is #UD, 13 is #GP).
        vector: u8,
    },
    /// Not run.
    Skipped {
        /// Why, e.g. "the host CPU lacks smap".
        reason: String,
    },
    /// Some other exit (a shutdown, a halt in the wrong place).
    Unexpected {
        /// The exit, described.
        exit: String,
    },
}

/// The outcome of one snippet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The snippet's name, such as "popcnt".
    pub name: String,
    /// The instruction bytes tried.
    pub insn: Vec<u8>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: ProbeOutcome,
    /// For a failure the VMM can work around (`int3`, `fwait`): whether the
    /// workaround, tried in the same scratch VM, let the code go on.
    #[serde(default)]
    pub workaround_works: Option<bool>,
}

/// Whether clearing CPUID bits with KVM_SET_CPUID2 hides them from the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidMaskCheck {
    /// Features the guest's `cpuid` still reported after being cleared.
    pub leaked: Vec<CpuFeature>,
    /// Why the check could not run, if it could not.
    pub error: Option<String>,
}

/// Everything the probe found on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// [`PROBE_VERSION`] of the probe that made this report.
    pub version: u32,
    /// One result per snippet, the control first.
    pub results: Vec<ProbeResult>,
    /// The CPUID masking check.
    pub cpuid_mask: CpuidMaskCheck,
    /// Whether the guest reads the TSC the VMM sets.
    #[serde(default)]
    pub tsc_offset: TscOffsetCheck,
    /// How long the probe took, in microseconds.
    pub duration_us: u64,
}

impl ProbeReport {
    /// The results that failed or ended unexpectedly.
    pub fn failures(&self) -> impl Iterator<Item = &ProbeResult> {
        self.results.iter().filter(|r| {
            matches!(
                r.outcome,
                ProbeOutcome::Failed { .. } | ProbeOutcome::Unexpected { .. }
            )
        })
    }

    /// How long the probe took.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }
}

/// Runs every snippet and the CPUID masking check in scratch VMs.
pub fn run_probe(kvm: &Kvm) -> Result<ProbeReport, ProbeError> {
    let start = Instant::now();
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ProbeError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let cpuid = guest_cpuid(&supported, 0, 1, &[]);

    let mut results = Vec::with_capacity(SNIPPETS.len());
    for snippet in SNIPPETS {
        let result = run_snippet(kvm, &cpuid, snippet)?;
        debug!("cpu probe: {}: {:?}", snippet.name, result.outcome);
        if snippet.remedy == Remedy::Control && result.outcome != ProbeOutcome::Passed {
            return Err(ProbeError::ControlFailed(format!("{:?}", result.outcome)));
        }
        results.push(result);
    }
    let cpuid_mask = check_cpuid_masking(kvm, &supported)?;
    let tsc_offset = tsc::check_tsc_offset(kvm, &cpuid)?;
    debug!("cpu probe: TSC offset: {:?}", tsc_offset.readings);
    let report = ProbeReport {
        version: PROBE_VERSION,
        results,
        cpuid_mask,
        tsc_offset,
        duration_us: start.elapsed().as_micros() as u64,
    };
    let mut failed: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    if failed.is_empty() {
        failed.push("none");
    }
    info!(
        "cpu probe: {} instructions in {:?}; failing: {}; guest TSC offset {}",
        report.results.len(),
        report.duration(),
        failed.join(" "),
        if report.tsc_offset.offset_ignored() {
            "ignored"
        } else {
            "applied"
        }
    );
    Ok(report)
}

/// Runs one snippet: its setup, the instruction, then `out DONE_PORT; hlt`;
/// if it fails and the VMM has a workaround for it, tries that too.
fn run_snippet(kvm: &Kvm, cpuid: &CpuId, snippet: &Snippet) -> Result<ProbeResult, ProbeError> {
    let mut result = ProbeResult {
        name: snippet.name.to_string(),
        insn: snippet.insn.to_vec(),
        outcome: ProbeOutcome::Passed,
        workaround_works: None,
    };
    if let Some(bit) = snippet.requires.filter(|b| !host_has(*b)) {
        let name = CpuFeature::from_bit(bit).map_or(bit.to_string(), |f| f.to_string());
        result.outcome = ProbeOutcome::Skipped {
            reason: format!("the host CPU lacks {name}"),
        };
        return Ok(result);
    }
    let mut code = [snippet.setup, snippet.insn].concat();
    code.extend_from_slice(&done_sequence());
    let mut vm = ScratchVm::new(kvm, cpuid, &code, snippet.cr4)?;
    result.outcome = outcome_of(vm.run()?, snippet);
    if matches!(result.outcome, ProbeOutcome::Failed { .. }) {
        result.workaround_works = try_workaround(&mut vm, snippet)?;
    }
    Ok(result)
}

/// What an exit means for `snippet`.
fn outcome_of(exit: Exit, snippet: &Snippet) -> ProbeOutcome {
    match exit {
        Exit::Out { port, .. } if port == DONE_PORT => ProbeOutcome::Passed,
        Exit::Out { port, value } if port == FAULT_PORT => match snippet.raises {
            Some(vector) if vector == value => ProbeOutcome::Passed,
            _ => ProbeOutcome::Faulted { vector: value },
        },
        Exit::InternalError(error) => ProbeOutcome::Failed { error },
        Exit::Out { port, value } => unexpected(format!("out {value:#x} to port {port:#x}")),
        Exit::Hlt => unexpected("halted before the end of the code".into()),
        Exit::Other(exit) => unexpected(exit),
    }
}

/// Applies the VMM's workaround for `snippet` to the stopped vCPU and runs
/// on; `None` if there is no workaround to try.
fn try_workaround(vm: &mut ScratchVm, snippet: &Snippet) -> Result<Option<bool>, ProbeError> {
    let len = snippet.insn.len() as u64;
    match snippet.remedy {
        Remedy::InjectBreakpoint => vm.inject_trap(len, BP_VECTOR)?,
        Remedy::SkipFwait => vm.step_over(len)?,
        _ => return Ok(None),
    }
    let works = outcome_of(vm.run()?, snippet) == ProbeOutcome::Passed;
    Ok(Some(works))
}

fn unexpected(exit: String) -> ProbeOutcome {
    ProbeOutcome::Unexpected { exit }
}

/// `mov al, 1; out DONE_PORT, al; hlt`.
fn done_sequence() -> [u8; 5] {
    [0xb0, 0x01, 0xe6, DONE_PORT as u8, 0xf4]
}

/// Runs `cpuid` for every leaf that holds a hideable feature, in a vCPU whose
/// CPUID has all of them cleared, and lists those the guest still sees.
fn check_cpuid_masking(kvm: &Kvm, supported: &CpuId) -> Result<CpuidMaskCheck, ProbeError> {
    let cpuid = guest_cpuid(supported, 0, 1, CpuFeature::ALL);
    let mut leaves: Vec<(u32, u32)> = CpuFeature::ALL
        .iter()
        .map(|f| (f.bit().leaf, f.bit().subleaf))
        .collect();
    leaves.sort();
    leaves.dedup();
    let mut vm = ScratchVm::new(kvm, &cpuid, &cpuid_code(&leaves), 0)?;

    let mut seen = Vec::new();
    for (leaf, subleaf) in &leaves {
        match vm.run()? {
            Exit::Out { port, .. } if port == u16::from(CPUID_PORT) => {
                let r = vm.regs()?;
                seen.push(observed_entry(*leaf, *subleaf, &r));
            }
            other => {
                return Ok(CpuidMaskCheck {
                    leaked: Vec::new(),
                    error: Some(format!("cpuid of leaf {leaf:#x} ended in {other:?}")),
                })
            }
        }
    }
    let leaked = CpuFeature::ALL
        .iter()
        .copied()
        .filter(|f| bit_is_set(&seen, f.bit()))
        .collect();
    Ok(CpuidMaskCheck {
        leaked,
        error: None,
    })
}

/// For each leaf: `mov eax, leaf; mov ecx, subleaf; cpuid; out CPUID_PORT`.
fn cpuid_code(leaves: &[(u32, u32)]) -> Vec<u8> {
    let mut code = Vec::new();
    for (leaf, subleaf) in leaves {
        code.push(0xb8);
        code.extend_from_slice(&leaf.to_le_bytes());
        code.push(0xb9);
        code.extend_from_slice(&subleaf.to_le_bytes());
        code.extend_from_slice(&[0x0f, 0xa2, 0xe6, CPUID_PORT]);
    }
    code.extend_from_slice(&done_sequence());
    code
}

/// What the guest's `cpuid` returned, as a CPUID entry.
fn observed_entry(leaf: u32, subleaf: u32, r: &kvm_regs) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: leaf,
        index: subleaf,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: r.rax as u32,
        ebx: r.rbx as u32,
        ecx: r.rcx as u32,
        edx: r.rdx as u32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm() -> Kvm {
        // These tests exist to exercise the real /dev/kvm: fail, never skip.
        Kvm::new().expect("these tests need a usable /dev/kvm; it could not be opened")
    }

    #[test]
    fn probe_on_real_kvm_is_consistent() {
        let report = run_probe(&kvm()).expect("the probe failed");
        eprintln!("probe took {:?}", report.duration());
        for r in &report.results {
            eprintln!("  {:<12} {:?} {:?}", r.name, r.outcome, r.workaround_works);
        }
        eprintln!(
            "  cpuid bits that ignore KVM_SET_CPUID2: {:?}",
            report.cpuid_mask
        );

        assert_eq!(report.results[0].name, "nop");
        assert_eq!(report.results[0].outcome, ProbeOutcome::Passed);
        assert_eq!(report.results.len(), SNIPPETS.len());
        assert_eq!(report.version, PROBE_VERSION);
        assert!(report.cpuid_mask.error.is_none(), "{:?}", report.cpuid_mask);
        eprintln!("  TSC offset: {:?}", report.tsc_offset);
        assert_eq!(report.tsc_offset.readings.len(), 2);
        for r in &report.results {
            let snippet = snippets::by_name(&r.name).unwrap();
            assert_eq!(r.insn, snippet.insn);
            match &r.outcome {
                ProbeOutcome::Failed { error } => {
                    assert_ne!(error.suberror, 0, "{}", r.name);
                    if !error.insn_bytes.is_empty() && snippet.opcode_len > 0 {
                        // The failing bytes are the probed instruction or its setup.
                        let bytes = &error.insn_bytes;
                        let in_setup =
                            !snippet.setup.is_empty() && bytes.starts_with(&snippet.setup[..1]);
                        assert!(
                            bytes.starts_with(snippet.insn) || in_setup,
                            "{}: {error}",
                            r.name
                        );
                    }
                }
                ProbeOutcome::Skipped { .. } => assert!(snippet.requires.is_some()),
                _ => assert_eq!(r.workaround_works, None, "{}", r.name),
            }
        }
    }

    #[test]
    fn a_faulting_instruction_reports_its_vector() {
        // ud2 must raise #UD on every host: the IDT handler path works.
        let kvm = kvm();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let cpuid = guest_cpuid(&supported, 0, 1, &[]);
        let ud2 = Snippet {
            name: "ud2",
            insn: &[0x0f, 0x0b],
            ..snippets::CONTROL
        };
        let result = run_snippet(&kvm, &cpuid, &ud2).unwrap();
        assert_eq!(result.outcome, ProbeOutcome::Faulted { vector: 6 });
        assert_eq!(result.workaround_works, None);
    }
}
