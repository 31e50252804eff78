//! Load generator for the end-to-end tests: known amounts of CPU work, with ground truth printed.
//!
//! - `burn SECONDS [CPU]`: busy-loop for SECONDS of wall time (pinned to CPU when given), then
//!   print `cpu_ns=N`, its own CPU time.
//! - `storm COUNT MS`: fork COUNT children one after another, each burning MS of CPU, then print
//!   the children's pids and their summed CPU time (RUSAGE_CHILDREN) as JSON.
//! - `threads COUNT SECONDS`: COUNT threads busy for SECONDS.
//! - `hop COUNT MS`: COUNT processes one after another, each burning MS of CPU pinned to CPU 1,
//!   then MS pinned to CPU 0 (threads that cross sockets); prints pids and RUSAGE_CHILDREN.
//! - `exec-thread COUNT`: COUNT processes one after another, each of which execs from a second
//!   thread (the kernel then swaps that thread's pid with the leader's); prints their pids.
//! - `rename NAME SECONDS`: a worker thread sleeps 50 ms (so the sensor knows it under its
//!   inherited name), renames itself NAME, then burns for SECONDS.
//! - `pulse SECONDS`: burn 1 ms of CPU every 20 ms for SECONDS (a task that is rarely running
//!   when the sensor flushes); prints its CPU time.
//! - `leader-exits SECONDS`: the main thread exits at once, a worker burns for SECONDS.
//! - `reuse MS`: fork a child that burns MS of CPU and exits, then create another with the same
//!   pid (`clone3` with `set_tid`, root only) that burns 2×MS; prints the pid and both CPU times.
//! - `exec-reuse SECONDS`: a process on CPU 0 whose second thread execs `sleep` (handing its tid
//!   back), then a burner created with that tid (`clone3` with `set_tid`), on CPU 0 too, that
//!   burns SECONDS of CPU; prints both pids and both CPU times (rusage).
//! - `rt-pulse SECONDS [CPU…]`: one SCHED_FIFO thread per CPU given, each burning 0.3 ms of every 0.5 ms for
//!   SECONDS: whatever runs at normal priority (the meter's drain) is preempted mid-way.

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

/// Burns `ns` more of this process's CPU time (single-threaded callers).
fn spin_cpu_thread(ns: u64) {
    spin_cpu(ns);
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

/// Forks a child that runs `f` and exits; returns its pid.
fn fork_with(f: impl FnOnce()) -> i32 {
    // SAFETY: the caller is single-threaded, so the child may keep running Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        f();
        // SAFETY: leave the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        eprintln!("fork failed");
        std::process::exit(1);
    }
    pid
}

