//! The `bpf(2)` commands aya 0.14 does not wrap: storing and removing perf event fds in a
//! `PERF_EVENT_ARRAY`, pushing onto a stack map, mmap of an array map, and running a program on a
//! chosen CPU.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::{BPF_F_TEST_RUN_ON_CPU, bpf_attr, bpf_cmd};

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised bpf_attr whose relevant member the caller filled in;
    // the kernel reads (and for some commands writes) at most size_of::<bpf_attr>() bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all-zero is its documented initial state.
    unsafe { std::mem::zeroed() }
}

/// `PERF_EVENT_ARRAY[cpu] = perf_fd`.
pub fn set_perf_event(map: BorrowedFd<'_>, cpu: u32, perf_fd: BorrowedFd<'_>) -> io::Result<()> {
    let key = cpu;
    let value = perf_fd.as_raw_fd() as u32;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u32 as u64;
    sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes `PERF_EVENT_ARRAY[cpu]`, so reads there fail (and are counted) instead of returning a
/// dead event's frozen value. An entry already absent is fine.
pub fn clear_perf_event(map: BorrowedFd<'_>, cpu: u32) -> io::Result<()> {
    let key = cpu;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    match sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

/// Runs a raw-tracepoint program once on `cpu` (in an IPI when it is not this CPU), so that
/// `current` and `BPF_F_CURRENT_CPU` in the program refer to that CPU.
pub fn run_on_cpu(prog: BorrowedFd<'_>, cpu: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.test.prog_fd = prog.as_raw_fd() as u32;
    attr.test.flags = BPF_F_TEST_RUN_ON_CPU;
    attr.test.cpu = cpu;
    sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

/// Pushes `value` onto a `BPF_MAP_TYPE_STACK`/`QUEUE` map.
pub fn push(map: BorrowedFd<'_>, value: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u32 as u64;
    sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// A `BPF_F_MMAPABLE` array map mapped into this process: reading it costs no syscall.
pub struct MappedArray<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through &self
// methods that copy values out with volatile reads (the kernel writes concurrently).
unsafe impl<T: Send> Send for MappedArray<T> {}

impl<T: aya::Pod> MappedArray<T> {
    /// Maps `len` elements of the array behind `map`, read-write.
    pub fn map(map: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // Array values are laid out at 8-byte strides; our slot types are multiples of 8.
        debug_assert_eq!(size_of::<T>() % 8, 0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (size_of::<T>() * len).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's data area; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr, len, bytes })
    }

    /// Touches every page once, so the first drain does not pay the page faults (expensive in
    /// VMs: thousands of them doubled the first interval's drain time at 10,000 tasks).
    pub fn prefault(&self) {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let base = self.ptr.as_ptr().cast::<u8>();
        for offset in (0..self.bytes).step_by(page) {
            // SAFETY: within the mapping.
            unsafe { std::ptr::read_volatile(base.add(offset)) };
        }
    }

    /// Pointer to element `index` (for volatile access), or None past the end.
    pub fn element(&self, index: usize) -> Option<*mut T> {
        // SAFETY: in bounds of the mapping (checked), which lives as long as self.
        (index < self.len).then(|| unsafe { self.ptr.as_ptr().add(index) })
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
