//! Carrying entries from an incompatible pinned map into its replacement, when only the map's size or
//! flags changed (same key and value layout, same layout version): list entries keep their hit
//! counters, flows their statistics, and the global counters their totals across a resize. The
//! control plane's reconcile then removes whatever the store no longer wants.

use std::{io, os::fd::AsRawFd as _, path::Path};

use aya::maps::MapInfo;
use netguard_common::maps;

use super::{batch, netlink::pinned_fd};

/// Maps whose contents carry over (the flags and /16 bitmap are rebuilt from the entries; the
/// event ring and budget are transient).
pub const CARRIED: [&str; 8] = [
    maps::BLOCK_V4,
    maps::BLOCK_V6,
    maps::BLOCK_HOST_V4,
    maps::BLOCK_HOST_V6,
    maps::ALLOW_V4,
    maps::ALLOW_V6,
    maps::FLOWS,
    maps::COUNTERS,
];

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(cmd: libc::c_long, fd: i32, key: *const u8, value: *mut u8) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key as u64,
        value: value as u64,
        ..Default::default()
    };
    // SAFETY: a valid bpf_attr for the element commands; the buffers have the map's sizes and
    // outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Possible CPUs, as the kernel sizes per-CPU values.
fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1).max(1)
}

/// Copies every element of the map pinned at `old` into the one pinned at `new`, when their key and
/// value sizes and types match. Stops quietly when the new map is full. Returns how many were copied.
pub fn copy(old: &Path, new: &Path) -> io::Result<usize> {
    let (Ok(a), Ok(b)) = (MapInfo::from_pin(old), MapInfo::from_pin(new)) else {
        return Ok(0);
    };
    let ty = |i: &MapInfo| i.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    if ty(&a) != ty(&b) || a.key_size() != b.key_size() || a.value_size() != b.value_size() {
        return Ok(0);
    }
    let per_cpu = matches!(
        ty(&a),
        BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
    );
    let value_size = if per_cpu {
        (a.value_size() as usize).next_multiple_of(8) * possible_cpus()
    } else {
        a.value_size() as usize
    };
    let (from, to) = (pinned_fd(old)?, pinned_fd(new)?);
    let mut key = vec![0u8; a.key_size() as usize];
    let mut next = vec![0u8; a.key_size() as usize];
    let mut value = vec![0u8; value_size];
    let mut first = true;
    let mut copied = 0;
    loop {
        let prev = if first {
            std::ptr::null()
        } else {
            key.as_ptr()
        };
        match elem(
            BPF_MAP_GET_NEXT_KEY,
            from.as_raw_fd(),
            prev,
            next.as_mut_ptr(),
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        match elem(
            BPF_MAP_LOOKUP_ELEM,
            from.as_raw_fd(),
            key.as_ptr(),
            value.as_mut_ptr(),
        ) {
            Ok(()) => {}
            // Deleted (or evicted) between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        match batch::update_elem(to.as_raw_fd(), &key, &value) {
            Ok(()) => copied += 1,
            // The new map is smaller: what the store wants is inserted by the reconcile anyway.
            Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)) => {
                return Ok(copied);
            }
            Err(e) => return Err(e),
        }
    }
}
