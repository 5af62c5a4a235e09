//! What KVM says when it stops a vCPU with KVM_EXIT_INTERNAL_ERROR.

use std::fmt;

use kvm_bindings::{
    kvm_run, KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};
use serde::{Deserialize, Serialize};

use super::snippets::{self, Remedy};

/// The most data words `kvm_run.internal` can carry.
const MAX_DATA: usize = 16;
/// The most instruction bytes an emulation failure can carry.
const MAX_INSN_BYTES: usize = 15;

/// A KVM internal error, decoded from `kvm_run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalErrorInfo {
    /// KVM_INTERNAL_ERROR_* (1 is an emulation failure).
    pub suberror: u32,
    /// The bytes of the instruction KVM could not emulate; empty when KVM
    /// did not report them.
    pub insn_bytes: Vec<u8>,
    /// The raw data words (`ndata` of them). For an emulation failure the
    /// first is the flags word and, with instruction bytes, the next two
    /// hold them; the rest are vendor-specific exit details.
    pub data: Vec<u64>,
}

/// Decodes the internal error a vCPU's `kvm_run` describes.
///
/// Only meaningful right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR.
pub fn describe_internal_error(run: &kvm_run) -> InternalErrorInfo {
    debug_assert_eq!(run.exit_reason, KVM_EXIT_INTERNAL_ERROR);
    // SAFETY: `internal` is plain integers, valid for any bit pattern; the
    // exit reason says it is the member KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(MAX_DATA);
    let data = internal.data[..ndata].to_vec();
    let insn_bytes = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
        emulation_insn_bytes(run, ndata)
    } else {
        Vec::new()
    };
    InternalErrorInfo {
        suberror: internal.suberror,
        insn_bytes,
        data,
    }
}

/// The instruction bytes of an emulation failure, if KVM flagged them valid.
fn emulation_insn_bytes(run: &kvm_run, ndata: usize) -> Vec<u8> {
    // SAFETY: as above; `emulation_failure` overlays `internal` for
    // suberror KVM_INTERNAL_ERROR_EMULATION and is plain integers too.
    let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
    let has_bytes = failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
    // flags, then 16 bytes of size and instruction: three data words.
    if has_bytes == 0 || ndata < 3 {
        return Vec::new();
    }
    // SAFETY: the union's only member is the plain-byte insn struct.
    let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
    let size = usize::from(insn.insn_size).min(MAX_INSN_BYTES);
    insn.insn_bytes[..size].to_vec()
}

impl InternalErrorInfo {
    /// Whether this is an emulation failure (suberror 1).
    pub fn is_emulation_failure(&self) -> bool {
        self.suberror == KVM_INTERNAL_ERROR_EMULATION
    }

    /// KVM's name for the suberror.
    pub fn suberror_name(&self) -> &'static str {
        match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected hardware exit",
            _ => "unknown suberror",
        }
    }

    /// The probed instruction the failing bytes look like, e.g. "popcnt".
    pub fn instruction(&self) -> Option<&'static str> {
        snippets::identify(&self.insn_bytes).map(|s| s.name)
    }

    /// What avoids the failure, for a report to the user; `None` if the
    /// instruction is not one the probe knows.
    pub fn hint(&self) -> Option<String> {
        let snippet = snippets::identify(&self.insn_bytes)?;
        let name = snippet.name;
        let text = match snippet.remedy {
            Remedy::Control => return None,
            Remedy::Hide(f) => format!(
                "this host's KVM cannot emulate `{name}` for a guest kernel; hiding the \
                 {f} feature avoids it (--cpu-hide {f}, or --cpu-quirks auto)"
            ),
            Remedy::InjectBreakpoint => format!(
                "this host's KVM cannot deliver `{name}` at CPL 0; the VMM injects #BP \
                 itself when host quirks are on (--cpu-quirks auto)"
            ),
            Remedy::SkipFwait => format!(
                "this host's KVM cannot emulate `{name}`; the VMM steps over it when host \
                 quirks are on (--cpu-quirks auto)"
            ),
            Remedy::Cmdline(switches) => format!(
                "this host's KVM cannot emulate `{name}`; the guest command-line switches \
                 `{}` keep Linux from using it",
                switches.join(" ")
            ),
            Remedy::Unavoidable => format!(
                "this host's KVM cannot emulate `{name}` for a guest kernel and no CPUID bit \
                 or kernel switch avoids it; the guest kernel must not use it at CPL 0"
            ),
        };
        Some(text)
    }
}

impl fmt::Display for InternalErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (suberror {})", self.suberror_name(), self.suberror)?;
        if !self.insn_bytes.is_empty() {
            f.write_str(", instruction bytes")?;
            for b in &self.insn_bytes {
                write!(f, " {b:02x}")?;
            }
        }
        if let Some(name) = self.instruction() {
            write!(f, " (`{name}`)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulation_failure_run(bytes: &[u8], flags: u64) -> kvm_run {
        // SAFETY: kvm_run is plain old data; all zeroes is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        run.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        // SAFETY: writing plain integers into the member being described.
        let failure = unsafe { &mut run.__bindgen_anon_1.emulation_failure };
        failure.suberror = KVM_INTERNAL_ERROR_EMULATION;
        failure.ndata = 8;
        failure.flags = flags;
        // SAFETY: the union's only member is the plain-byte insn struct.
        let insn = unsafe { &mut failure.__bindgen_anon_1.__bindgen_anon_1 };
        insn.insn_size = bytes.len() as u8;
        insn.insn_bytes[..bytes.len()].copy_from_slice(bytes);
        run
    }

    #[test]
    fn emulation_failure_with_bytes() {
        let flags = u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
        let run = emulation_failure_run(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3], flags);
        let info = describe_internal_error(&run);
        assert!(info.is_emulation_failure());
        assert_eq!(info.insn_bytes, vec![0xf3, 0x48, 0x0f, 0xb8, 0xc3]);
        assert_eq!(info.data.len(), 8);
        assert_eq!(info.data[0], flags);
        assert_eq!(info.instruction(), Some("popcnt"));
        assert!(info.hint().unwrap().contains("--cpu-hide popcnt"));
        let text = info.to_string();
        assert!(
            text.contains("f3 48 0f b8 c3") && text.contains("emulation failure"),
            "{text}"
        );
    }

    #[test]
    fn bytes_are_ignored_without_the_flag() {
        let info = describe_internal_error(&emulation_failure_run(&[0xcc], 0));
        assert!(info.insn_bytes.is_empty());
        assert_eq!(info.instruction(), None);
        assert_eq!(info.hint(), None);
    }

    #[test]
    fn other_suberrors_carry_no_bytes() {
        let mut run = emulation_failure_run(&[0xcc], 1);
        run.__bindgen_anon_1.internal.suberror = KVM_INTERNAL_ERROR_DELIVERY_EV;
        let info = describe_internal_error(&run);
        assert_eq!(info.suberror_name(), "event delivery failed");
        assert!(info.insn_bytes.is_empty());
    }
}
