//! The per-host cache of probe results: one JSON file per host identity
//! under `$XDG_CACHE_HOME/hiber/` (or `$HOME/.cache/hiber/`).
//!
//! A file is reused only if the key stored inside it equals this host's key
//! exactly; a corrupt or mismatching file is ignored and later overwritten.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kvm_bindings::CpuId;
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use super::cpuid::guest_cpuid;
use super::fingerprint::{cpuid_entries, CpuidEntry};
use super::host::{host_cpu, kernel_release, kvm_modules};
use super::probe::{ProbeReport, PROBE_VERSION};

/// Everything the probe's results depend on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The probe's own version.
    pub probe_version: u32,
    /// Host CPU vendor.
    pub vendor: String,
    /// Host CPU family.
    pub family: u32,
    /// Host CPU model.
    pub model: u32,
    /// Host CPU stepping.
    pub stepping: u32,
    /// A hash of the CPUID KVM supports.
    pub supported_cpuid: String,
    /// The host kernel release.
    pub kernel_release: String,
    /// The loaded KVM modules.
    pub kvm_modules: Vec<String>,
}

impl CacheKey {
    /// The key of this host, given the CPUID its KVM supports.
    pub fn for_host(supported: &CpuId) -> Self {
        let cpu = host_cpu();
        CacheKey {
            probe_version: PROBE_VERSION,
            vendor: cpu.vendor,
            family: cpu.family,
            model: cpu.model,
            stepping: cpu.stepping,
            supported_cpuid: cpuid_hash(&cpuid_entries(&without_apic_ids(supported))),
            kernel_release: kernel_release(),
            kvm_modules: kvm_modules(),
        }
    }

    /// A short hex digest of the whole key, used to name its file.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", fnv1a(&json))
    }
}

/// `supported` with the APIC ids of whichever host CPU answered the ioctl
/// replaced by fixed ones, so the key does not depend on where it ran.
fn without_apic_ids(supported: &CpuId) -> CpuId {
    guest_cpuid(supported, 0, 1, &[])
}

