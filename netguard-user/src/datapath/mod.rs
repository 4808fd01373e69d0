//! Typed access to the XDP program and its maps: load and size, attach and detach, blocklist and
//! allowlist CIDRs, flows, counters, ring-buffer events, and BPF_PROG_TEST_RUN for tests and benchmarks.

mod batch;
mod carry;
mod cidr;
mod error;
mod events;
mod netlink;
pub mod pin;
mod pinned;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap as _, Map, MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use ipnet::IpNet;
use netguard_common::{
    AllowValue, BlockValue, Counters, FAMILY_V4, FlowEvent, FlowKey, FlowStats, defaults, globals,
    maps, programs,
};
use serde::{Deserialize, Serialize};

pub use cidr::{CidrTable, HostLayer};
pub use error::DatapathError;
use error::PRIV_HINT;
pub use events::EventStream;

/// The compiled XDP object, built by build.rs. 8-byte alignment is what the ELF parser expects.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netguard"));

/// Map sizes and ring-buffer tuning, set before the maps are created (`[datapath]` in the config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatapathConfig {
    pub blocklist_v4_max: u32,
    pub blocklist_v6_max: u32,
    pub allowlist_v4_max: u32,
    pub allowlist_v6_max: u32,
    pub flows_max: u32,
    /// Ring buffer size in bytes; rounded up to a power of two of at least one page.
    pub events_bytes: u32,
    pub event_budget_per_ms: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            blocklist_v4_max: defaults::BLOCK_V4_MAX,
            blocklist_v6_max: defaults::BLOCK_V6_MAX,
            allowlist_v4_max: defaults::ALLOW_V4_MAX,
            allowlist_v6_max: defaults::ALLOW_V6_MAX,
            flows_max: defaults::FLOWS_MAX,
            events_bytes: defaults::EVENTS_BYTES,
            event_budget_per_ms: defaults::EVENT_BUDGET_PER_MS,
        }
    }
}

/// How to attach. `Auto` tries native (driver) XDP and falls back to generic (skb) XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Driver,
    Skb,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Driver => "driver",
            AttachMode::Skb => "skb",
        }
    }
}

/// The link that holds the program on the interface.
enum LinkHandle {
    /// Owned by the program (no pins): detached when the program is dropped.
    Owned(XdpLinkId),
    /// A bpf_link pinned in the pin directory: it outlives this process.
    Pinned(aya::programs::links::FdLink),
    /// Attached through netlink (no bpf_link here): stays attached, with no handle.
    Netlink,
}

struct Attachment {
    link: LinkHandle,
    iface: String,
    mode: AttachMode,
}

