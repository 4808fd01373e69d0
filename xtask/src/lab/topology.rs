//! The lab network: a bridge namespace joining the sensor, two benign client namespaces and two
//! attacker namespaces, each by its own veth pair.
//!
//! Traffic rules, by construction: every veth pair is created inside the bridge namespace with its peer
//! placed straight into its host namespace, so no end ever sits in the host's namespace; addresses are
//! only in 10.230.0.0/16 and fd00:230::/64; the only routes are those two prefixes on the lab link (no
//! default route anywhere, so a reply to a spoofed source has nowhere to go and is dropped); and
//! `Drop` removes every namespace, killing what still runs in it. Namespaces named `nglab-*` are the
//! lab's alone, so any found at start are leftovers of a crashed run and are removed first.

use std::net::IpAddr;

use anyhow::{Context, Result};

use super::addrs::{self, Host};
use crate::{netns, util};

/// Every lab namespace starts with this; stale-namespace cleanup touches nothing else.
pub const NS_PREFIX: &str = "nglab-";
pub const BRIDGE_NS: &str = "nglab-br";
/// The device name inside every host namespace; namespaces are private, so one name fits all.
pub const HOST_IF: &str = "lab0";

/// The lab network; dropping it removes every namespace (and so every veth and process in them).
pub struct Topology {
    created: Vec<String>,
}

/// Removes `nglab-*` namespaces left by an earlier run that was killed before its cleanup ran.
pub fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(NS_PREFIX) {
            util::say(
                "lab",
                format!("removing stale namespace {name} from an earlier run"),
            );
            netns::remove(&name);
        }
    }
}

impl Topology {
    pub fn create() -> Result<Topology> {
        remove_stale();
        // The guard exists before the first namespace, so a half-built lab is torn down too.
        let mut topo = Topology {
            created: Vec::new(),
        };
        topo.add_ns(BRIDGE_NS)?;
        // The bridge namespace carries no addresses; with IPv6 off its ports send no router or
        // neighbour solicitations of their own into the recorded traffic.
        sysctl(BRIDGE_NS, &["net.ipv6.conf.all.disable_ipv6=1"])?;
        netns::ip(&["-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge"])?;
        // No multicast snooping: IPv6 neighbour discovery must reach every port without an IGMP/MLD
        // querier, which the lab does not run.
        netns::ip(&[
            "-n",
            BRIDGE_NS,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        netns::ip(&["-n", BRIDGE_NS, "link", "set", "br0", "up"])?;
        for host in addrs::HOSTS {
            topo.add_host(host)
                .with_context(|| format!("could not build lab host {}", host.ns))?;
        }
        Ok(topo)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        netns::ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        netns::ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn add_host(&mut self, host: &Host) -> Result<()> {
        let ns = host.ns;
        self.add_ns(ns)?;
        // No duplicate address detection: addresses must work the moment the link is up, or the first
        // IPv6 probes of a scenario are lost.
        sysctl(
            ns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        // Created in the bridge namespace with the peer moved straight into the host's namespace.
        netns::ip(&[
            "-n",
            BRIDGE_NS,
            "link",
            "add",
            host.port,
            "type",
            "veth",
            "peer",
            "name",
            host.dev(),
            "netns",
            ns,
        ])?;
        netns::ip(&["-n", BRIDGE_NS, "link", "set", host.port, "master", "br0"])?;
        netns::ip(&["-n", BRIDGE_NS, "link", "set", host.port, "up"])?;
        netns::ip(&["-n", ns, "link", "set", host.dev(), "up"])?;
        // /32 and /128 addresses add no routes of their own; the one route per family below, with an
        // explicit `src`, is what tools that cannot bind (hydra, medusa) use as their source.
        for a in host.v4 {
            netns::ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                host.dev(),
            ])?;
        }
        for a in host.v6 {
            netns::ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                host.dev(),
                "nodad",
            ])?;
        }
        set_source(ns, host.v4[0].into())?;
        set_source(ns, host.v6[0].into())?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Host namespaces first: deleting each removes its veth, and with it the bridge port.
        for ns in self.created.iter().rev() {
            netns::remove(ns);
        }
        let left: Vec<&String> = self.created.iter().filter(|n| netns::exists(n)).collect();
        if left.is_empty() {
            util::say(
                "lab",
                format!("removed {} lab namespaces", self.created.len()),
            );
        } else {
            eprintln!("warning: lab namespaces still present: {left:?}; see `ip netns list`");
        }
    }
}

/// Points the namespace's only route for `addr`'s family at the lab link with `addr` as the preferred
/// source. The prefixes are the lab's own: nothing else is reachable, and there is no default route.
pub fn set_source(ns: &str, addr: IpAddr) -> Result<()> {
    let (fam, prefix) = match addr {
        IpAddr::V4(_) => ("-4", addrs::LAB_V4_NET),
        IpAddr::V6(_) => ("-6", addrs::LAB_V6_NET),
    };
    netns::ip(&[
        "-n",
        ns,
        fam,
        "route",
        "replace",
        prefix,
        "dev",
        HOST_IF,
        "src",
        &addr.to_string(),
    ])
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["sysctl", "-qw"];
    args.extend_from_slice(settings);
    super::procs::output(ns, &args, std::time::Duration::from_secs(10)).map(|_| ())
}
