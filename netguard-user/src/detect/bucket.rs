//! Per-source counters of one tick ([`Bucket`]) and the state of a source's live flows ([`Gauges`]):
//! what the windows are made of, and where the per-flow rules of the feature schema live (which ports
//! count, what is half-open).

use std::net::IpAddr;

use netguard_common::{FlowKey, FlowStats, proto};

use super::{
    flows::FlowDelta,
    sketch::{Bits, hash16, mix64},
};

/// Counters of one source in one tick.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bucket {
    /// Tick this bucket holds; a ring slot holding an older tick is stale.
    pub tick: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Σ packets·(mean packet size of the flow)², for the size variance.
    pub size_sq: f64,
    pub syn: u32,
    pub syn_ack: u32,
    pub ack: u32,
    pub rst: u32,
    pub frags: u32,
    pub new_flows: u32,
    pub ssh_new: u32,
    pub tcp: u32,
    pub udp: u32,
    pub icmp: u32,
    pub failed_auth: u32,
    /// Distinct sources in this bucket (1, or more for the overflow aggregate).
    pub sources: u32,
    pub ports: Bits<4>,
    pub hosts: Bits<4>,
    /// Where this tick's traffic went, for the alert's `dst_ip`/`dst_port`.
    pub dest: Dest,
}

/// The destination of a source's traffic in one tick: one host (and one port, when all of its TCP/UDP
/// flows went to the same one), or several hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dest {
    #[default]
    Nothing,
    One {
        ip: IpAddr,
        port: Option<u16>,
    },
    Several,
}

impl Dest {
    /// `ip:port` joined in; `port` is None for traffic without ports (ICMP, fragments).
    pub fn add(&mut self, ip: IpAddr, port: Option<u16>) {
        *self = match *self {
            Dest::Nothing => Dest::One { ip, port },
            Dest::One { ip: i, port: p } if i == ip => Dest::One {
                ip,
                port: if p == port { p } else { None },
            },
            Dest::One { .. } | Dest::Several => Dest::Several,
        };
    }

    pub fn merge(&mut self, o: Dest) {
        match o {
            Dest::Nothing => {}
            Dest::One { ip, port } => self.add(ip, port),
            Dest::Several => *self = Dest::Several,
        }
    }

    /// The host, when there was one.
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            Dest::One { ip, .. } => Some(ip),
            _ => None,
        }
    }

    /// The port, when there was one host and one port.
    pub fn port(self) -> Option<u16> {
        match self {
            Dest::One { port, .. } => port,
            _ => None,
        }
    }
}

pub(crate) fn sat(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

impl Bucket {
    /// `salt` keys the distinct-count hashes: random per process, so that a scanner cannot pick ports
    /// that share one bit of the sketch to look like a single-port client.
    /// `ssh` says whether the flow's destination port is one of sshd's (`detect.features.ssh_ports`).
    pub fn add_flow(&mut self, key: &FlowKey, st: &FlowStats, d: &FlowDelta, salt: u64, ssh: bool) {
        self.packets += d.packets;
        self.bytes += d.bytes;
        if d.packets > 0 {
            self.size_sq += (d.bytes as f64) * (d.bytes as f64) / d.packets as f64;
        }
        self.syn = self.syn.saturating_add(sat(d.syn));
        self.syn_ack = self.syn_ack.saturating_add(sat(d.syn_ack));
        self.ack = self.ack.saturating_add(sat(d.ack));
        self.rst = self.rst.saturating_add(sat(d.rst));
        self.frags = self.frags.saturating_add(sat(d.frags));
        let p = sat(d.packets);
        match key.proto {
            proto::TCP => self.tcp = self.tcp.saturating_add(p),
            proto::UDP => self.udp = self.udp.saturating_add(p),
            proto::ICMP | proto::ICMPV6 => self.icmp = self.icmp.saturating_add(p),
            _ => {}
        }
        if d.new {
            self.new_flows = self.new_flows.saturating_add(1);
            if ssh && key.proto == proto::TCP && st.syn > 0 {
                self.ssh_new = self.ssh_new.saturating_add(1);
            }
        }
        if initiated_port(key, st) {
            self.ports.insert(mix64(
                salt ^ (u64::from(key.proto) << 16 | u64::from(key.dst_port)),
            ));
        }
        self.hosts.insert(mix64(salt ^ hash16(&key.dst)));
        if d.packets > 0 {
            let port = matches!(key.proto, proto::TCP | proto::UDP)
                .then_some(key.dst_port)
                .filter(|p| *p != 0);
            self.dest.add(crate::datapath::flow_dst(key), port);
        }
    }

    pub fn merge(&mut self, o: &Bucket) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.size_sq += o.size_sq;
        for (a, b) in [
            (&mut self.syn, o.syn),
            (&mut self.syn_ack, o.syn_ack),
            (&mut self.ack, o.ack),
            (&mut self.rst, o.rst),
            (&mut self.frags, o.frags),
            (&mut self.new_flows, o.new_flows),
            (&mut self.ssh_new, o.ssh_new),
            (&mut self.tcp, o.tcp),
            (&mut self.udp, o.udp),
            (&mut self.icmp, o.icmp),
            (&mut self.failed_auth, o.failed_auth),
            (&mut self.sources, o.sources),
        ] {
            *a = a.saturating_add(b);
        }
        self.ports.union(&o.ports);
        self.hosts.union(&o.hosts);
        self.dest.merge(o.dest);
    }

    pub fn active(&self) -> bool {
        self.packets > 0 || self.failed_auth > 0
    }
}

/// Whether a flow's destination port counts as a port the source reached out to. Replies to this host's
/// own connections are excluded: a SYN-ACK flow, or traffic from a well-known port to an ephemeral one
/// without a SYN (a server answering us). Port 0 is a fragment or portless protocol.
fn initiated_port(key: &FlowKey, st: &FlowStats) -> bool {
    let reply = key.src_port < 1024 && key.dst_port >= 1024;
    match key.proto {
        proto::TCP => key.dst_port != 0 && st.syn_ack == 0 && !(st.syn == 0 && reply),
        proto::UDP => key.dst_port != 0 && !reply,
        _ => false,
    }
}

/// State of the source's flows in the last snapshot (not a rate): flows active in the long window.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gauges {
    pub flows: u32,
    pub tcp_flows: u32,
    pub half_open: u32,
    pub syn_rst: u32,
}

impl Gauges {
    pub fn add_flow(&mut self, key: &FlowKey, st: &FlowStats) {
        self.flows += 1;
        if key.proto == proto::TCP {
            self.tcp_flows += 1;
            if st.syn > 0 && st.ack == 0 && st.syn_ack == 0 {
                if st.rst == 0 {
                    self.half_open += 1;
                } else {
                    self.syn_rst += 1;
                }
            }
        }
    }

    pub fn merge(&mut self, o: &Gauges) {
        self.flows += o.flows;
        self.tcp_flows += o.tcp_flows;
        self.half_open += o.half_open;
        self.syn_rst += o.syn_rst;
    }
}
