//! The netlink fallback for interfaces where XDP cannot be held by a bpf_link: attach, and swap
//! atomically with `XDP_FLAGS_REPLACE` and the expected program's fd, so a restart replaces exactly
//! the program netguard pinned (the kernel refuses if another one took its place) with no gap.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use super::AttachMode;

const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const IFLA_XDP: u16 = 43;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_FLAGS_REPLACE: u32 = 16;

fn mode_flags(mode: AttachMode) -> u32 {
    match mode {
        AttachMode::Driver => XDP_FLAGS_DRV_MODE,
        _ => XDP_FLAGS_SKB_MODE,
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// One RTM_SETLINK with an IFLA_XDP nest; waits for the kernel's ack.
fn set_xdp(ifindex: u32, fd: i32, flags: u32, expected: Option<RawFd>) -> io::Result<()> {
    let mut nest = Vec::new();
    attr(&mut nest, IFLA_XDP_FD, &fd.to_ne_bytes());
    attr(&mut nest, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    if let Some(e) = expected {
        attr(&mut nest, IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes());
    }
    let mut body = Vec::new();
    // struct ifinfomsg: family, pad, type, index, flags, change.
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nest);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);

    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the buffer and address are valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: reading into our buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
        let err = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return if err == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(-err))
        };
    }
    Err(io::Error::other("no netlink acknowledgement"))
}

/// Attaches `prog` through netlink, refusing to replace anything already there.
pub fn attach(ifindex: u32, prog: RawFd, mode: AttachMode) -> io::Result<()> {
    set_xdp(
        ifindex,
        prog,
        mode_flags(mode) | XDP_FLAGS_UPDATE_IF_NOEXIST,
        None,
    )
}

/// Swaps `prog` in for `expected` in one step; fails (EEXIST) if `expected` is no longer attached.
pub fn replace(ifindex: u32, prog: RawFd, expected: RawFd, mode: AttachMode) -> io::Result<()> {
    set_xdp(
        ifindex,
        prog,
        mode_flags(mode) | XDP_FLAGS_REPLACE,
        Some(expected),
    )
}

/// Removes `expected` (and only it) from the interface.
pub fn detach(ifindex: u32, expected: RawFd, mode: AttachMode) -> io::Result<()> {
    set_xdp(
        ifindex,
        -1,
        mode_flags(mode) | XDP_FLAGS_REPLACE,
        Some(expected),
    )
}

/// An fd for the BPF object pinned at `path` (BPF_OBJ_GET).
pub fn pinned_fd(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    #[derive(Default)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Explicit, so the bytes past `path_fd` are zero: the kernel refuses a bpf_attr whose
        // unused tail is not (EINVAL).
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjAttr,
            size_of::<ObjAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The interface index of `iface`, 0 if none.
pub fn ifindex(iface: &str) -> u32 {
    CString::new(iface)
        // SAFETY: a valid NUL-terminated string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
        .unwrap_or(0)
}