fn wait_child(pid: i32) -> u64 {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; waiting for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

fn children_cpu_ns() -> u64 {
    // SAFETY: valid out pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// `struct clone_args` of clone3(2), up to `set_tid_size`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// A fork whose child gets pid `tid` (`clone3` with `set_tid`, root only): 0 in the child, the
/// pid in the parent, negative on failure (errno set). Callers must be single-threaded.
fn fork_with_tid(tid: libc::pid_t) -> i64 {
    let clone_args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const libc::pid_t as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 with a valid clone_args (no CLONE_VM: a fork); the child runs only code
    // that is safe after fork in a single-threaded process.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &clone_args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
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
        Some("wake") => {
            // 20 µs of work, then 80 µs asleep: ~10,000 wakeups a second.
            let end = Instant::now() + Duration::from_secs_f64(arg(2).unwrap_or(3.0));
            while Instant::now() < end {
                spin_wall(Duration::from_micros(20));
                std::thread::sleep(Duration::from_micros(80));
            }
        }
        Some("pulse") => {
            let end = Instant::now() + Duration::from_secs_f64(arg(2).unwrap_or(2.0));
            while Instant::now() < end {
                spin_cpu_thread(1_000_000);
                std::thread::sleep(Duration::from_millis(19));
            }
            println!("cpu_ns={}", thread_cpu_ns());
        }
        Some("hop") => {
            let count = arg(2).unwrap_or(100.0) as usize;
            let ns = (arg(3).unwrap_or(2.0) * 1e6) as u64;
            let mut pids = Vec::with_capacity(count);
            for _ in 0..count {
                let pid = fork_with(|| {
                    pin(1);
                    spin_cpu(ns);
                    pin(0);
                    spin_cpu(ns);
                });
                wait_child(pid);
                pids.push(pid);
            }
            println!(
                "{{\"pids\":{:?},\"children_cpu_ns\":{}}}",
                pids,
                children_cpu_ns()
            );
        }
        Some("exec-thread") => {
            let count = arg(2).unwrap_or(50.0) as usize;
            let me = std::env::current_exe().unwrap_or_else(|_| "powerapi-load".into());
            let mut pids = Vec::with_capacity(count);
            for _ in 0..count {
                let me = me.clone();
                let pid = fork_with(move || {
                    let worker = std::thread::spawn(move || {
                        spin_cpu(1_000_000);
                        let err = std::os::unix::process::CommandExt::exec(
                            std::process::Command::new(&me).args(["burn", "0.005"]),
                        );
                        eprintln!("exec failed: {err}");
                        // SAFETY: plain exit of the whole process.
                        unsafe { libc::_exit(1) };
                    });
                    spin_cpu(1_000_000);
                    let _ = worker.join();
                });
                wait_child(pid);
                pids.push(pid);
            }
            println!("{{\"pids\":{pids:?}}}");
        }
        Some("rename") => {
            let name = args.get(2).cloned().unwrap_or_else(|| "renamed".into());
            let secs = arg(3).unwrap_or(1.0);
            let worker = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let cname = std::ffi::CString::new(name).unwrap_or_default();
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
                unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
                spin_wall(Duration::from_secs_f64(secs));
                // SAFETY: gettid has no preconditions.
                unsafe { libc::syscall(libc::SYS_gettid) }
            });
            let tid = worker.join().unwrap_or(0);
            println!("{{\"tid\":{tid}}}");
        }
        Some("leader-exits") => {
            let secs = arg(2).unwrap_or(1.0);
            std::thread::spawn(move || {
                spin_wall(Duration::from_secs_f64(secs));
                std::process::exit(0);
            });
            // SAFETY: the raw exit(2) ends this thread only (glibc's pthread_exit would unwind
            // through Rust frames and abort); the process lives on in the worker.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("exit(2) returned");
        }
        Some("reuse") => {
            let ns = (arg(2).unwrap_or(50.0) * 1e6) as u64;
            let first = fork_with(|| spin_cpu(ns));
            let first_ns = wait_child(first);
            let second = fork_with_tid(first);
            if second == 0 {
                spin_cpu(2 * ns);
                // SAFETY: leave the child without the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            if second < 0 {
                eprintln!(
                    "clone3 with set_tid failed: {}",
                    std::io::Error::last_os_error()
                );
                std::process::exit(3);
            }
            let second_ns = wait_child(second as i32);
            println!(
                "{{\"pid\":{first},\"second_pid\":{second},\"first_ns\":{first_ns},\"second_ns\":{second_ns}}}"
            );
        }
        Some("exec-reuse") => exec_reuse(arg(2).unwrap_or(1.0)),
        Some("rt-pulse") => {
            let secs = arg(2).unwrap_or(1.0);
            let cpus = args.len().saturating_sub(3).max(1);
            let workers: Vec<_> = (0..cpus)
                .map(|i| {
                    let cpu = arg(3 + i).unwrap_or(i as f64) as usize;
                    std::thread::spawn(move || {
                        pin(cpu);
                        let param = libc::sched_param { sched_priority: 10 };
                        // SAFETY: this thread's own policy, with a valid parameter.
                        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
                            eprintln!("SCHED_FIFO: {}", std::io::Error::last_os_error());
                            std::process::exit(3);
                        }
                        let end = Instant::now() + Duration::from_secs_f64(secs);
                        while Instant::now() < end {
                            spin_wall(Duration::from_micros(300));
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.join();
            }
            println!("{{\"cpu_ns\":{}}}", thread_cpu_ns());
        }
        _ => {
            eprintln!(
                "usage: powerapi-load burn SECONDS [CPU] | storm COUNT MS | threads COUNT SECONDS | hop COUNT MS | exec-thread COUNT | rename NAME SECONDS | leader-exits SECONDS | reuse MS | exec-reuse SECONDS | rt-pulse SECONDS [CPU…]"
            );
            std::process::exit(2);
        }
    }
}

/// See `exec-reuse` in the module comment. The exec'ing thread's last switches under its own tid
/// happen on CPU 0 (it waits there for the leader to die), so CPU 0's cache of recent threads
/// knows that tid when the burner, which reuses it, first switches out there.
fn exec_reuse(secs: f64) {
    pin(1);
    let mut fds = [0i32; 2];
    // SAFETY: a valid two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("pipe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let [read_fd, write_fd] = fds;
    let sleep_for = format!("{:.3}", secs + 1.0);
    let sleeper = fork_with(move || {
        pin(0);
        let worker = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            spin_wall(Duration::from_millis(20));
            let bytes = tid.to_ne_bytes();
            // SAFETY: writing 4 bytes from a valid buffer to our pipe.
            unsafe { libc::write(write_fd, bytes.as_ptr().cast(), bytes.len()) };
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("sleep").arg(&sleep_for),
            );
            eprintln!("exec failed: {err}");
            // SAFETY: plain exit of the whole process.
            unsafe { libc::_exit(1) };
        });
        let _ = worker.join();
    });
    let mut bytes = [0u8; 4];
    // SAFETY: reading 4 bytes into a valid buffer from our pipe.
    if unsafe { libc::read(read_fd, bytes.as_mut_ptr().cast(), bytes.len()) } != 4 {
        eprintln!("no tid from the sleeper");
        std::process::exit(1);
    }
    let tid = i32::from_ne_bytes(bytes);
    // The tid is free once the exec is through: the process is `sleep` by then.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{sleeper}/comm"))
        .map_or(true, |c| c.trim() != "sleep")
    {
        if Instant::now() > deadline {
            eprintln!("the sleeper did not exec");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let burner = loop {
        let pid = fork_with_tid(tid);
        if pid == 0 {
            pin(0);
            spin_cpu((secs * 1e9) as u64);
            // SAFETY: leave the child without the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            break pid as i32;
        }
        let err = std::io::Error::last_os_error();
        // The old leader, which held the tid last, may not be reaped yet.
        if err.raw_os_error() != Some(libc::EEXIST) || Instant::now() > deadline {
            eprintln!("clone3 with set_tid {tid} failed: {err}");
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let burner_ns = wait_child(burner);
    let sleeper_ns = wait_child(sleeper);
    println!(
        "{{\"sleeper\":{sleeper},\"burner\":{burner},\"sleeper_ns\":{sleeper_ns},\"burner_ns\":{burner_ns}}}"
    );
}
