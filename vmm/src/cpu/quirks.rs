//! What the VMM does about this host's KVM: which features to hide in the
//! guest's CPUID, which switches to add to the guest kernel's command line,
//! and which failing instructions the vCPU loop works around itself.
//!
//! The decision comes from the start-up probe (cached per host), so a host
//! whose KVM runs every probed instruction gets an empty decision and the
//! guest sees the CPU unchanged.

use std::fmt;
use std::str::FromStr;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::cache::{CacheKey, ProbeCache};
use super::features::{with_dependents, CpuFeature, UnknownFeature};
pub use super::guest_cmdline::merge_cmdline;
use super::guest_cmdline::{clearcpuid_names, fit_clearcpuid, log_dropped};
use super::probe::snippets::{self, Remedy, Snippet};
use super::probe::{run_probe, ProbeError, ProbeOutcome, ProbeReport, ProbeResult};

/// The invalid-opcode exception.
const UD_VECTOR: u8 = 6;

/// The guest switch that makes Linux keep time with kvmclock, which KVM
/// moves with KVM_SET_CLOCK on a restore, instead of the TSC.
pub const KVM_CLOCK_SWITCH: &str = "clocksource=kvm-clock";

/// Features hidden on a host that emulates guest kernel code. With ERMS or
/// FSRM, Linux copies and clears memory with `rep movsb`/`rep stosb`, which
/// KVM's emulator runs one byte per iteration; without them it uses `rep
/// movsq`/`rep stosq`, eight times fewer iterations for `memcpy` and
/// `clear_page`.
const SLOW_WHEN_EMULATED: &[CpuFeature] = &[CpuFeature::Erms, CpuFeature::Fsrm];

/// KVM paravirtual features that work through hypercalls. On a host that
/// emulates guest kernel code, a hypercall never completes (the guest sat
/// on a `vmcall` for minutes), so a guest with more than one vCPU hung in
/// its first PV IPI or spinlock kick; without them Linux uses the APIC.
const HYPERCALLS_WHEN_EMULATED: &[CpuFeature] = &[
    CpuFeature::KvmPvUnhalt,
    CpuFeature::KvmPvSendIpi,
    CpuFeature::KvmPvSchedYield,
];

/// Errors of deciding the host quirks.
#[derive(Debug, thiserror::Error)]
pub enum QuirkError {
    /// KVM would not say which CPUID it supports.
    #[error("KVM_GET_SUPPORTED_CPUID failed while identifying the host for the CPU probe")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// The probe could not run.
    #[error("the CPU probe could not run; pass --cpu-quirks off to skip it")]
    Probe(#[from] ProbeError),
    /// An unknown `--cpu-quirks` value.
    #[error("unknown CPU quirk mode {0:?}: use auto, off or reprobe")]
    UnknownMode(String),
}

/// Whether and how to look for host quirks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuirkMode {
    /// Use cached probe results for this host, probing if there are none.
    #[default]
    Auto,
    /// Do not probe; apply only the user's overrides.
    Off,
    /// Probe again even if results are cached, and cache the new ones.
    Reprobe,
}

impl FromStr for QuirkMode {
    type Err = QuirkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(QuirkMode::Auto),
            "off" => Ok(QuirkMode::Off),
            "reprobe" => Ok(QuirkMode::Reprobe),
            other => Err(QuirkError::UnknownMode(other.to_string())),
        }
    }
}

/// The user's own say: features to hide in any case, features to keep even
/// if the probe would hide them. Keeping a feature does not keep one that
/// depends on a hidden feature (AVX goes with XSAVE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuOverrides {
    /// Extra features to hide (`--cpu-hide`).
    pub hide: Vec<CpuFeature>,
    /// Features never to hide because of the probe.
    pub keep: Vec<CpuFeature>,
}

impl CpuOverrides {
    /// Overrides hiding the features named in `hide` (Linux `clearcpuid=`
    /// names; an entry may itself be a comma-separated list).
    pub fn from_names<S: AsRef<str>>(hide: &[S]) -> Result<Self, UnknownFeature> {
        let hide = hide
            .iter()
            .flat_map(|s| s.as_ref().split(','))
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<CpuFeature>, _>>()?;
        Ok(CpuOverrides {
            hide,
            keep: Vec::new(),
        })
    }
}

