//! Library half of the eBPF crate: empty, so the user crate can name it as a build dependency
//! (cargo then rebuilds the kernel object when its dependencies change).
#![no_std]
