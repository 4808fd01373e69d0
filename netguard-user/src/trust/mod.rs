//! What the automatic response may never touch, and which sources have proven they are real.
//!
//! - [`NeverBlock`]: the addresses this host depends on (its own, its routes' next hops, its
//!   resolvers, its Redis server and fleet peers), the peers of authenticated sessions (an SSH login
//!   accepted in the log, while its connection lasts; API clients that presented a valid token) and
//!   `[trust] never_block` from the config. Every block goes through `Control::put`, which refuses
//!   one that overlaps the set unless `force` is given (automatic responses never give it).
//! - [`Handshakes`]: peers that completed a TCP handshake with this host, from the socket table. A
//!   forged source address never receives the SYN-ACK, so it cannot complete one; evidence from a
//!   source without a handshake (and without a log line) may be forged, and gets only a limited
//!   response (see `detect::engine`).
//!
//! Both are refreshed by [`spawn_refresh`] every `[trust] refresh` (2 s by default), so a new route,
//! resolver or fleet peer is protected within seconds, and a closed SSH session stops protecting its
//! peer.

pub mod derive;
pub mod refresh;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::control::request::overlaps;

/// Label under which a sensor publishes its own addresses in the fleet's sensor registry, so the
/// other sensors never block it.
pub const ADDRESSES_LABEL: &str = "netguard.addresses";

/// `[trust]` in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Addresses or CIDRs never blocked automatically, and refused for manual blocks without `force`.
    /// A bare address means /32 or /128, as in REST.
    #[serde(deserialize_with = "cidrs")]
    pub never_block: Vec<IpNet>,
    /// How often the derived set (addresses, routes, resolvers, fleet, sessions) is re-read.
    #[serde(with = "crate::detect::duration_str")]
    pub refresh: Duration,
    /// How long a peer that completed a TCP handshake counts as proven after its last socket closed.
    #[serde(with = "crate::detect::duration_str")]
    pub handshake_memory: Duration,
    /// How long an API client's address stays protected after its last request with a valid token.
    #[serde(with = "crate::detect::duration_str")]
    pub api_session: Duration,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            never_block: Vec::new(),
            refresh: Duration::from_secs(2),
            handshake_memory: Duration::from_secs(600),
            api_session: Duration::from_secs(3600),
        }
    }
}

fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            crate::control::request::parse_cidr(s)
                .map_err(|e| serde::de::Error::custom(format!("trust.never_block: {e}")))
        })
        .collect()
}

/// Where a never-block entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// An address of one of this host's interfaces.
    OwnAddress,
    /// The next hop (gateway) of one of this host's routes.
    RouteNextHop,
    /// A `nameserver` in /etc/resolv.conf.
    Resolver,
    /// The Redis server this sensor stores its state in.
    Redis,
    /// Another sensor sharing the store.
    FleetPeer,
    /// The peer of an SSH login accepted in the log, while its connection lasts.
    SshSession,
    /// A client that presented a valid API token.
    ApiClient,
    /// `[trust] never_block` in the config.
    Config,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::OwnAddress => "one of this host's own addresses",
            Origin::RouteNextHop => "the next hop of one of this host's routes",
            Origin::Resolver => "a resolver in /etc/resolv.conf",
            Origin::Redis => "the Redis server this sensor uses",
            Origin::FleetPeer => "another sensor of this fleet",
            Origin::SshSession => "the peer of an accepted SSH login",
            Origin::ApiClient => "a client that presented a valid API token",
            Origin::Config => "listed in [trust] never_block",
        }
    }
}

/// One never-block entry, as `GET /api/v1/never-block` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Protected {
    #[schema(value_type = String, example = "10.0.0.53/32")]
    pub cidr: IpNet,
    pub origin: Origin,
    /// Specifics: the interface, route, file, user or token name.
    pub detail: String,
    /// When a session-based entry lapses unless renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Protected {
    /// The refusal text, for alerts and 4xx answers.
    pub fn reason(&self) -> String {
        format!(
            "{} is {} ({})",
            self.cidr,
            self.origin.describe(),
            self.detail
        )
    }
}

#[derive(Default)]
struct Sets {
    /// Re-derived on every refresh.
    derived: Vec<Protected>,
    /// SSH logins accepted in the log, by (peer, peer port), until their connection is gone.
    ssh: BTreeMap<(IpAddr, u16), (String, Instant)>,
    /// API clients, by address: token name and when their last valid request came.
    api: HashMap<IpAddr, (String, DateTime<Utc>)>,
}

/// The never-block set; cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct NeverBlock {
    sets: Arc<RwLock<Sets>>,
    api_session: Arc<RwLock<Duration>>,
}

/// An accepted SSH login gets this long to show up in the socket table before it is dropped (the
/// log line can come before the refresh that sees the connection).
const SSH_GRACE: Duration = Duration::from_secs(10);

