//! The guest kernel command-line switches of the host decision, shaped to
//! what Linux actually reads, and their merge with the user's command line.
//!
//! Linux (6.1) looks `clearcpuid=` up once, early, and keeps only the last
//! one on the line, copied into a 128-byte buffer: whatever lies beyond 127
//! characters is cut without a word. So the VMM emits exactly one
//! `clearcpuid=`, at most [`CLEARCPUID_MAX`] characters long, with the
//! features that matter most to a kernel first, and says what did not fit.

use log::info;

use super::features::CpuFeature;
use super::quirks::HostQuirks;

/// The most characters of a `clearcpuid=` value Linux reads.
pub const CLEARCPUID_MAX: usize = 127;

const CLEARCPUID: &str = "clearcpuid=";
const CLOCKSOURCE: &str = "clocksource=";
/// The token after which the command line belongs to `init`.
const INIT_ARGS: &str = "--";

/// The order in which features claim room in `clearcpuid=`: first those a
/// Linux kernel itself runs at CPL 0 in its common paths (a failure there
/// stops the guest), then the string-copy ones (a speed matter), then other
/// instructions a kernel may pick at boot, then SIMD and crypto, which it
/// uses only in optional code. Features not listed come last.
const CLEARCPUID_ORDER: &[CpuFeature] = {
    use CpuFeature::*;
    &[
        Popcnt, Smap, Clwb, Invpcid, Pcid, Rdpid, Rdtscp, Movbe, Ssse3, Sse4_2, Sse4_1, Erms, Fsrm,
        Cx16, Fsgsbase, Rdrand, Rdseed, Clflushopt, Umip, Abm, Bmi1, Bmi2, Adx, Avx, Avx2, Avx512f,
        Fma, F16c, Aes, Pclmulqdq, ShaNi, Gfni, Vaes, Vpclmulqdq, Pku,
    ]
};

/// `features` in the order they claim room in `clearcpuid=`.
pub fn by_importance(features: &[CpuFeature]) -> Vec<CpuFeature> {
    let rank = |f: &CpuFeature| {
        CLEARCPUID_ORDER
            .iter()
            .position(|o| o == f)
            .unwrap_or(CLEARCPUID_ORDER.len())
    };
    let mut ordered = features.to_vec();
    ordered.sort_by_key(|f| (rank(f), *f));
    ordered
}

/// A `clearcpuid=` value cut to what Linux reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FittedClearcpuid {
    /// The names that fit, in order.
    pub kept: Vec<String>,
    /// The names that did not fit.
    pub dropped: Vec<String>,
}

impl FittedClearcpuid {
    /// The `clearcpuid=` switch, if any name fits.
    pub fn switch(&self) -> Option<String> {
        (!self.kept.is_empty()).then(|| format!("{CLEARCPUID}{}", self.kept.join(",")))
    }
}

/// Takes `names` in order, without repeats, as long as they fit in
/// [`CLEARCPUID_MAX`] characters; a name that does not fit is dropped and a
/// shorter one after it may still fit.
pub fn fit_clearcpuid<S: AsRef<str>>(names: &[S]) -> FittedClearcpuid {
    let mut fitted = FittedClearcpuid::default();
    let mut len = 0;
    for name in names.iter().map(AsRef::as_ref).filter(|n| !n.is_empty()) {
        if fitted.kept.iter().chain(&fitted.dropped).any(|n| n == name) {
            continue;
        }
        let needed = name.len() + usize::from(len > 0);
        if len + needed <= CLEARCPUID_MAX {
            len += needed;
            fitted.kept.push(name.to_string());
        } else {
            fitted.dropped.push(name.to_string());
        }
    }
    fitted
}

/// The `clearcpuid=` names for `features`, most important first, leaving
/// out those Linux clears anyway with one already named or with `noxsave`.
pub fn clearcpuid_names(features: &[CpuFeature], noxsave: bool) -> Vec<&'static str> {
    let mut cleared: Vec<CpuFeature> = Vec::new();
    if noxsave {
        cleared.push(CpuFeature::Xsave);
    }
    let mut names = Vec::new();
    for f in by_importance(features) {
        let Some(name) = f.clearcpuid_name() else {
            continue;
        };
        if !cleared
            .iter()
            .any(|c| *c == f || f.cleared_by_linux_with(*c))
        {
            cleared.push(f);
            names.push(name);
        }
    }
    names
}

/// Logs the names that did not fit, if any.
pub fn log_dropped(fitted: &FittedClearcpuid) {
    if !fitted.dropped.is_empty() {
        info!(
            "guest cmdline: Linux reads only {CLEARCPUID_MAX} characters of clearcpuid=; left \
             out: {} (the guest may use them)",
            fitted.dropped.join(",")
        );
    }
}

/// The user's command line `user` with the switches of `quirks` merged in:
/// one `clearcpuid=` holding the user's names first and then the VMM's,
/// cut to what Linux reads; the VMM's other switches unless the user already
/// has them (a `clocksource=` of the user's own wins); everything placed
/// before a `--` that starts `init`'s arguments.
pub fn merge_cmdline(user: &str, quirks: &HostQuirks) -> String {
    let tokens = split_params(user);
    let split = tokens
        .iter()
        .position(|t| t == INIT_ARGS)
        .unwrap_or(tokens.len());
    let (kernel, init) = tokens.split_at(split);
    let mut names: Vec<String> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    for token in kernel {
        match token.strip_prefix(CLEARCPUID) {
            Some(value) => names.extend(value.trim_matches('"').split(',').map(String::from)),
            None => out.push(token.clone()),
        }
    }
    for switch in &quirks.cmdline {
        if let Some(value) = switch.strip_prefix(CLEARCPUID) {
            names.extend(value.split(',').map(String::from));
        } else if !user_has(&out, switch) {
            out.push(switch.clone());
        }
    }
    let fitted = fit_clearcpuid(&names);
    log_dropped(&fitted);
    out.extend(fitted.switch());
    out.extend(init.iter().cloned());
    out.join(" ")
}

