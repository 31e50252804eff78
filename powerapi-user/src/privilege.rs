//! Whether this process may load BPF programs and open system-wide counters.

use std::{fs, path::Path};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities from `/proc/<pid>/status` text (`CapEff:\t000001ffffffffff`).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// True when the capability set allows tracing: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
pub fn caps_allow_tracing(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Reads this process's capabilities under `root` (normally `/`).
pub fn can_trace(root: &Path) -> bool {
    fs::read_to_string(root.join("proc/self/status"))
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .is_some_and(caps_allow_tracing)
}

pub const PRIVILEGE_HINT: &str = "powerapi needs root or CAP_BPF+CAP_PERFMON: run it with sudo (or `setcap cap_bpf,cap_perfmon+ep`)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let root = parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n").expect("parse");
        assert!(caps_allow_tracing(root));
        assert!(!caps_allow_tracing(
            parse_cap_eff("CapEff:\t0000000000000000").expect("parse")
        ));
        assert!(caps_allow_tracing((1 << 38) | (1 << 39)));
        assert!(!caps_allow_tracing(1 << 39));
        assert_eq!(parse_cap_eff("nothing"), None);
    }
}
