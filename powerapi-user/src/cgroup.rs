//! cgroup v2 ids → paths → containers.
//!
//! The kernel side records `bpf_get_current_cgroup_id()`, which is the inode number of the cgroup's
//! directory in the cgroup2 filesystem; userspace maps it back to a path by walking that tree.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
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

/// Maps cgroup ids to paths relative to the cgroup2 root (`/` is the root cgroup).
#[derive(Debug)]
pub struct CgroupResolver {
    mount: PathBuf,
    paths: HashMap<u64, String>,
}

impl CgroupResolver {
    pub fn new(mount: PathBuf) -> Self {
        let mut resolver = Self {
            mount,
            paths: HashMap::new(),
        };
        resolver.rescan();
        resolver
    }

    /// Rescans the tree when some of `ids` are unknown. A cgroup created and removed within one
    /// interval stays unknown: its records then carry only the id.
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        if ids
            .into_iter()
            .any(|id| id != 0 && !self.paths.contains_key(&id))
        {
            self.rescan();
        }
    }

    pub fn path(&self, id: u64) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    fn rescan(&mut self) {
        let mut stack = vec![(self.mount.clone(), String::from("/"))];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            self.paths.insert(meta.ino(), rel.clone());
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

    #[test]
    fn resolver_walks_tree() {
        let dir = std::env::temp_dir().join(format!("powerapi-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        let ino = fs::metadata(dir.join("a/b")).expect("meta").ino();
        let mut resolver = CgroupResolver::new(dir.clone());
        resolver.learn([ino]);
        assert_eq!(resolver.path(ino), Some("/a/b"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