pub struct Datapath {
    ebpf: Ebpf,
    pub blocklist: CidrTable<BlockValue>,
    pub allowlist: CidrTable<AllowValue>,
    flows: HashMap<MapData, FlowKey, FlowStats>,
    counters: PerCpuArray<MapData, Counters>,
    events: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attachment: Option<Attachment>,
    config: DatapathConfig,
    /// Present when the state is pinned (`open_pinned`).
    pins: Option<pinned::Pins>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(take(ebpf, name)?).map_err(|source| DatapathError::MapType {
        map: name,
        source: Box::new(source),
    })
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Datapath {
    /// Creates the maps at the configured sizes and loads (verifies) both programs. Nothing is attached.
    pub fn load(config: &DatapathConfig) -> Result<Self, DatapathError> {
        Self::load_with(config, &[])
    }

    /// The ring buffer's size in bytes: a power of two of at least one page.
    fn events_bytes(config: &DatapathConfig) -> u32 {
        config.events_bytes.max(4096).next_power_of_two()
    }

    /// [`Datapath::load`] with the maps of `pins` opened from (or created at) those paths.
    fn load_with(
        config: &DatapathConfig,
        pins: &[(&'static str, std::path::PathBuf)],
    ) -> Result<Self, DatapathError> {
        let events_bytes = Self::events_bytes(config);
        let mut loader = EbpfLoader::new();
        for (name, path) in pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .map_max_entries(maps::BLOCK_V4, config.blocklist_v4_max)
            .map_max_entries(maps::BLOCK_V6, config.blocklist_v6_max)
            .map_max_entries(maps::BLOCK_HOST_V4, config.blocklist_v4_max)
            .map_max_entries(maps::BLOCK_HOST_V6, config.blocklist_v6_max)
            .map_max_entries(maps::ALLOW_V4, config.allowlist_v4_max)
            .map_max_entries(maps::ALLOW_V6, config.allowlist_v6_max)
            .map_max_entries(maps::FLOWS, config.flows_max)
            .map_max_entries(maps::EVENTS, events_bytes)
            .override_global(
                globals::EVENT_BUDGET_PER_MS,
                &config.event_budget_per_ms,
                true,
            )
            .load(OBJECT)
            .map_err(|source| {
                let hint = if is_eperm(&source) { PRIV_HINT } else { "" };
                DatapathError::Load {
                    source: Box::new(source),
                    hint,
                }
            })?;

        // The logger owns the AYA_LOGS map: it must live as long as the programs that write to it.
        // A failure is not fatal (the datapath works without its rare warnings), so it is only logged.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("eBPF logs unavailable: {e}");
                None
            }
        };

        for name in [programs::NETGUARD, programs::BASELINE_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingMap(name))?
                .try_into()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source: Box::new(source),
                    hint: "",
                })?;
            prog.load().map_err(|source| {
                let hint = if is_eperm(&source) { PRIV_HINT } else { "" };
                DatapathError::Program {
                    program: name,
                    source: Box::new(source),
                    hint,
                }
            })?;
        }

        let blocklist = CidrTable::new(
            "blocklist",
            typed(&mut ebpf, maps::BLOCK_V4)?,
            typed(&mut ebpf, maps::BLOCK_V6)?,
            Some(HostLayer {
                v4: typed(&mut ebpf, maps::BLOCK_HOST_V4)?,
                v6: typed(&mut ebpf, maps::BLOCK_HOST_V6)?,
                prefix16: typed(&mut ebpf, maps::PREFIX16_V4)?,
            }),
            typed(&mut ebpf, maps::TABLE_FLAGS)?,
            config.blocklist_v4_max,
            config.blocklist_v6_max,
        );
        let allowlist = CidrTable::new(
            "allowlist",
            typed(&mut ebpf, maps::ALLOW_V4)?,
            typed(&mut ebpf, maps::ALLOW_V6)?,
            None,
            typed(&mut ebpf, maps::ALLOW_FLAGS)?,
            config.allowlist_v4_max,
            config.allowlist_v6_max,
        );
        let flows = typed(&mut ebpf, maps::FLOWS)?;
        let counters = typed(&mut ebpf, maps::COUNTERS)?;
        let events = Some(typed(&mut ebpf, maps::EVENTS)?);
        Ok(Self {
            ebpf,
            blocklist,
            allowlist,
            flows,
            counters,
            events,
            logger,
            attachment: None,
            config: config.clone(),
            pins: None,
        })
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    fn program(&self, name: &'static str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("programs were checked at load")
    }

    fn program_mut(&mut self, name: &'static str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("programs were checked at load")
    }

    /// Attaches to `iface` in the calling thread's network namespace and returns the mode in use.
    /// With pinned state, swaps this program into the pinned link instead (see `open_pinned`).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, DatapathError> {
        if self.attachment.is_some() {
            self.detach()?;
        }
        if self.pins.is_some() {
            return self.attach_pinned(iface, mode);
        }
        let (link, used) = self.attach_fresh(iface, mode)?;
        self.attachment = Some(Attachment {
            link: LinkHandle::Owned(link),
            iface: iface.into(),
            mode: used,
        });
        Ok(used)
    }

    /// A new link (bpf_link where the kernel has it, else netlink), owned by the program.
    fn attach_fresh(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachMode), DatapathError> {
        let c_iface = std::ffi::CString::new(iface)
            .map_err(|_| DatapathError::NoSuchInterface(iface.into()))?;
        // SAFETY: a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_iface.as_ptr()) } == 0 {
            return Err(DatapathError::NoSuchInterface(iface.into()));
        }
        let prog = self.program_mut(programs::NETGUARD);
        let try_mode = |prog: &mut Xdp, m: AttachMode| -> Result<XdpLinkId, DatapathError> {
            let (flags, hint) = match m {
                AttachMode::Driver => (
                    XdpMode::Driver,
                    "The driver may lack native XDP support: try --xdp-mode skb (or auto)",
                ),
                _ => (
                    XdpMode::Skb,
                    "Another XDP program may already be attached (check `ip link show`), or the interface is down",
                ),
            };
            prog.attach(iface, flags).map_err(|source| {
                let hint = if is_eperm(&source) {
                    "Attaching needs root (CAP_NET_ADMIN)"
                } else {
                    hint
                };
                DatapathError::Attach {
                    iface: iface.into(),
                    mode: m.as_str(),
                    source: Box::new(source),
                    hint,
                }
            })
        };
        let (link, used) = match mode {
            AttachMode::Driver | AttachMode::Skb => (try_mode(prog, mode)?, mode),
            AttachMode::Auto => match try_mode(prog, AttachMode::Driver) {
                Ok(link) => (link, AttachMode::Driver),
                Err(e) => {
                    log::warn!(
                        "native XDP refused on {iface} ({e}); falling back to generic (skb) mode"
                    );
                    (try_mode(prog, AttachMode::Skb)?, AttachMode::Skb)
                }
            },
        };
        Ok((link, used))
    }

    /// Detaches from the interface. The maps stay loaded; with pinned state, every pin is removed
    /// too (the interface is left with nothing of NetGuard's).
    pub fn detach(&mut self) -> Result<(), DatapathError> {
        let Some(att) = self.attachment.take() else {
            return Err(DatapathError::NotAttached);
        };
        match att.link {
            LinkHandle::Owned(link) => {
                self.program_mut(programs::NETGUARD)
                    .detach(link)
                    .map_err(|source| DatapathError::Attach {
                        iface: att.iface,
                        mode: att.mode.as_str(),
                        source: Box::new(source),
                        hint: "the link may already be gone (interface deleted?)",
                    })
            }
            LinkHandle::Pinned(link) => {
                drop(link);
                self.remove_pins(&att.iface, false)
            }
            LinkHandle::Netlink => self.remove_pins(&att.iface, true),
        }
    }

    /// The interface and mode the program is attached with, if any.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attachment.as_ref().map(|a| (a.iface.as_str(), a.mode))
    }

    /// Runs the datapath once on `frame` (BPF_PROG_TEST_RUN) and returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        self.test_run_repeat(frame, 1).map(|(action, _)| action)
    }

    /// Runs the datapath `repeat` times on `frame`; returns the action and the kernel's mean time per run.
    pub fn test_run_repeat(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), DatapathError> {
        run(self.program(programs::NETGUARD), frame, repeat)
    }

    /// Like `test_run_repeat`, for the trivial `return XDP_PASS` program of the same object.
    pub fn baseline_test_run_repeat(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), DatapathError> {
        run(self.program(programs::BASELINE_PASS), frame, repeat)
    }

    pub fn block_insert(&mut self, net: IpNet) -> Result<(), DatapathError> {
        self.blocklist.insert_many(&[net]).map(|_| ())
    }
    pub fn block_insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        self.blocklist.insert_many(nets)
    }
    pub fn block_remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        self.blocklist.remove(net)
    }
    pub fn block_get(&self, net: IpNet) -> Result<Option<BlockValue>, DatapathError> {
        self.blocklist.get(net)
    }
    pub fn block_list(&self) -> Result<Vec<(IpNet, BlockValue)>, DatapathError> {
        self.blocklist.list()
    }
    pub fn allow_insert(&mut self, net: IpNet) -> Result<(), DatapathError> {
        self.allowlist.insert_many(&[net]).map(|_| ())
    }
    pub fn allow_insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        self.allowlist.insert_many(nets)
    }
    pub fn allow_remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        self.allowlist.remove(net)
    }
    pub fn allow_get(&self, net: IpNet) -> Result<Option<AllowValue>, DatapathError> {
        self.allowlist.get(net)
    }
    pub fn allow_list(&self) -> Result<Vec<(IpNet, AllowValue)>, DatapathError> {
        self.allowlist.list()
    }

    /// Every flow in the table, read with batched lookups (thousands per syscall).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, DatapathError> {
        let fd = self.flows.map().fd().as_fd().as_raw_fd();
        let (ks, vs) = (size_of::<FlowKey>(), size_of::<FlowStats>());
        match batch::lookup_all(fd, ks, vs, 4096) {
            Ok((keys, values)) => Ok(keys
                .chunks_exact(ks)
                .zip(values.chunks_exact(vs))
                // SAFETY: both types are Pod and the chunks are exactly their size.
                .map(|(k, v)| unsafe {
                    (
                        std::ptr::read_unaligned(k.as_ptr().cast::<FlowKey>()),
                        std::ptr::read_unaligned(v.as_ptr().cast::<FlowStats>()),
                    )
                })
                .collect()),
            Err(e) if batch::unsupported(&e) => self
                .flows
                .iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| DatapathError::Map {
                    op: "iterate",
                    map: maps::FLOWS,
                    detail: String::new(),
                    source: Box::new(source),
                }),
            Err(source) => Err(DatapathError::Syscall {
                op: "BPF_MAP_LOOKUP_BATCH",
                map: maps::FLOWS,
                applied: 0,
                source,
            }),
        }
    }

    /// The global counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(|source| DatapathError::Map {
                op: "lookup",
                map: maps::COUNTERS,
                detail: "slot 0".into(),
                source: Box::new(source),
            })?;
        let mut total = Counters::default();
        for cpu in per_cpu.iter() {
            for (t, v) in total.v.iter_mut().zip(cpu.v.iter()) {
                *t += v;
            }
        }
        Ok(total)
    }

    /// Reads up to `max` pending ring-buffer events without blocking (tests and polling callers).
    /// Returns nothing once `event_stream` has taken the ring buffer.
    pub fn drain_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError> {
        let Some(ring) = self.events.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            if let Some(ev) = events::decode(&item) {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Hands the ring buffer to an async reader (AsyncFd), for the daemon. Call once, inside a tokio
    /// runtime.
    pub fn event_stream(&mut self) -> Option<std::io::Result<EventStream>> {
        self.events.take().map(EventStream::new)
    }

    /// Moves pending eBPF log records to the `log` crate.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DatapathError> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    let res = prog
        .test_run(opts)
        .map_err(|e| DatapathError::TestRun(Box::new(e)))?;
    Ok((res.return_value, res.duration))
}

/// Source address of a flow key.
pub fn flow_src(key: &FlowKey) -> IpAddr {
    addr(key.family, &key.src)
}

/// Destination address of a flow key.
pub fn flow_dst(key: &FlowKey) -> IpAddr {
    addr(key.family, &key.dst)
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}
