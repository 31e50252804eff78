//! Idle power that outlives one invocation.
//!
//! The online idle estimate needs quiet intervals, which a short `powerapi run` or the first
//! seconds of `record`/`top` never see; until then a command would be charged the machine's idle
//! power too. So every command saves its estimate (per machine and energy source) under
//! `/var/lib/powerapi/idle.json` (`POWERAPI_STATE_DIR` overrides the directory), and the next
//! one starts from it. The file is untrusted input: anything unreadable, implausible or from
//! another machine is ignored.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::energy::DomainKey;

/// No CPU package or DRAM domain idles above this; a figure beyond it is garbage.
const MAX_PLAUSIBLE_IDLE_W: f64 = 5_000.0;

/// Where the state lives: `POWERAPI_STATE_DIR`, else `/var/lib/powerapi`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("POWERAPI_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/powerapi"))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Entry {
    updated_unix: u64,
    /// Idle watts per domain and socket.
    domains: Vec<(DomainKey, f64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct StoreFile {
    /// `machine|source` → estimate.
    entries: BTreeMap<String, Entry>,
}

/// Keeps only plausible figures.
fn plausible(domains: Vec<(DomainKey, f64)>) -> Vec<(DomainKey, f64)> {
    domains
        .into_iter()
        .filter(|(_, w)| w.is_finite() && *w >= 0.0 && *w <= MAX_PLAUSIBLE_IDLE_W)
        .collect()
}

/// Parses the store and returns the estimate saved under `key` (empty when absent or garbage).
pub fn parse_estimate(text: &str, key: &str) -> Vec<(DomainKey, f64)> {
    serde_json::from_str::<StoreFile>(text)
        .ok()
        .and_then(|mut file| file.entries.remove(key))
        .map(|entry| plausible(entry.domains))
        .unwrap_or_default()
}

/// The store's text with `key`'s estimate replaced (other machines' and sources' kept).
pub fn merge_estimate(
    existing: Option<&str>,
    key: &str,
    domains: &[(DomainKey, f64)],
    now_unix: u64,
) -> String {
    let mut file = existing
        .and_then(|t| serde_json::from_str::<StoreFile>(t).ok())
        .unwrap_or_default();
    file.entries.insert(
        key.to_string(),
        Entry {
            updated_unix: now_unix,
            domains: plausible(domains.to_vec()),
        },
    );
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

/// This machine's identity: `/etc/machine-id`, else the host name.
fn machine_id() -> String {
    fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The idle estimate of one machine and energy source, on disk.
#[derive(Clone, Debug)]
pub struct IdleStore {
    path: PathBuf,
    key: String,
}

impl IdleStore {
    /// `source`: which energy input the figures are of (`powercap`, `powercap-dir:/x`, …).
    pub fn new(dir: &Path, source: &str) -> Self {
        Self {
            path: dir.join("idle.json"),
            key: format!("{}|{source}", machine_id()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Vec<(DomainKey, f64)> {
        fs::read_to_string(&self.path)
            .map(|text| parse_estimate(&text, &self.key))
            .unwrap_or_default()
    }

    /// Saves the estimate (write to a temporary file, then rename: a crash never leaves half a
    /// file, and two commands saving at once each leave a whole one).
    pub fn save(&self, domains: &[(DomainKey, f64)]) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let existing = fs::read_to_string(&self.path).ok();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = merge_estimate(existing.as_deref(), &self.key, domains, now);
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::Domain;

    fn pkg(socket: u32) -> DomainKey {
        DomainKey {
            domain: Domain::Package,
            socket,
        }
    }

    #[test]
    fn round_trip_keeps_other_entries() {
        let text = merge_estimate(None, "m|powercap", &[(pkg(0), 7.5), (pkg(1), 8.0)], 1);
        let text = merge_estimate(Some(&text), "m|msr", &[(pkg(0), 3.0)], 2);
        assert_eq!(
            parse_estimate(&text, "m|powercap"),
            vec![(pkg(0), 7.5), (pkg(1), 8.0)]
        );
        assert_eq!(parse_estimate(&text, "m|msr"), vec![(pkg(0), 3.0)]);
        assert!(parse_estimate(&text, "other|powercap").is_empty());
    }

    #[test]
    fn garbage_and_implausible_figures_are_ignored() {
        assert!(parse_estimate("not json", "k").is_empty());
        assert!(parse_estimate("", "k").is_empty());
        let text = merge_estimate(
            None,
            "k",
            &[(pkg(0), -1.0), (pkg(1), 4.0), (pkg(2), 1e9)],
            1,
        );
        assert_eq!(parse_estimate(&text, "k"), vec![(pkg(1), 4.0)]);
        // A NaN written by someone else is dropped on read, too.
        let text = text.replace("4.0", "NaN");
        assert!(parse_estimate(&text, "k").is_empty());
    }

    #[test]
    fn saved_and_loaded_through_a_directory() {
        let dir = std::env::temp_dir().join(format!("powerapi-idle-test-{}", std::process::id()));
        let store = IdleStore::new(&dir, "powercap-dir:/x");
        assert!(store.load().is_empty());
        store.save(&[(pkg(0), 6.25)]).expect("save");
        assert_eq!(store.load(), vec![(pkg(0), 6.25)]);
        let _ = fs::remove_dir_all(&dir);
    }
}
