//! Ring-buffer events from the XDP program, read without blocking or through tokio's AsyncFd.

use aya::maps::{MapData, RingBuf};
use netguard_common::FlowEvent;
use tokio::io::unix::AsyncFd;

/// Decodes one ring-buffer record. A record of the wrong size means the object and this binary
/// disagree on the layout; it is skipped rather than misread.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is Pod and the slice holds at least that many bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// The ring buffer registered with tokio: `next_batch` sleeps until the kernel signals data.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    /// Must be called inside a tokio runtime (the fd is registered with its reactor).
    pub(super) fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as it lives,
        // and the AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register(ring) }?;
        Ok(Self { fd })
    }

    /// Waits for events and returns everything available (at least one event, at most `max`).
    pub async fn next_batch(&mut self, max: usize) -> std::io::Result<Vec<FlowEvent>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while out.len() < max {
                let Some(item) = ring.next() else { break };
                if let Some(ev) = decode(&item) {
                    out.push(ev);
                }
            }
            // Only clear readiness when the buffer was drained; otherwise the next call reads on.
            if out.len() < max {
                guard.clear_ready();
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
