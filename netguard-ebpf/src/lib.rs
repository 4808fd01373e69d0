//! The NetGuard XDP program lives in `main.rs` (a `no_main` binary for the BPF target). This empty
//! library exists so that `netguard-user` can list the crate as a build-dependency: cargo then rebuilds
//! the user crate, and with it the embedded object, whenever the kernel crate changes.
#![no_std]
