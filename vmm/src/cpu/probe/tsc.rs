//! Whether this host's KVM applies the TSC offset a VMM sets.
//!
//! A restore writes the saved MSR_IA32_TSC back with KVM_SET_MSRS, and KVM
//! turns it into a TSC offset, so the guest's counter goes on from where it
//! was saved. A KVM that runs guest user code natively without programming
//! that offset lets the guest read the host's own counter instead: a guest
//! clocked by `tsc` then jumps forward by the time its snapshot sat on disk.
//! The check sets the guest's TSC to a small value in a scratch VM and reads
//! it back with `rdtsc`, at CPL 0 and at CPL 3.

use std::arch::x86_64::_rdtsc;

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use super::scratch::{Exit, ScratchVm, DONE_PORT};
use super::ProbeError;

/// The guest TSC the check sets: far below any host's counter after its
/// first minute of uptime, yet more than a second's worth of ticks above
/// zero. KVM takes a host write within a second's worth of ticks of the
/// previous one (zero, at vCPU creation) for an attempt to keep vCPUs in
/// step and then keeps the old offset; 2^36 ticks are 23 s at 3 GHz.
pub const TSC_SET_VALUE: u64 = 1 << 36;

/// How far (in TSC ticks) around the host's readings a guest value still
/// counts as the host's counter: about a second, for counters of different
/// host CPUs that are not perfectly in step.
const HOST_SLACK: u64 = 1 << 32;

/// Ticks the honoured window allows beyond the time the check took, for a
/// guest TSC that KVM scales to a slightly different rate.
const SET_SLACK: u64 = 1 << 24;

/// `rdtsc; shl rdx, 32; or rax, rdx; mov rsi, rax`: the counter in RSI.
const RDTSC_TO_RSI: [u8; 12] = [
    0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc6,
];

/// What one reading of the guest's TSC showed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum TscVerdict {
    /// The guest read the value set, plus the time the check took.
    Honoured,
    /// The guest read the host's own counter: the offset is ignored.
    ReadsHostTsc,
    /// The guest read neither the value set nor the host's counter.
    Unrelated,
    /// The guest code did not report a value.
    NotRead {
        /// The exit it ended in instead, described.
        exit: String,
    },
}

/// One reading: the guest's TSC at one privilege level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TscReading {
    /// The privilege level `rdtsc` ran at (0 or 3).
    pub cpl: u8,
    /// The value written to MSR_IA32_TSC.
    pub set: u64,
    /// What the guest's `rdtsc` returned, if it reported.
    pub guest: Option<u64>,
    /// The host's TSC just before the value was set.
    pub host_before: u64,
    /// The host's TSC just after the guest reported.
    pub host_after: u64,
    /// What the numbers mean.
    #[serde(flatten)]
    pub verdict: TscVerdict,
}

/// The result of the TSC offset check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TscOffsetCheck {
    /// One reading per privilege level, CPL 0 first.
    pub readings: Vec<TscReading>,
}

impl TscOffsetCheck {
    /// Whether a guest reads something other than the TSC the VMM sets, at
    /// any privilege level: then a restored guest's `tsc` clock is wrong.
    pub fn offset_ignored(&self) -> bool {
        self.readings
            .iter()
            .any(|r| matches!(r.verdict, TscVerdict::ReadsHostTsc | TscVerdict::Unrelated))
    }
}

/// Runs the check at CPL 0 and at CPL 3, each in a fresh scratch VM.
pub fn check_tsc_offset(kvm: &Kvm, cpuid: &CpuId) -> Result<TscOffsetCheck, ProbeError> {
    let readings = [0, 3]
        .into_iter()
        .map(|cpl| read_guest_tsc(kvm, cpuid, cpl))
        .collect::<Result<_, _>>()?;
    Ok(TscOffsetCheck { readings })
}

/// Sets the guest TSC to [`TSC_SET_VALUE`] and reads it back at `cpl`.
fn read_guest_tsc(kvm: &Kvm, cpuid: &CpuId, cpl: u8) -> Result<TscReading, ProbeError> {
    let code = [&RDTSC_TO_RSI[..], &super::done_sequence()].concat();
    let mut vm = ScratchVm::new(kvm, cpuid, &code, 0)?;
    if cpl == 3 {
        vm.enter_user_mode()?;
    }
    let host_before = host_tsc();
    vm.set_tsc(TSC_SET_VALUE)?;
    let exit = vm.run()?;
    let host_after = host_tsc();
    let guest = match exit {
        Exit::Out { port, .. } if port == DONE_PORT => Some(vm.regs()?.rsi),
        _ => None,
    };
    let verdict = match guest {
        Some(value) => classify(TSC_SET_VALUE, value, host_before, host_after),
        None => TscVerdict::NotRead {
            exit: format!("{exit:?}"),
        },
    };
    Ok(TscReading {
        cpl,
        set: TSC_SET_VALUE,
        guest,
        host_before,
        host_after,
        verdict,
    })
}

