//! Which CPUs are online and which socket (package) each belongs to.

use std::{fs, io, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}; check --sysfs-root")]
    Read { path: String, source: io::Error },
    #[error("cannot parse CPU list {text:?} from {path}; check --sysfs-root")]
    Parse { path: String, text: String },
}

/// One online CPU and its package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub id: u32,
    pub socket: u32,
}

/// Parses the kernel's CPU list format (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u32, u32) = (lo.parse().ok()?, hi.parse().ok()?);
                if lo > hi {
                    return None;
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Reads the ids of the online CPUs under `root` (normally `/`): one small file, cheap enough to
/// follow hotplug every interval.
pub fn read_online(root: &Path) -> Result<Vec<u32>, TopologyError> {
    let online = root.join("sys/devices/system/cpu/online");
    let text = fs::read_to_string(&online).map_err(|source| TopologyError::Read {
        path: online.display().to_string(),
        source,
    })?;
    parse_cpu_list(&text).ok_or_else(|| TopologyError::Parse {
        path: online.display().to_string(),
        text: text.clone(),
    })
}

/// Reads the online CPUs and their sockets under `root` (normally `/`).
///
/// A CPU whose `physical_package_id` is unreadable is put on socket 0: some VMs omit topology.
pub fn read_cpus(root: &Path) -> Result<Vec<Cpu>, TopologyError> {
    Ok(read_online(root)?
        .into_iter()
        .map(|id| {
            let package = root.join(format!(
                "sys/devices/system/cpu/cpu{id}/topology/physical_package_id"
            ));
            let socket = fs::read_to_string(package)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .map_or(0, |s| u32::try_from(s).unwrap_or(0));
            Cpu { id, socket }
        })
        .collect())
}

/// (socket, number of online CPUs on it), sorted by socket.
pub fn cpus_by_socket(cpus: &[Cpu]) -> Vec<(u32, u32)> {
    let mut sockets: Vec<(u32, u32)> = Vec::new();
    for cpu in cpus {
        match sockets.iter_mut().find(|(s, _)| *s == cpu.socket) {
            Some((_, n)) => *n += 1,
            None => sockets.push((cpu.socket, 1)),
        }
    }
    sockets.sort();
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn two_socket_fixture() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-socket");
        let cpus = read_cpus(&root).expect("fixture");
        assert_eq!(
            cpus,
            vec![
                Cpu { id: 0, socket: 0 },
                Cpu { id: 1, socket: 0 },
                Cpu { id: 2, socket: 1 },
                Cpu { id: 3, socket: 1 }
            ]
        );
        assert_eq!(cpus_by_socket(&cpus), vec![(0, 2), (1, 2)]);
    }
}
