//! cgroup v2 ids → paths → containers.
//!
//! The kernel side records `bpf_get_current_cgroup_id()`, which is the inode number of the cgroup's
//! directory in the cgroup2 filesystem; userspace maps it back to a path by walking that tree.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}; is /proc mounted?")]
    Read { path: String, source: io::Error },
    #[error(
        "no cgroup2 filesystem is mounted (looked in {path}); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2 { path: String },
}

/// Finds the cgroup2 mount point in `/proc/self/mountinfo` text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Reads the cgroup2 mount point under `root` (normally `/`).
pub fn read_cgroup2_mount(root: &Path) -> Result<PathBuf, CgroupError> {
    let path = root.join("proc/self/mountinfo");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_cgroup2_mount(&text)
        .map(|mount| root.join(mount.strip_prefix("/").unwrap_or(&mount)))
        .ok_or(CgroupError::NoCgroup2 {
            path: path.display().to_string(),
        })
}

/// A container a cgroup path belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `docker`, `containerd`, `crio`, `podman`, `kubepods` (a pod cgroup without a container).
    pub runtime: String,
    pub id: String,
    /// The Kubernetes pod UID, when the path is under `kubepods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Recognises the container of a cgroup path, for docker, containerd/CRI, CRI-O, podman and
/// kubepods layouts, with either the systemd or the cgroupfs driver.
pub fn parse_container(path: &str) -> Option<Container> {
    let mut pod = None;
    let mut found = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        if let Some(uid) = pod_uid(name) {
            pod = Some(uid);
            continue;
        }
        let prefixed = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "crio"),
            ("libpod-", "podman"),
        ]
        .iter()
        .find_map(|(prefix, runtime)| {
            name.strip_prefix(prefix)
                .filter(|id| is_container_id(id))
                .map(|id| (runtime.to_string(), id.to_string()))
        });
        if let Some(hit) = prefixed {
            found = Some(hit);
        } else if is_container_id(name) {
            // cgroupfs driver: /docker/<id>, /kubepods/burstable/pod<uid>/<id>, /libpod_parent/libpod-<id>
            let runtime = if path.contains("kubepods") {
                "containerd"
            } else if path.contains("libpod") {
                "podman"
            } else {
                "docker"
            };
            found = Some((runtime.to_string(), name.to_string()));
        }
    }
    match (found, pod) {
        (Some((runtime, id)), pod) => Some(Container { runtime, id, pod }),
        (None, Some(uid)) => Some(Container {
            runtime: "kubepods".into(),
            id: uid.clone(),
            pod: Some(uid),
        }),
        (None, None) => None,
    }
}

/// `kubepods-burstable-pod1234_5678.slice` or `pod1234-5678` → the pod UID with dashes.
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let uid = name
        .rsplit_once("-pod")
        .map(|(_, u)| u)
        .or_else(|| name.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The systemd unit a cgroup path ends in (`session-3.scope`, `nginx.service`), if any.
pub fn parse_systemd_unit(path: &str) -> Option<&str> {
    let last = path.rsplit('/').find(|c| !c.is_empty())?;
    [".service", ".scope"]
        .iter()
        .any(|s| last.ends_with(s))
        .then_some(last)
}

/// Shortest time between two walks of the cgroup tree. A walk costs in proportion to the tree
/// (tens of milliseconds for thousands of cgroups); a host starting containers all day would
/// otherwise walk it every interval. A cgroup first seen meanwhile carries only its id until
/// the next walk.
pub const RESCAN_PERIOD: Duration = Duration::from_secs(2);

/// Every cgroup directory under `mount` (a cgroup2 mount, or a fixture tree in tests): its id
/// (the directory's inode) → its path relative to `mount` (`/` for `mount` itself). A directory
/// that vanishes during the walk is left out.
pub fn walk_cgroup_tree(mount: &Path) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    let mut stack = vec![(mount.to_path_buf(), String::from("/"))];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        paths.insert(meta.ino(), rel.clone());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    paths
}

/// Maps cgroup ids to paths relative to the cgroup2 root (`/` is the root cgroup).
///
/// Bounded for hosts that churn containers for weeks: each walk replaces the map, so removed
/// cgroups are forgotten, and walks are at most one per [`RESCAN_PERIOD`], only for ids not
/// already looked for in vain.
#[derive(Debug)]
pub struct CgroupResolver {
    mount: PathBuf,
    paths: HashMap<u64, String>,
    /// Ids the last walk was asked for and did not find (another cgroup namespace, or removed
    /// before the walk): they do not trigger another walk. Emptied by every walk.
    unresolved: HashSet<u64>,
    /// When the last walk that `learn` asked for ran (`None`: only the first one, at start).
    last_rescan: Option<Instant>,
    period: Duration,
}