/// Whether the user's `params` already settle `switch`.
fn user_has(params: &[String], switch: &str) -> bool {
    if switch.starts_with(CLOCKSOURCE) {
        if let Some(own) = params.iter().find(|p| p.starts_with(CLOCKSOURCE)) {
            info!("guest cmdline: keeping the user's {own} instead of {switch}");
            return true;
        }
    }
    params.iter().any(|p| p == switch)
}

/// Splits a kernel command line into parameters at whitespace outside
/// double quotes, as Linux's `next_arg` does. Hand-written: the boot crates
/// build command lines but do not parse them.
fn split_params(line: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if !current.is_empty() {
                    params.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        params.push(current);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quirks(cmdline: &[&str]) -> HostQuirks {
        HostQuirks {
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            ..HostQuirks::default()
        }
    }

    #[test]
    fn every_nameable_feature_has_a_rank() {
        for f in CpuFeature::ALL {
            if f.clearcpuid_name().is_some() && *f != CpuFeature::Xsave {
                assert!(CLEARCPUID_ORDER.contains(f), "{f} has no place");
            }
        }
        for (i, f) in CLEARCPUID_ORDER.iter().enumerate() {
            assert!(!CLEARCPUID_ORDER[i + 1..].contains(f), "{f} listed twice");
        }
    }

    #[test]
    fn kernel_features_come_first_and_covered_ones_are_left_out() {
        use CpuFeature::*;
        let hide = [Aes, Avx2, Avx, Sse4_1, Popcnt, Erms, Smap, F16c];
        assert_eq!(
            clearcpuid_names(&hide, false),
            vec!["popcnt", "smap", "sse4_1", "erms", "avx", "f16c", "aes"]
        );
        // With noxsave, Linux drops AVX and its family by itself.
        assert_eq!(
            clearcpuid_names(&hide, true),
            vec!["popcnt", "smap", "sse4_1", "erms", "f16c", "aes"]
        );
    }

    #[test]
    fn the_value_is_cut_to_what_linux_reads() {
        let names: Vec<String> = (0..40).map(|i| format!("feature{i:02}")).collect();
        let fitted = fit_clearcpuid(&names);
        let switch = fitted.switch().unwrap();
        let value = switch.strip_prefix("clearcpuid=").unwrap();
        assert!(value.len() <= CLEARCPUID_MAX, "{}", value.len());
        // 9 characters and a comma each: 12 names make 119, a 13th makes 129.
        assert_eq!(fitted.kept, names[..12].to_vec());
        assert_eq!(fitted.dropped, names[12..].to_vec());

        // A shorter name after one that did not fit still gets in.
        let mut names = names[..12].to_vec();
        names.extend(["a_long_name".to_string(), "abm".to_string()]);
        let fitted = fit_clearcpuid(&names);
        assert_eq!(fitted.kept.last().map(String::as_str), Some("abm"));
        assert_eq!(fitted.dropped, vec!["a_long_name"]);
        assert_eq!(fitted.switch().unwrap().len(), "clearcpuid=".len() + 123);
    }

    #[test]
    fn nothing_to_clear_gives_no_switch() {
        assert_eq!(fit_clearcpuid::<&str>(&[]).switch(), None);
        assert_eq!(
            merge_cmdline("console=ttyS0", &quirks(&[])),
            "console=ttyS0"
        );
    }

    #[test]
    fn the_users_clearcpuid_is_merged_into_one() {
        let q = quirks(&["noxsave", "clearcpuid=popcnt,smap", "clocksource=kvm-clock"]);
        let merged = merge_cmdline(
            "console=ttyS0 clearcpuid=avx512f quiet clearcpuid=smap,rdrand",
            &q,
        );
        assert_eq!(
            merged,
            "console=ttyS0 quiet noxsave clocksource=kvm-clock \
             clearcpuid=avx512f,smap,rdrand,popcnt"
        );
        assert_eq!(merged.matches("clearcpuid=").count(), 1);
    }

    #[test]
    fn the_users_own_switches_win_and_init_args_stay_last() {
        let q = quirks(&["noxsave", "clearcpuid=popcnt", "clocksource=kvm-clock"]);
        let merged = merge_cmdline(
            "noxsave clocksource=hpet root=\"a b\" -- clearcpuid=x init-arg",
            &q,
        );
        assert_eq!(
            merged,
            "noxsave clocksource=hpet root=\"a b\" clearcpuid=popcnt -- clearcpuid=x init-arg"
        );
    }

    #[test]
    fn a_merged_value_that_is_too_long_keeps_the_users_names() {
        let user: Vec<String> = (0..12).map(|i| format!("feature{i:02}")).collect();
        let line = format!("clearcpuid={}", user.join(","));
        let merged = merge_cmdline(&line, &quirks(&["clearcpuid=sse4_2,popcnt,avx"]));
        // 119 characters of the user's, then ",sse4_2" makes 126: full.
        assert_eq!(merged, format!("{line},sse4_2"));
    }
}
