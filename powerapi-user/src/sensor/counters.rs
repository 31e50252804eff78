//! Per-CPU counters the kernel programs read at each switch.

use std::{
    fmt,
    os::fd::{FromRawFd, OwnedFd},
    str::FromStr,
};

use perf_event_open_sys::bindings as perf;
use thiserror::Error;

/// A counter the user asked for, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSpec {
    /// The name records use for it (`cycles`, `instructions`, `raw:0x1234`).
    pub name: String,
    /// `perf_event_attr.type`.
    pub perf_type: u32,
    /// `perf_event_attr.config`.
    pub config: u64,
}

#[derive(Debug, Error)]
#[error(
    "unknown counter {0:?}: use cycles, instructions, ref-cycles, llc-misses, cache-misses, branch-misses, cpu-clock, page-faults, major-faults, cpu-migrations or raw:0xCONFIG"
)]
pub struct UnknownCounter(String);

impl FromStr for CounterSpec {
    type Err = UnknownCounter;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.trim();
        // LLC read misses as the generic cache event (type HW_CACHE), not a guess at a raw code:
        // Kepler's probe opened its "cache-misses" with the wrong type and counted dTLB loads.
        let llc_read_miss = u64::from(perf::PERF_COUNT_HW_CACHE_LL)
            | (u64::from(perf::PERF_COUNT_HW_CACHE_OP_READ) << 8)
            | (u64::from(perf::PERF_COUNT_HW_CACHE_RESULT_MISS) << 16);
        let (perf_type, config) = match name {
            "cycles" => (
                perf::PERF_TYPE_HARDWARE,
                u64::from(perf::PERF_COUNT_HW_CPU_CYCLES),
            ),
            "instructions" => (
                perf::PERF_TYPE_HARDWARE,
                u64::from(perf::PERF_COUNT_HW_INSTRUCTIONS),
            ),
            "ref-cycles" => (
                perf::PERF_TYPE_HARDWARE,
                u64::from(perf::PERF_COUNT_HW_REF_CPU_CYCLES),
            ),
            "cache-misses" => (
                perf::PERF_TYPE_HARDWARE,
                u64::from(perf::PERF_COUNT_HW_CACHE_MISSES),
            ),
            "branch-misses" => (
                perf::PERF_TYPE_HARDWARE,
                u64::from(perf::PERF_COUNT_HW_BRANCH_MISSES),
            ),
            "llc-misses" => (perf::PERF_TYPE_HW_CACHE, llc_read_miss),
            "cpu-clock" => (
                perf::PERF_TYPE_SOFTWARE,
                u64::from(perf::PERF_COUNT_SW_CPU_CLOCK),
            ),
            // Kernel software events: every Linux has them, PMU or not, so a VM can count per
            // task what its own slices caused.
            "page-faults" => (
                perf::PERF_TYPE_SOFTWARE,
                u64::from(perf::PERF_COUNT_SW_PAGE_FAULTS),
            ),
            "major-faults" => (
                perf::PERF_TYPE_SOFTWARE,
                u64::from(perf::PERF_COUNT_SW_PAGE_FAULTS_MAJ),
            ),
            "cpu-migrations" => (
                perf::PERF_TYPE_SOFTWARE,
                u64::from(perf::PERF_COUNT_SW_CPU_MIGRATIONS),
            ),
            _ => {
                let hex = name
                    .strip_prefix("raw:")
                    .map(|c| c.trim_start_matches("0x"))
                    .ok_or_else(|| UnknownCounter(name.to_string()))?;
                let config =
                    u64::from_str_radix(hex, 16).map_err(|_| UnknownCounter(name.to_string()))?;
                (perf::PERF_TYPE_RAW, config)
            }
        };
        Ok(Self {
            name: name.to_string(),
            perf_type,
            config,
        })
    }
}

impl fmt::Display for CounterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The counters powerapi follows unless told otherwise.
pub fn default_counters() -> Vec<CounterSpec> {
    ["cycles", "instructions"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[derive(Debug, Error)]
/// Why a counter could not be opened.
pub enum CounterError {
    #[error(
        "counter {name} is not available on CPU {cpu} ({source}); this machine may have no PMU (VMs often don't): drop it from --counters or use --counters none"
    )]
    /// The CPU has no such counter.
    Unsupported {
        /// The counter's name.
        name: String,
        /// The CPU.
        cpu: u32,
        /// The cause.
        source: std::io::Error,
    },
    #[error("cannot open counter {name} on CPU {cpu}: {source}; run as root or with CAP_PERFMON")]
    /// Opening it was not permitted.
    Denied {
        /// The counter's name.
        name: String,
        /// The CPU.
        cpu: u32,
        /// The cause.
        source: std::io::Error,
    },
}

/// Opens a system-wide event (`pid = -1`) on one CPU, counting from now on. Shared by the task
/// counters and the RAPL perf PMU.
pub fn open_cpu_event(
    perf_type: u32,
    config: u64,
    cpu: u32,
    read_format: u64,
) -> std::io::Result<OwnedFd> {
    let mut attr = perf::perf_event_attr {
        type_: perf_type,
        size: size_of::<perf::perf_event_attr>() as u32,
        config,
        read_format,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr that outlives the call.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(
            &mut attr,
            -1,
            cpu as i32,
            -1,
            u64::from(perf::PERF_FLAG_FD_CLOEXEC) as _,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `spec` on one CPU with enabled/running times (for multiplex scaling).
pub fn open_on_cpu(spec: &CounterSpec, cpu: u32) -> Result<OwnedFd, CounterError> {
    let read_format = u64::from(perf::PERF_FORMAT_TOTAL_TIME_ENABLED)
        | u64::from(perf::PERF_FORMAT_TOTAL_TIME_RUNNING);
    open_cpu_event(spec.perf_type, spec.config, cpu, read_format).map_err(|source| {
        let name = spec.name.clone();
        match source.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => CounterError::Denied { name, cpu, source },
            _ => CounterError::Unsupported { name, cpu, source },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let c: CounterSpec = "cycles".parse().expect("cycles");
        assert_eq!((c.perf_type, c.config), (0, 0));
        let c: CounterSpec = "raw:0x1c2".parse().expect("raw");
        assert_eq!((c.perf_type, c.config), (4, 0x1c2));
        let c: CounterSpec = "llc-misses".parse().expect("llc");
        assert_eq!((c.perf_type, c.config), (3, 2 | (1 << 16)));
        let c: CounterSpec = "cpu-clock".parse().expect("cpu-clock");
        assert_eq!((c.perf_type, c.config), (1, 0));
        let c: CounterSpec = "page-faults".parse().expect("page-faults");
        assert_eq!((c.perf_type, c.config), (1, 2));
        let c: CounterSpec = "major-faults".parse().expect("major-faults");
        assert_eq!((c.perf_type, c.config), (1, 6));
        let c: CounterSpec = "cpu-migrations".parse().expect("cpu-migrations");
        assert_eq!((c.perf_type, c.config), (1, 4));
        assert!("bogus".parse::<CounterSpec>().is_err());
        assert!("raw:zz".parse::<CounterSpec>().is_err());
    }
}
