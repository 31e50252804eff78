//! Who a process is, beyond what the sensor reads in the kernel (pid, comm, cgroup, uid): the
//! owner's name, the parent pid and, on request, the command line, read from `/proc` once per
//! process incarnation. `/proc` is untrusted and racy: a process that already ended, or a file
//! that cannot be read, gives `None`, never an error.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

/// `/etc/passwd` text → uid → name.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// uid → user name, from the passwd file under `root` (read once).
pub struct UserNames {
    names: HashMap<u32, String>,
}

impl UserNames {
    pub fn new(root: &Path) -> Self {
        Self {
            names: fs::read_to_string(root.join("etc/passwd"))
                .map(|t| parse_passwd(&t))
                .unwrap_or_default(),
        }
    }

    /// The name, or the uid as text when passwd does not know it (LDAP users, containers).
    pub fn name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

/// What `/proc/PID` said about one incarnation of a process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcDetails {
    pub ppid: Option<u32>,
    pub cmdline: Option<String>,
}

/// `/proc` details per (pid, first-seen time), read the first time the process is reported and
/// forgotten when it is no longer: a reused pid is a new incarnation and is read afresh.
pub struct ProcCache {
    with_cmdline: bool,
    known: HashMap<(u32, u64), ProcDetails>,
}

impl ProcCache {
    pub fn new(with_cmdline: bool) -> Self {
        Self {
            with_cmdline,
            known: HashMap::new(),
        }
    }

    pub fn details(&mut self, pid: u32, start_ns: u64) -> &ProcDetails {
        let with_cmdline = self.with_cmdline;
        self.known
            .entry((pid, start_ns))
            .or_insert_with(|| read_details(pid, with_cmdline))
    }

    /// Keeps only the incarnations in `seen`.
    pub fn retain(&mut self, seen: &HashSet<(u32, u64)>) {
        self.known.retain(|k, _| seen.contains(k));
    }
}

fn read_details(pid: u32, with_cmdline: bool) -> ProcDetails {
    let Ok(process) = procfs::process::Process::new(pid as i32) else {
        return ProcDetails::default();
    };
    ProcDetails {
        ppid: process.stat().ok().and_then(|s| u32::try_from(s.ppid).ok()),
        cmdline: with_cmdline
            .then(|| process.cmdline().ok())
            .flatten()
            .filter(|args| !args.is_empty())
            .map(|args| args.join(" ")),
    }
}

/// Everything records need to say who a task is, kept across intervals.
pub struct Identities {
    pub users: UserNames,
    pub procs: ProcCache,
    pub hostname: Option<String>,
}

impl Identities {
    /// `with_cmdline`: also read each process's command line (`record --cmdline`).
    pub fn new(with_cmdline: bool) -> Self {
        Self {
            users: UserNames::new(Path::new("/")),
            procs: ProcCache::new(with_cmdline),
            hostname: hostname(),
        }
    }
}

/// Resident memory of a process now, KiB (0 when it has ended or `/proc` will not say).
pub fn rss_kib(pid: u32) -> u64 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.statm())
        .map(|m| m.resident * procfs::page_size() / 1024)
        .unwrap_or(0)
}

/// This machine's name, for records that leave it.
pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nnobody:x:65534:65534::/:/bin/false\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&65534).map(String::as_str), Some("nobody"));
        assert_eq!(users.len(), 2);
        let names = UserNames { names: users };
        assert_eq!(names.name(0), "root");
        assert_eq!(names.name(4242), "4242");
    }

    #[test]
    fn details_of_this_process_and_of_a_gone_one() {
        let mut cache = ProcCache::new(true);
        let me = std::process::id();
        let details = cache.details(me, 1).clone();
        // SAFETY: getppid has no preconditions.
        assert_eq!(details.ppid, Some(unsafe { libc::getppid() } as u32));
        assert!(details.cmdline.is_some_and(|c| !c.is_empty()));
        // A pid above pid_max's maximum never exists.
        assert_eq!(cache.details(u32::MAX - 1, 1), &ProcDetails::default());
        assert!(rss_kib(me) > 0);
        assert_eq!(rss_kib(u32::MAX - 1), 0);
        cache.retain(&HashSet::from([(me, 1)]));
        assert_eq!(cache.known.len(), 1);
    }
}
