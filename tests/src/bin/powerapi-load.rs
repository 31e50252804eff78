//! Load generator for the end-to-end tests: known amounts of CPU work, with ground truth printed.
//!
//! - `burn SECONDS [CPU]`: busy-loop for SECONDS of wall time (pinned to CPU when given), then
//!   print `cpu_ns=N`, its own CPU time.
//! - `storm COUNT MS`: fork COUNT children one after another, each burning MS of CPU, then print
//!   the children's pids and their summed CPU time (RUSAGE_CHILDREN) as JSON.
//! - `threads COUNT SECONDS`: COUNT threads busy for SECONDS.

use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; we pass valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn spin_wall(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn spin_cpu(ns: u64) {
    let start = thread_cpu_ns();
    let mut x = 0u64;
    while thread_cpu_ns() - start < ns {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
    match args.get(1).map(String::as_str) {
        Some("burn") => {
            if let Some(cpu) = arg(3) {
                pin(cpu as usize);
            }
            spin_wall(Duration::from_secs_f64(arg(2).unwrap_or(3.0)));
            println!("cpu_ns={}", thread_cpu_ns());
        }
        Some("threads") => {
            let count = arg(2).unwrap_or(2.0) as usize;
            let secs = arg(3).unwrap_or(2.0);
            let handles: Vec<_> = (0..count)
                .map(|_| std::thread::spawn(move || spin_wall(Duration::from_secs_f64(secs))))
                .collect();
            for h in handles {
                let _ = h.join();
            }
        }
        Some("storm") => {
            let count = arg(2).unwrap_or(500.0) as usize;
            let ms = arg(3).unwrap_or(5.0);
            let mut pids = Vec::with_capacity(count);
            for _ in 0..count {
                // SAFETY: this process is single-threaded, so the child may keep running Rust code.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    spin_cpu((ms * 1e6) as u64);
                    // SAFETY: leave the child without running the parent's exit handlers.
                    unsafe { libc::_exit(0) };
                }
                if pid < 0 {
                    eprintln!("fork failed");
                    std::process::exit(1);
                }
                pids.push(pid);
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            // SAFETY: valid out pointer.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: RUSAGE_CHILDREN with a valid out pointer.
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
            let ns =
                |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
            println!(
                "{{\"pids\":{:?},\"children_cpu_ns\":{}}}",
                pids,
                ns(usage.ru_utime) + ns(usage.ru_stime)
            );
        }
        _ => {
            eprintln!(
                "usage: powerapi-load burn SECONDS [CPU] | storm COUNT MS | threads COUNT SECONDS"
            );
            std::process::exit(2);
        }
    }
}
