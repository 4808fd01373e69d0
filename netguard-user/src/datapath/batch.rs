//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH`, which aya 0.14 does not wrap.
//!
//! Loading a million blocklist entries one `bpf_map_update_elem` at a time costs a million syscalls;
//! one batch call moves them in a single copy. Reading a million flows with `get_next_key` + lookup is
//! two syscalls per flow; a batch lookup moves thousands per call.

use std::{io, os::fd::RawFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size we pass; the pointers
    // inside it reference buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// True when the kernel (or this map type) has no batch support, so callers fall back to single-element
/// operations instead of failing.
pub fn unsupported(err: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code map types without batch ops return.
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(524)
    )
}

/// Updates `keys[i] -> values[i]` for all i in one syscall. `keys` and `values` are the raw bytes of
/// equally many fixed-size keys and values. Returns how many elements the kernel applied; on error the
/// elements before that count were applied.
pub fn update_batch(
    fd: RawFd,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> Result<(), (u32, io::Error)> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| (attr.count, e))
}

/// Reads every element of a hash-type map. `key_size` and `value_size` are the map's; `chunk` is how
/// many elements to ask for per syscall.
pub fn lookup_all(
    fd: RawFd,
    key_size: usize,
    value_size: usize,
    mut chunk: u32,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    // ENOSPC means one hash bucket holds more elements than `chunk` (a bucket cannot be split across
    // calls): read again from the start with a larger chunk. Buckets that long are rare.
    loop {
        match lookup_all_chunked(fd, key_size, value_size, chunk) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => chunk *= 4,
            other => return other,
        }
    }
}

fn lookup_all_chunked(
    fd: RawFd,
    key_size: usize,
    value_size: usize,
    chunk: u32,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut keys_out = Vec::new();
    let mut values_out = Vec::new();
    let mut keys = vec![0u8; key_size * chunk as usize];
    let mut values = vec![0u8; value_size * chunk as usize];
    // Hash maps use a bucket cursor (a u32); 8 bytes covers it. The first call passes no in_batch.
    let mut cursor_in = [0u8; 8];
    let mut cursor_out = [0u8; 8];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                cursor_in.as_mut_ptr() as u64
            },
            out_batch: cursor_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd as u32,
            ..Default::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        keys_out.extend_from_slice(&keys[..n * key_size]);
        values_out.extend_from_slice(&values[..n * value_size]);
        match res {
            Ok(()) => {}
            // ENOENT marks the end of the map, possibly with a last partial chunk already copied.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys_out, values_out)),
            Err(e) => return Err(e),
        }
        cursor_in = cursor_out;
        first = false;
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// The element-access member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One `bpf_map_update_elem`, for kernels or map types without batch support.
pub fn update_elem(fd: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: as in `bpf`; key and value outlive the call and have the map's sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
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