/// What a guest reading `guest` means, given the value `set` and the host's
/// counter before the set and after the read.
pub fn classify(set: u64, guest: u64, host_before: u64, host_after: u64) -> TscVerdict {
    let took = host_after.saturating_sub(host_before);
    let honoured_max = set
        .saturating_add(took.saturating_mul(2))
        .saturating_add(SET_SLACK);
    let host_min = host_before.saturating_sub(HOST_SLACK);
    let host_max = host_after.saturating_add(HOST_SLACK);
    if (set..=honoured_max).contains(&guest) {
        TscVerdict::Honoured
    } else if (host_min..=host_max).contains(&guest) {
        TscVerdict::ReadsHostTsc
    } else {
        TscVerdict::Unrelated
    }
}

/// The host's own time-stamp counter.
fn host_tsc() -> u64 {
    // SAFETY: `rdtsc` only reads the counter; every x86-64 CPU has it and
    // Linux leaves it enabled for user space.
    unsafe { _rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::cpuid::guest_cpuid;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    const GHZ3: u64 = 3_000_000_000;

    #[test]
    fn the_value_set_plus_elapsed_time_is_honoured() {
        let (before, after) = (1000 * GHZ3, 1000 * GHZ3 + GHZ3 / 1000);
        let v = classify(TSC_SET_VALUE, TSC_SET_VALUE + GHZ3 / 2000, before, after);
        assert_eq!(v, TscVerdict::Honoured);
    }

    #[test]
    fn the_hosts_counter_means_the_offset_is_ignored() {
        let (before, after) = (1000 * GHZ3, 1000 * GHZ3 + GHZ3 / 1000);
        let v = classify(TSC_SET_VALUE, before + GHZ3 / 2000, before, after);
        assert_eq!(v, TscVerdict::ReadsHostTsc);
        // A little behind the host's reading: another CPU's counter.
        assert_eq!(
            classify(TSC_SET_VALUE, before - 1000, before, after),
            TscVerdict::ReadsHostTsc
        );
    }

    #[test]
    fn anything_else_is_unrelated() {
        let (before, after) = (1000 * GHZ3, 1000 * GHZ3 + GHZ3 / 1000);
        for guest in [0, TSC_SET_VALUE - 1, 1 << 40, 100_000 * GHZ3] {
            assert_eq!(
                classify(TSC_SET_VALUE, guest, before, after),
                TscVerdict::Unrelated,
                "{guest}"
            );
        }
    }

    #[test]
    fn only_measured_mismatches_count_as_ignored() {
        let reading = |verdict| TscReading {
            cpl: 3,
            set: TSC_SET_VALUE,
            guest: None,
            host_before: 0,
            host_after: 0,
            verdict,
        };
        let check = |v: TscVerdict| TscOffsetCheck {
            readings: vec![reading(TscVerdict::Honoured), reading(v)],
        };
        assert!(!check(TscVerdict::Honoured).offset_ignored());
        let not_read = TscVerdict::NotRead { exit: "Hlt".into() };
        assert!(!check(not_read).offset_ignored());
        assert!(check(TscVerdict::ReadsHostTsc).offset_ignored());
        assert!(check(TscVerdict::Unrelated).offset_ignored());
        assert!(!TscOffsetCheck::default().offset_ignored());
    }

    #[test]
    fn real_kvm_reports_the_guest_tsc_at_both_levels() {
        let kvm = Kvm::new().expect("this test needs a usable /dev/kvm; it could not be opened");
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let cpuid = guest_cpuid(&supported, 0, 1, &[]);
        let check = check_tsc_offset(&kvm, &cpuid).expect("the TSC check failed");
        for r in &check.readings {
            eprintln!(
                "CPL {}: set {} read {:?} host {}..{}: {:?}",
                r.cpl, r.set, r.guest, r.host_before, r.host_after, r.verdict
            );
        }
        assert_eq!(check.readings.len(), 2);
        for r in &check.readings {
            // Both levels must report a value, whatever the host does with it.
            let guest = r
                .guest
                .unwrap_or_else(|| panic!("CPL {}: {:?}", r.cpl, r.verdict));
            assert_eq!(
                r.verdict,
                classify(r.set, guest, r.host_before, r.host_after)
            );
            assert!(r.host_after >= r.host_before);
        }
        eprintln!("offset ignored: {}", check.offset_ignored());
    }
}