impl CgroupResolver {
    pub fn new(mount: PathBuf) -> Self {
        Self::with_period(mount, RESCAN_PERIOD)
    }

    /// As [`CgroupResolver::new`], with walks at most one per `period`.
    pub fn with_period(mount: PathBuf, period: Duration) -> Self {
        let paths = walk_cgroup_tree(&mount);
        Self {
            mount,
            paths,
            unresolved: HashSet::new(),
            last_rescan: None,
            period,
        }
    }

    /// Walks the tree again when some of `ids` (the cgroups of this interval's tasks) are new
    /// and unknown, unless the last walk was less than the period ago. A cgroup created and
    /// removed between two walks stays unknown: its records then carry only the id.
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.learn_at(ids, Instant::now());
    }

    /// [`CgroupResolver::learn`] at `now` (tests inject the clock).
    pub fn learn_at(&mut self, ids: impl IntoIterator<Item = u64>, now: Instant) {
        let wanted: Vec<u64> = ids.into_iter().filter(|&id| id != 0).collect();
        let new_unknown = wanted
            .iter()
            .any(|id| !self.paths.contains_key(id) && !self.unresolved.contains(id));
        let too_soon = self
            .last_rescan
            .is_some_and(|last| now.saturating_duration_since(last) < self.period);
        if new_unknown && !too_soon {
            self.rescan(&wanted, now);
        }
    }

    pub fn path(&self, id: u64) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    /// How many cgroups are remembered.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when no cgroup is known (no walk found the mount).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn rescan(&mut self, wanted: &[u64], now: Instant) {
        let mut paths = walk_cgroup_tree(&self.mount);
        // A cgroup removed since the last walk is forgotten, unless tasks of this interval were
        // in it: the records about to be written still name it (gone at the next walk).
        for id in wanted {
            if !paths.contains_key(id)
                && let Some(path) = self.paths.remove(id)
            {
                paths.insert(*id, path);
            }
        }
        self.unresolved = wanted
            .iter()
            .filter(|id| !paths.contains_key(id))
            .copied()
            .collect();
        self.paths = paths;
        self.last_rescan = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c8b7a9d2e4f60a1b2c3d4e5f60718293a4b5c6d7e8f9012345678abcdef01";

    #[test]
    fn mountinfo() {
        let text = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("25 30 0:22 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn containers() {
        let c = parse_container(&format!("/system.slice/docker-{ID}.scope")).expect("docker");
        assert_eq!(
            (c.runtime.as_str(), c.id.as_str(), c.pod),
            ("docker", ID, None)
        );
        let c = parse_container(&format!("/docker/{ID}")).expect("docker cgroupfs");
        assert_eq!(c.runtime, "docker");
        let c = parse_container(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666.slice/cri-containerd-{ID}.scope"
        ))
        .expect("cri");
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.id, ID);
        assert_eq!(
            c.pod.as_deref(),
            Some("0a1b2c3d-1111-2222-3333-444455556666")
        );
        let c = parse_container(&format!(
            "/kubepods/besteffort/pod0a1b2c3d-1111-2222-3333-444455556666/{ID}"
        ))
        .expect("kubepods cgroupfs");
        assert_eq!(c.runtime, "containerd");
        let c = parse_container(&format!("/machine.slice/libpod-{ID}.scope/container"))
            .expect("podman");
        assert_eq!(c.runtime, "podman");
        let c = parse_container(&format!("/system.slice/crio-{ID}.scope")).expect("crio");
        assert_eq!(c.runtime, "crio");
        let c = parse_container(
            "/kubepods.slice/kubepods-pod0a1b2c3d_1111_2222_3333_444455556666.slice",
        )
        .expect("pod only");
        assert_eq!(c.runtime, "kubepods");
        assert_eq!(
            parse_container("/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(parse_container("/"), None);
        assert_eq!(parse_container("/docker/notanid"), None);
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            parse_systemd_unit("/user.slice/user-0.slice/session-3.scope"),
            Some("session-3.scope")
        );
        assert_eq!(
            parse_systemd_unit("/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(parse_systemd_unit("/user.slice"), None);
    }

    /// A fixture tree under the temp dir, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("powerapi-cg-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("mkdir");
            Self(dir)
        }

        fn add(&self, rel: &str) -> u64 {
            fs::create_dir_all(self.0.join(rel)).expect("mkdir");
            fs::metadata(self.0.join(rel)).expect("meta").ino()
        }

        fn remove(&self, rel: &str) {
            fs::remove_dir_all(self.0.join(rel)).expect("rmdir");
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn resolver_walks_tree() {
        let tree = Tree::new("walk");
        let ino = tree.add("a/b");
        let mut resolver = CgroupResolver::new(tree.0.clone());
        resolver.learn([ino]);
        assert_eq!(resolver.path(ino), Some("/a/b"));
        let walked = walk_cgroup_tree(&tree.0);
        assert_eq!(walked.len(), 3, "root, /a, /a/b: {walked:?}");
        assert_eq!(walked.get(&ino).map(String::as_str), Some("/a/b"));
    }

    /// Many unknown ids in a row walk the tree at most once per period: a cgroup created right
    /// after a walk is found only once the period has passed, however many intervals ask.
    #[test]
    fn unknown_ids_walk_the_tree_at_most_once_per_period() {
        let tree = Tree::new("period");
        let period = Duration::from_secs(2);
        let mut resolver = CgroupResolver::with_period(tree.0.clone(), period);
        let t0 = Instant::now();
        let early = tree.add("early");
        resolver.learn_at([early], t0);
        assert_eq!(
            resolver.path(early),
            Some("/early"),
            "the first unknown id walks at once"
        );

        let late = tree.add("late");
        for (step, unknown) in (1..=19u64).zip(1_000_000u64..) {
            // 100 ms intervals, each with a new id that no walk can find, and the new cgroup.
            let now = t0 + Duration::from_millis(100 * step);
            resolver.learn_at([unknown, late], now);
            assert_eq!(
                resolver.path(late),
                None,
                "walked again {step} intervals after the last"
            );
        }
        resolver.learn_at([late], t0 + period);
        assert_eq!(
            resolver.path(late),
            Some("/late"),
            "walked once the period passed"
        );

        // An id the last walk looked for in vain does not walk again, even after the period.
        let gone = 42_000_000;
        resolver.learn_at([gone], t0 + 2 * period);
        let later = tree.add("later");
        resolver.learn_at([gone], t0 + 4 * period);
        assert_eq!(
            resolver.path(later),
            None,
            "only a known-missing id: no walk"
        );
        resolver.learn_at([later], t0 + 4 * period);
        assert_eq!(resolver.path(later), Some("/later"));
    }

    /// Containers come and go for weeks: the map holds what the tree holds now (plus the
    /// cgroups of the interval being reported), not every cgroup ever seen.
    #[test]
    fn removed_cgroups_are_forgotten() {
        let tree = Tree::new("churn");
        let mut resolver = CgroupResolver::with_period(tree.0.clone(), Duration::ZERO);
        let t0 = Instant::now();
        let kept = tree.add("system.slice");
        for round in 0..50u64 {
            let ids: Vec<u64> = (0..20)
                .map(|n| tree.add(&format!("system.slice/docker-{round}-{n}.scope")))
                .collect();
            resolver.learn_at(ids.iter().copied(), t0 + Duration::from_secs(round));
            for id in &ids {
                assert!(
                    resolver.path(*id).is_some(),
                    "round {round}: a new container found"
                );
            }
            for n in 0..20 {
                tree.remove(&format!("system.slice/docker-{round}-{n}.scope"));
            }
            // root, system.slice, and this round's 20 containers at most.
            assert!(
                resolver.len() <= 22,
                "round {round}: {} paths remembered",
                resolver.len()
            );
        }
        assert_eq!(resolver.path(kept), Some("/system.slice"));
    }

    /// A cgroup removed while its tasks are being reported keeps its path for that interval.
    /// (Directories are made before any is removed: a fixture filesystem, unlike cgroupfs, may
    /// give a new directory a removed one's inode.)
    #[test]
    fn a_cgroup_removed_during_its_last_interval_is_named_then_forgotten() {
        let tree = Tree::new("leaving");
        let leaving = tree.add("leaving");
        let mut resolver = CgroupResolver::with_period(tree.0.clone(), Duration::ZERO);
        let t0 = Instant::now();
        let arriving = tree.add("arriving");
        tree.remove("leaving");
        resolver.learn_at([leaving, arriving], t0);
        assert_eq!(
            resolver.path(leaving),
            Some("/leaving"),
            "still reported this interval"
        );
        assert_eq!(resolver.path(arriving), Some("/arriving"));
        // An id no walk finds asks for the next walk.
        resolver.learn_at([arriving, 77_000_000], t0 + Duration::from_secs(1));
        assert_eq!(resolver.path(leaving), None, "forgotten at the next walk");
        assert_eq!(resolver.len(), 2, "root and arriving: {:?}", resolver.paths);
    }
}