fn cpuid_hash(entries: &[CpuidEntry]) -> String {
    let words: Vec<u8> = entries
        .iter()
        .flat_map(|e| [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
        .flat_map(u32::to_le_bytes)
        .collect();
    format!("{:016x}", fnv1a(&words))
}

/// 64-bit FNV-1a. Hand-written because the crate has no hash dependency and
/// this only names cache files: a collision is caught by the full key stored
/// in the file, and the hash must stay the same across Rust releases (which
/// std's `DefaultHasher` does not promise).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The on-disk form: the key, then what the probe found.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    report: ProbeReport,
}

/// Errors of writing the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory or file could not be written.
    #[error("could not write the CPU probe cache at {path}; check its permissions")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A directory of cached probe reports.
#[derive(Clone, Debug)]
pub struct ProbeCache {
    dir: PathBuf,
}

impl ProbeCache {
    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        ProbeCache { dir: dir.into() }
    }

    /// The user's cache: `$XDG_CACHE_HOME/hiber`, else `$HOME/.cache/hiber`;
    /// `None` if neither variable names an absolute directory.
    pub fn user_default() -> Option<Self> {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let base =
            absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".cache")));
        base.map(|b| ProbeCache::at(b.join("hiber")))
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the report for `key`.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("cpu-probe-{}.json", key.digest()))
    }

    /// The cached report for `key`, if a valid one exists.
    pub fn load(&self, key: &CacheKey) -> Option<ProbeReport> {
        let path = self.path(key);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) => {
                debug!("no CPU probe cache at {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<CacheFile>(&text) {
            Ok(file) if file.key == *key && file.report.version == PROBE_VERSION => {
                Some(file.report)
            }
            Ok(file) if file.report.version != PROBE_VERSION => {
                info!(
                    "CPU probe cache {} is from probe version {}, this is {}; probing again",
                    path.display(),
                    file.report.version,
                    PROBE_VERSION
                );
                None
            }
            Ok(_) => {
                warn!(
                    "ignoring CPU probe cache {}: made for another host",
                    path.display()
                );
                None
            }
            Err(e) => {
                warn!("ignoring corrupt CPU probe cache {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes `report` for `key`, replacing any older file atomically.
    pub fn store(&self, key: &CacheKey, report: &ProbeReport) -> Result<PathBuf, CacheError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Write { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(write_err(&self.dir))?;
        let path = self.path(key);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let file = CacheFile {
            key: key.clone(),
            report: report.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| write_err(&tmp)(e.into()))?;
        fs::write(&tmp, json).map_err(write_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(write_err(&path))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::cpuid::tests::synthetic_supported;
    use crate::cpu::probe::{CpuidMaskCheck, ProbeOutcome, ProbeResult};

    fn report() -> ProbeReport {
        ProbeReport {
            version: PROBE_VERSION,
            results: vec![ProbeResult {
                name: "nop".into(),
                insn: vec![0x90],
                outcome: ProbeOutcome::Passed,
                workaround_works: None,
            }],
            cpuid_mask: CpuidMaskCheck::default(),
            tsc_offset: Default::default(),
            duration_us: 1234,
        }
    }

    fn temp_cache(name: &str) -> ProbeCache {
        let dir = std::env::temp_dir().join(format!("hiber-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ProbeCache::at(dir)
    }

    #[test]
    fn key_changes_with_each_input() {
        let base = CacheKey::for_host(&synthetic_supported());
        let changed = |change: fn(&mut CacheKey)| {
            let mut key = base.clone();
            change(&mut key);
            key
        };
        let variants = [
            changed(|k| k.probe_version += 1),
            changed(|k| k.model += 1),
            changed(|k| k.stepping += 1),
            changed(|k| k.kernel_release = "0.0.1".into()),
            changed(|k| k.kvm_modules = vec!["kvm_amd".into(), "kvm_intel".into()]),
            changed(|k| k.vendor = "HygonGenuine".into()),
        ];
        for v in &variants {
            assert_ne!(v.digest(), base.digest(), "{v:?}");
        }
        let mut cpuid = synthetic_supported();
        cpuid.as_mut_slice()[1].ecx &= !1;
        assert_ne!(CacheKey::for_host(&cpuid).digest(), base.digest());
        assert_eq!(CacheKey::for_host(&synthetic_supported()), base);
        // The APIC id of the host CPU that answered does not matter.
        let mut other_cpu = synthetic_supported();
        other_cpu.as_mut_slice()[1].ebx ^= 0x0700_0000;
        assert_eq!(CacheKey::for_host(&other_cpu), base);
    }

    #[test]
    fn store_then_load_round_trips() {
        let cache = temp_cache("round-trip");
        let key = CacheKey::for_host(&synthetic_supported());
        assert!(cache.load(&key).is_none());
        let path = cache.store(&key, &report()).unwrap();
        assert!(path.starts_with(&cache.dir));
        assert_eq!(cache.load(&key), Some(report()));
        fs::remove_dir_all(&cache.dir).unwrap();
    }

    #[test]
    fn corrupt_or_foreign_files_are_ignored_and_rewritten() {
        let cache = temp_cache("corrupt");
        let key = CacheKey::for_host(&synthetic_supported());
        fs::create_dir_all(&cache.dir).unwrap();
        fs::write(cache.path(&key), b"{\"key\": not json").unwrap();
        assert!(cache.load(&key).is_none());

        // A valid file whose stored key is another host's.
        let other = CacheKey {
            kernel_release: "other".into(),
            ..key.clone()
        };
        let foreign = CacheFile {
            key: other,
            report: report(),
        };
        fs::write(cache.path(&key), serde_json::to_vec(&foreign).unwrap()).unwrap();
        assert!(cache.load(&key).is_none());

        cache.store(&key, &report()).unwrap();
        assert_eq!(cache.load(&key), Some(report()));
        fs::remove_dir_all(&cache.dir).unwrap();
    }
}
