//! The guest's CPU as the VMM presents it: the CPUID each vCPU gets, the
//! start-up probe that finds which instructions this host's KVM cannot run
//! for a guest kernel, the decision that turns those findings into hidden
//! features and guest command-line switches, and the host fingerprint a
//! snapshot records.

pub mod cache;
pub mod cpuid;
pub mod features;
pub mod fingerprint;
pub mod guest_cmdline;
pub mod host;
pub mod probe;
pub mod quirks;

pub use cpuid::guest_cpuid;
pub use features::{CpuFeature, CpuidBit, CpuidReg};
pub use fingerprint::{check_cpuid_compatible, CpuidEntry, HostFingerprint, IncompatibleCpuid};
pub use probe::{describe_internal_error, InternalErrorInfo};
pub use quirks::{host_quirks, merge_cmdline, CpuOverrides, HostQuirks, QuirkError, QuirkMode};

/// The error of deciding the guest's CPU: see [`QuirkError`].
pub type Error = QuirkError;