/// What the VMM does about this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostQuirks {
    /// Features to hide in every vCPU's CPUID (pass to `guest_cpuid`, which
    /// also hides their dependents).
    pub hide: Vec<CpuFeature>,
    /// Switches for the guest kernel's command line, with at most one
    /// `clearcpuid=`; [`merge_cmdline`] merges them into the user's.
    pub cmdline: Vec<String>,
    /// The vCPU loop injects #BP when KVM fails to emulate `int3` at CPL 0.
    pub inject_int3_bp: bool,
    /// The vCPU loop steps over an `fwait` KVM fails to emulate.
    pub skip_fwait: bool,
    /// Failing instructions nothing here avoids (base x86-64 ones).
    pub unavoidable: Vec<String>,
}

impl HostQuirks {
    /// Whether the VMM changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == HostQuirks::default()
    }

    /// The decision in one line, as logged ("hiding cx16 ...; guest cmdline += ...").
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// The command-line switches joined with spaces.
    pub fn cmdline_string(&self) -> String {
        self.cmdline.join(" ")
    }
}

impl fmt::Display for HostQuirks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        if !self.hide.is_empty() {
            let names: Vec<&str> = self.hide.iter().map(|f| f.name()).collect();
            parts.push(format!("hiding {}", names.join(" ")));
        }
        if !self.cmdline.is_empty() {
            parts.push(format!("guest cmdline += {}", self.cmdline_string()));
        }
        let mut vmm = Vec::new();
        if self.inject_int3_bp {
            vmm.push("inject #BP for int3");
        }
        if self.skip_fwait {
            vmm.push("step over fwait");
        }
        if !vmm.is_empty() {
            parts.push(format!("the VMM will {}", vmm.join(" and ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Decides the quirks of this host, probing it or reading the cached probe,
/// and applies the user's overrides.
pub fn host_quirks(
    kvm: &Kvm,
    mode: QuirkMode,
    overrides: &CpuOverrides,
) -> Result<HostQuirks, QuirkError> {
    let report = match mode {
        QuirkMode::Off => None,
        mode => Some(probe_report(kvm, mode, ProbeCache::user_default())?),
    };
    let quirks = decide(report.as_ref(), overrides);
    info!("host quirks: {quirks}");
    if !quirks.unavoidable.is_empty() {
        warn!(
            "host quirks: this host's KVM cannot emulate {} at CPL 0 and nothing hides \
             them; a guest kernel that runs them will stop with an emulation failure",
            quirks.unavoidable.join(" ")
        );
    }
    Ok(quirks)
}

/// The cached probe report of this host, or a fresh one (then cached).
fn probe_report(
    kvm: &Kvm,
    mode: QuirkMode,
    cache: Option<ProbeCache>,
) -> Result<ProbeReport, QuirkError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(QuirkError::SupportedCpuid)?;
    let key = CacheKey::for_host(&supported);
    let cached = match (&cache, mode) {
        (Some(cache), QuirkMode::Auto) => cache.load(&key),
        _ => None,
    };
    if let Some(report) = cached {
        info!("host quirks: using the cached CPU probe of this host");
        return Ok(report);
    }
    let report = run_probe(kvm)?;
    match cache.map(|c| c.store(&key, &report)) {
        Some(Ok(path)) => info!("host quirks: CPU probe cached in {}", path.display()),
        Some(Err(e)) => warn!("host quirks: {e}; the probe will run again next time"),
        None => warn!("host quirks: neither XDG_CACHE_HOME nor HOME is set; not caching"),
    }
    Ok(report)
}

/// Turns probe results (`None`: not probed) and overrides into a decision.
pub fn decide(report: Option<&ProbeReport>, overrides: &CpuOverrides) -> HostQuirks {
    let mut quirks = HostQuirks::default();
    let mut extra_switches: Vec<&str> = Vec::new();
    for result in report.into_iter().flat_map(|r| &r.results) {
        // A result of another probe version has no snippet: skip it.
        if let Some(snippet) = snippets::by_name(&result.name) {
            quirks.take(result, snippet, &mut extra_switches);
        }
    }
    if report.is_some_and(kernel_code_is_emulated) {
        quirks.hide.extend(SLOW_WHEN_EMULATED);
        quirks.hide.extend(HYPERCALLS_WHEN_EMULATED);
    }
    quirks.hide.retain(|f| !overrides.keep.contains(f));
    quirks.hide.extend(&overrides.hide);
    quirks.hide.sort();
    quirks.hide.dedup();
    quirks.cmdline = cmdline_switches(&quirks.hide, report);
    for switch in extra_switches {
        if !quirks.cmdline.iter().any(|s| s == switch) {
            quirks.cmdline.push(switch.to_string());
        }
    }
    if report.is_some_and(|r| r.tsc_offset.offset_ignored()) {
        info!(
            "host quirks: the host ignores the guest TSC offset: the guest uses kvm-clock so \
             its time survives a restore"
        );
        quirks.cmdline.push(KVM_CLOCK_SWITCH.to_string());
    }
    quirks
}

/// Whether KVM runs guest kernel code through its instruction emulator:
/// only an emulator fails to emulate an instruction.
fn kernel_code_is_emulated(report: &ProbeReport) -> bool {
    report.results.iter().any(|r| match &r.outcome {
        ProbeOutcome::Failed { error } => error.is_emulation_failure(),
        _ => false,
    })
}

impl HostQuirks {
    /// Takes one probe result into account.
    fn take(&mut self, result: &ProbeResult, snippet: &Snippet, switches: &mut Vec<&str>) {
        match (&result.outcome, snippet.remedy) {
            (ProbeOutcome::Failed { .. } | ProbeOutcome::Unexpected { .. }, remedy) => {
                self.apply(remedy, snippet.name, switches)
            }
            // The host CPU has it (else the probe is skipped) but the guest
            // gets #UD: the guest must not believe it has the feature.
            (ProbeOutcome::Faulted { vector: UD_VECTOR }, Remedy::Hide(f)) => self.hide.push(f),
            _ => {}
        }
        if result.workaround_works == Some(false) {
            // Still worth trying in the guest, but say it did not help here.
            let name = snippet.name;
            self.unavoidable
                .push(format!("{name} (the VMM's workaround failed in the probe)"));
        }
    }

    fn apply(&mut self, remedy: Remedy, name: &str, switches: &mut Vec<&str>) {
        match remedy {
            Remedy::Hide(f) => self.hide.push(f),
            Remedy::InjectBreakpoint => {
                self.inject_int3_bp = true;
                // Linux patches these paravirtual features in with int3
                // breakpoints that a timer tick can then hit.
                self.hide.push(CpuFeature::KvmStealTime);
                self.hide.push(CpuFeature::KvmClockStable);
            }
            Remedy::SkipFwait => self.skip_fwait = true,
            Remedy::Cmdline(extra) => switches.extend(extra),
            Remedy::Unavoidable => self.unavoidable.push(name.to_string()),
            Remedy::Control => {}
        }
    }
}

/// The switches that hide `hide` from a guest kernel where CPUID cannot.
///
/// KVM_SET_CPUID2 hides a bit only where KVM itself controls it; the probe's
/// masking check lists the features that reached the guest anyway. Without
/// that check (not probed, or the check failed) every hidden feature gets its
/// switch, so a hide the user asked for always holds.
fn cmdline_switches(hide: &[CpuFeature], report: Option<&ProbeReport>) -> Vec<String> {
    let leaked = |f: &CpuFeature| match report {
        Some(r) if r.cpuid_mask.error.is_none() => r.cpuid_mask.leaked.contains(f),
        _ => true,
    };
    let all = with_dependents(hide);
    let mut switches = Vec::new();
    let noxsave = all.contains(&CpuFeature::Xsave) && leaked(&CpuFeature::Xsave);
    if noxsave {
        switches.push("noxsave".to_string());
    }
    let leaking: Vec<CpuFeature> = all
        .iter()
        .copied()
        .filter(|f| *f != CpuFeature::Xsave && leaked(f))
        .collect();
    let fitted = fit_clearcpuid(&clearcpuid_names(&leaking, noxsave));
    log_dropped(&fitted);
    switches.extend(fitted.switch());
    switches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::probe::snippets::SNIPPETS;
    use crate::cpu::probe::tsc::TSC_SET_VALUE;
    use crate::cpu::probe::{
        CpuidMaskCheck, InternalErrorInfo, TscOffsetCheck, TscReading, TscVerdict, PROBE_VERSION,
    };

    /// A report where `failing` fail, everything else passes, and `leaked`
    /// reach the guest despite KVM_SET_CPUID2.
    fn report(failing: &[&str], leaked: &[CpuFeature]) -> ProbeReport {
        let results = SNIPPETS
            .iter()
            .map(|s| ProbeResult {
                name: s.name.to_string(),
                insn: s.insn.to_vec(),
                outcome: if failing.contains(&s.name) {
                    ProbeOutcome::Failed {
                        error: InternalErrorInfo {
                            suberror: 1,
                            insn_bytes: s.insn.to_vec(),
                            data: vec![1],
                        },
                    }
                } else {
                    ProbeOutcome::Passed
                },
                workaround_works: failing.contains(&s.name).then_some(true),
            })
            .collect();
        ProbeReport {
            version: PROBE_VERSION,
            results,
            cpuid_mask: CpuidMaskCheck {
                leaked: leaked.to_vec(),
                error: None,
            },
            tsc_offset: TscOffsetCheck::default(),
            duration_us: 1,
        }
    }

    #[test]
    fn a_clean_host_changes_nothing() {
        let quirks = decide(Some(&report(&[], &[])), &CpuOverrides::default());
        assert!(quirks.is_empty(), "{quirks:?}");
        assert_eq!(quirks.to_string(), "none");
        assert!(decide(None, &CpuOverrides::default()).is_empty());
    }

    #[test]
    fn failures_become_hidden_features_switches_and_workarounds() {
        let failing = [
            "cmpxchg16b",
            "xsave",
            "popcnt",
            "int3",
            "fwait",
            "verw",
            "emms",
        ];
        let leaked = [
            CpuFeature::Xsave,
            CpuFeature::Avx,
            CpuFeature::Popcnt,
            CpuFeature::Erms,
        ];
        let quirks = decide(Some(&report(&failing, &leaked)), &CpuOverrides::default());

        let hidden = [
            CpuFeature::Cx16,
            CpuFeature::Popcnt,
            CpuFeature::Xsave,
            CpuFeature::Erms,
            CpuFeature::Fsrm,
            CpuFeature::KvmStealTime,
            CpuFeature::KvmClockStable,
            CpuFeature::KvmPvUnhalt,
            CpuFeature::KvmPvSendIpi,
            CpuFeature::KvmPvSchedYield,
        ];
        let mut expected = hidden.to_vec();
        expected.sort();
        assert_eq!(quirks.hide, expected);
        // cx16 and fsrm did not leak: CPUID hides them, no switch is needed;
        // noxsave makes Linux drop AVX by itself.
        assert_eq!(
            quirks.cmdline,
            vec![
                "noxsave",
                "clearcpuid=popcnt,erms",
                "mds=off",
                "tsx_async_abort=off",
                "mmio_stale_data=off",
                "reg_file_data_sampling=off",
            ]
        );
        assert!(quirks.inject_int3_bp && quirks.skip_fwait);
        assert_eq!(quirks.unavoidable, vec!["emms"]);
        let line = quirks.to_string();
        assert!(line.contains("hiding cx16 popcnt xsave"), "{line}");
        assert!(
            line.contains("inject #BP for int3 and step over fwait"),
            "{line}"
        );
    }

    #[test]
    fn a_workaround_that_failed_in_the_probe_is_reported() {
        let mut r = report(&["int3"], &[]);
        r.results
            .iter_mut()
            .find(|r| r.name == "int3")
            .unwrap()
            .workaround_works = Some(false);
        let quirks = decide(Some(&r), &CpuOverrides::default());
        assert!(quirks.inject_int3_bp);
        assert_eq!(quirks.unavoidable.len(), 1);
        assert!(
            quirks.unavoidable[0].starts_with("int3 "),
            "{:?}",
            quirks.unavoidable
        );
    }

    #[test]
    fn overrides_hide_more_and_keep_some() {
        let overrides = CpuOverrides {
            hide: vec![CpuFeature::Rdrand],
            keep: vec![CpuFeature::Popcnt],
        };
        let quirks = decide(Some(&report(&["popcnt", "clac"], &[])), &overrides);
        let expected = [
            CpuFeature::Rdrand,
            CpuFeature::Erms,
            CpuFeature::Smap,
            CpuFeature::Fsrm,
            CpuFeature::KvmPvUnhalt,
            CpuFeature::KvmPvSendIpi,
            CpuFeature::KvmPvSchedYield,
        ];
        assert_eq!(quirks.hide, expected);
        assert!(
            quirks.cmdline.is_empty(),
            "nothing leaked: {:?}",
            quirks.cmdline
        );

        // Not probed: a hide the user asked for gets its switch too.
        let unprobed = decide(None, &overrides);
        assert_eq!(unprobed.hide, vec![CpuFeature::Rdrand]);
        assert_eq!(unprobed.cmdline, vec!["clearcpuid=rdrand"]);
    }

    fn set_outcome(r: &mut ProbeReport, name: &str, outcome: ProbeOutcome) {
        let result = r.results.iter_mut().find(|r| r.name == name).unwrap();
        result.outcome = outcome;
    }

    #[test]
    fn skips_and_other_faults_change_nothing() {
        let mut r = report(&[], &[]);
        set_outcome(
            &mut r,
            "popcnt",
            ProbeOutcome::Skipped {
                reason: "no".into(),
            },
        );
        set_outcome(&mut r, "movbe", ProbeOutcome::Faulted { vector: 13 });
        set_outcome(&mut r, "emms", ProbeOutcome::Faulted { vector: 6 });
        assert!(decide(Some(&r), &CpuOverrides::default()).is_empty());
    }

    #[test]
    fn an_invalid_opcode_hides_the_feature() {
        let mut r = report(&[], &[CpuFeature::Movbe]);
        set_outcome(&mut r, "movbe", ProbeOutcome::Faulted { vector: 6 });
        set_outcome(&mut r, "rdpid", ProbeOutcome::Faulted { vector: 6 });
        let quirks = decide(Some(&r), &CpuOverrides::default());
        assert_eq!(quirks.hide, vec![CpuFeature::Movbe, CpuFeature::Rdpid]);
        assert_eq!(quirks.cmdline, vec!["clearcpuid=movbe"]);
    }

    fn tsc_check(cpl3: TscVerdict) -> TscOffsetCheck {
        let reading = |cpl, verdict| TscReading {
            cpl,
            set: TSC_SET_VALUE,
            guest: Some(TSC_SET_VALUE),
            host_before: 1 << 40,
            host_after: (1 << 40) + 1000,
            verdict,
        };
        TscOffsetCheck {
            readings: vec![reading(0, TscVerdict::Honoured), reading(3, cpl3)],
        }
    }

    #[test]
    fn an_ignored_tsc_offset_puts_the_guest_on_kvm_clock() {
        let mut r = report(&[], &[]);
        r.tsc_offset = tsc_check(TscVerdict::ReadsHostTsc);
        let quirks = decide(Some(&r), &CpuOverrides::default());
        assert_eq!(quirks.cmdline, vec![KVM_CLOCK_SWITCH]);
        assert!(quirks.hide.is_empty(), "{quirks:?}");
        assert!(quirks.to_string().contains("clocksource=kvm-clock"));
    }

    #[test]
    fn an_applied_or_unmeasured_tsc_offset_adds_nothing() {
        let mut r = report(&[], &[]);
        r.tsc_offset = tsc_check(TscVerdict::Honoured);
        assert!(decide(Some(&r), &CpuOverrides::default()).is_empty());
        r.tsc_offset = tsc_check(TscVerdict::NotRead { exit: "Hlt".into() });
        assert!(decide(Some(&r), &CpuOverrides::default()).is_empty());
    }

    #[test]
    fn an_emulating_host_hides_the_byte_wise_string_features() {
        let leaked = [CpuFeature::Erms, CpuFeature::Fsrm];
        let quirks = decide(Some(&report(&["emms"], &leaked)), &CpuOverrides::default());
        assert_eq!(
            quirks.hide,
            vec![
                CpuFeature::Erms,
                CpuFeature::Fsrm,
                CpuFeature::KvmPvUnhalt,
                CpuFeature::KvmPvSendIpi,
                CpuFeature::KvmPvSchedYield
            ]
        );
        assert_eq!(quirks.cmdline, vec!["clearcpuid=erms,fsrm"]);

        // Not an emulation failure (another suberror): no sign of an emulator.
        let mut r = report(&["emms"], &leaked);
        let emms = r.results.iter_mut().find(|x| x.name == "emms").unwrap();
        if let ProbeOutcome::Failed { error } = &mut emms.outcome {
            error.suberror = 3;
        }
        let quirks = decide(Some(&r), &CpuOverrides::default());
        assert!(quirks.hide.is_empty(), "{quirks:?}");

        // The user can keep them.
        let mut kept = leaked.to_vec();
        kept.extend(HYPERCALLS_WHEN_EMULATED);
        let keep = CpuOverrides {
            hide: Vec::new(),
            keep: kept,
        };
        let quirks = decide(Some(&report(&["emms"], &leaked)), &keep);
        assert!(
            quirks.hide.is_empty() && quirks.cmdline.is_empty(),
            "{quirks:?}"
        );
    }

    #[test]
    fn one_clearcpuid_that_linux_reads_whole_kernel_features_first() {
        // Everything fails and everything leaks: far more than 127 characters.
        let names: Vec<&str> = SNIPPETS.iter().map(|s| s.name).collect();
        let r = report(&names, CpuFeature::ALL);
        let quirks = decide(Some(&r), &CpuOverrides::default());
        let clear: Vec<&String> = quirks
            .cmdline
            .iter()
            .filter(|s| s.starts_with("clearcpuid="))
            .collect();
        assert_eq!(clear.len(), 1, "{:?}", quirks.cmdline);
        let value = clear[0].strip_prefix("clearcpuid=").unwrap();
        assert!(value.len() <= 127, "{} characters: {value}", value.len());
        assert!(value.starts_with("popcnt,smap,"), "{value}");
        for kernel in ["invpcid", "rdtscp", "sse4_2", "erms", "fsrm", "cx16"] {
            assert!(value.split(',').any(|n| n == kernel), "{kernel} in {value}");
        }
        // noxsave covers AVX and its family, so they are not spelt out.
        assert!(quirks.cmdline.iter().any(|s| s == "noxsave"));
        assert!(!value.split(',').any(|n| n == "avx2"), "{value}");
    }

    fn temp_cache(name: &str) -> ProbeCache {
        let dir = std::env::temp_dir().join(format!("hiber-quirks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ProbeCache::at(dir)
    }

    #[test]
    fn real_probe_is_cached_and_reprobed() {
        let kvm = Kvm::new().expect("this test needs a usable /dev/kvm; it could not be opened");
        let cache = temp_cache("real");
        let first = probe_report(&kvm, QuirkMode::Auto, Some(cache.clone())).unwrap();
        let again = probe_report(&kvm, QuirkMode::Auto, Some(cache.clone())).unwrap();
        assert_eq!(again, first, "the second run should come from the cache");
        let fresh = probe_report(&kvm, QuirkMode::Reprobe, Some(cache.clone())).unwrap();
        let outcomes =
            |r: &ProbeReport| r.results.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
        assert_eq!(outcomes(&fresh), outcomes(&first));
        assert_eq!(
            probe_report(&kvm, QuirkMode::Auto, Some(cache.clone())).unwrap(),
            fresh
        );

        let quirks = decide(Some(&fresh), &CpuOverrides::default());
        eprintln!("host quirks: {quirks}");
        // Whatever this host is, each failure shows up in the decision.
        for failure in fresh.failures() {
            let name = failure.name.as_str();
            let held = match snippets::by_name(name).unwrap().remedy {
                Remedy::Hide(f) => quirks.hide.contains(&f),
                Remedy::InjectBreakpoint => {
                    quirks.inject_int3_bp && failure.workaround_works.is_some()
                }
                Remedy::SkipFwait => quirks.skip_fwait && failure.workaround_works.is_some(),
                Remedy::Cmdline(s) => s.iter().all(|s| quirks.cmdline.iter().any(|c| c == s)),
                Remedy::Unavoidable => quirks.unavoidable.iter().any(|u| u == name),
                Remedy::Control => false,
            };
            assert!(
                held,
                "{name} failed but the decision ignores it: {quirks:?}"
            );
        }
        std::fs::remove_dir_all(cache.dir()).unwrap();
    }

    #[test]
    fn overrides_parse_from_cli_names() {
        let o = CpuOverrides::from_names(&["avx2,popcnt", "lzcnt"]).unwrap();
        assert_eq!(
            o.hide,
            vec![CpuFeature::Avx2, CpuFeature::Popcnt, CpuFeature::Abm]
        );
        assert!(CpuOverrides::from_names(&["avx9"]).is_err());
        assert!(CpuOverrides::from_names::<&str>(&[])
            .unwrap()
            .hide
            .is_empty());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<QuirkMode>().unwrap(), QuirkMode::Auto);
        assert_eq!("off".parse::<QuirkMode>().unwrap(), QuirkMode::Off);
        assert_eq!("reprobe".parse::<QuirkMode>().unwrap(), QuirkMode::Reprobe);
        assert!("sometimes".parse::<QuirkMode>().is_err());
    }
}