impl NeverBlock {
    pub fn new(api_session: Duration) -> Self {
        Self {
            sets: Default::default(),
            api_session: Arc::new(RwLock::new(api_session)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the derived part (everything but sessions).
    pub fn set_derived(&self, entries: Vec<Protected>) {
        self.write().derived = entries;
    }

    /// An SSH login was accepted from `ip`:`port`; protected while that connection lasts.
    pub fn ssh_accepted(&self, ip: IpAddr, port: u16, user: &str) {
        self.write()
            .ssh
            .insert((ip, port), (user.to_owned(), Instant::now()));
    }

    /// A request from `ip` presented a valid token named `token`.
    pub fn api_client(&self, ip: IpAddr, token: &str) {
        if ip.is_loopback() {
            return; // Loopback is never blocked anyway; keep the set readable.
        }
        let now = Utc::now();
        let mut s = self.write();
        match s.api.get_mut(&ip) {
            Some(e) if e.0 == token => e.1 = now,
            _ => {
                s.api.insert(ip, (token.to_owned(), now));
            }
        }
    }

    /// Drops SSH sessions whose connection is no longer established (after a short grace for
    /// connections the socket table has not shown yet) and API clients idle past the session time.
    pub fn prune(&self, established: &HashSet<(IpAddr, u16)>) {
        let session =
            chrono::Duration::from_std(*self.api_session.read().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        let mut s = self.write();
        s.ssh
            .retain(|k, (_, at)| established.contains(k) || at.elapsed() < SSH_GRACE);
        s.api.retain(|_, (_, at)| now - *at < session);
    }

    /// Every entry, most specific origin first per address.
    pub fn list(&self) -> Vec<Protected> {
        let session =
            chrono::Duration::from_std(*self.api_session.read().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or(chrono::Duration::MAX);
        let s = self.read();
        let mut out = s.derived.clone();
        out.extend(s.ssh.iter().map(|((ip, port), (user, _))| Protected {
            cidr: IpNet::from(*ip),
            origin: Origin::SshSession,
            detail: format!("user {user}, port {port}"),
            expires_at: None,
        }));
        out.extend(s.api.iter().map(|(ip, (token, at))| Protected {
            cidr: IpNet::from(*ip),
            origin: Origin::ApiClient,
            detail: format!("token {token}"),
            expires_at: at.checked_add_signed(session),
        }));
        out.sort_by_key(|p| (p.cidr, p.origin));
        out
    }

    /// The first entry that `net` overlaps (covers, or lies inside), if any.
    pub fn conflict(&self, net: &IpNet) -> Option<Protected> {
        let net = crate::control::request::canonical(net);
        self.list().into_iter().find(|p| overlaps(&p.cidr, &net))
    }
}

/// Peers that completed a TCP handshake with this host, remembered for a while after their last
/// socket closed.
#[derive(Clone)]
pub struct Handshakes {
    seen: Arc<RwLock<HashMap<IpAddr, Instant>>>,
    memory: Duration,
}

impl Handshakes {
    pub fn new(memory: Duration) -> Self {
        Self {
            seen: Default::default(),
            memory,
        }
    }

    /// Records the peers of a socket-table snapshot and forgets those unseen for `memory`.
    pub fn observe(&self, peers: impl IntoIterator<Item = IpAddr>) {
        let now = Instant::now();
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        for ip in peers {
            seen.insert(ip, now);
        }
        seen.retain(|_, t| now.duration_since(*t) < self.memory);
    }

    /// Whether `ip` completed a handshake with this host within the memory.
    pub fn proven(&self, ip: IpAddr) -> bool {
        self.seen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .is_some_and(|t| t.elapsed() < self.memory)
    }
}

/// The never-block set and the handshake record, shared by the control plane, the detector, the
/// host-event engine and the API.
#[derive(Clone)]
pub struct Trust {
    pub never_block: NeverBlock,
    pub handshakes: Handshakes,
}

impl Trust {
    pub fn new(cfg: &TrustConfig) -> Self {
        Self {
            never_block: NeverBlock::new(cfg.api_session),
            handshakes: Handshakes::new(cfg.handshake_memory),
        }
    }
}

impl Default for Trust {
    fn default() -> Self {
        Self::new(&TrustConfig::default())
    }
}

/// What the refresh needs besides the host's own files.
#[derive(Clone, Debug, Default)]
pub struct FleetFacts {
    /// Addresses of the Redis server (resolved from the URL's host).
    pub redis: Vec<IpAddr>,
    /// Other sensors' published addresses, by sensor id.
    pub peers: Vec<(String, IpAddr)>,
}

/// Builds the derived entries from one look at the host and the fleet.
pub fn derive_entries(
    host: &derive::HostFacts,
    fleet: &FleetFacts,
    cfg: &TrustConfig,
) -> Vec<Protected> {
    let one = |ip: IpAddr, origin, detail: String| Protected {
        cidr: IpNet::from(ip),
        origin,
        detail,
        expires_at: None,
    };
    let mut out = Vec::new();
    out.extend(
        host.own
            .iter()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| one(*ip, Origin::OwnAddress, "interface address".into())),
    );
    out.extend(
        host.next_hops
            .iter()
            .map(|ip| one(*ip, Origin::RouteNextHop, "from the routing table".into())),
    );
    out.extend(
        host.resolvers
            .iter()
            .map(|ip| one(*ip, Origin::Resolver, "/etc/resolv.conf".into())),
    );
    out.extend(
        fleet
            .redis
            .iter()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| one(*ip, Origin::Redis, "store.redis".into())),
    );
    out.extend(
        fleet
            .peers
            .iter()
            .map(|(id, ip)| one(*ip, Origin::FleetPeer, format!("sensor {id}"))),
    );
    out.extend(cfg.never_block.iter().map(|n| Protected {
        cidr: crate::control::request::canonical(&n.trunc()),
        origin: Origin::Config,
        detail: "trust.never_block".into(),
        expires_at: None,
    }));
    out
}

/// Host addresses worth publishing to the fleet: not loopback, not link-local.
pub fn publishable(own: &std::collections::BTreeSet<IpAddr>) -> Vec<IpAddr> {
    own.iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
