use std::collections::{BTreeSet, HashSet};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn host() -> derive::HostFacts {
    derive::HostFacts {
        own: BTreeSet::from([ip("127.0.0.1"), ip("10.9.0.1"), ip("fe80::1")]),
        next_hops: BTreeSet::from([ip("10.9.0.254")]),
        resolvers: BTreeSet::from([ip("10.9.0.53")]),
        sockets: Vec::new(),
    }
}

#[test]
fn the_set_names_where_each_address_came_from() {
    let cfg = TrustConfig {
        never_block: vec![net("192.0.2.0/28"), net("::ffff:198.51.100.7/128")],
        ..TrustConfig::default()
    };
    let fleet = FleetFacts {
        redis: vec![ip("10.8.0.2"), ip("127.0.0.1")],
        peers: vec![("web-2".into(), ip("10.8.0.3"))],
    };
    let nb = NeverBlock::default();
    nb.set_derived(derive_entries(&host(), &fleet, &cfg));
    let origin = |s: &str| nb.conflict(&net(s)).map(|p| p.origin);
    assert_eq!(origin("10.9.0.1/32"), Some(Origin::OwnAddress));
    assert_eq!(origin("10.9.0.254/32"), Some(Origin::RouteNextHop));
    assert_eq!(origin("10.9.0.53/32"), Some(Origin::Resolver));
    assert_eq!(origin("10.8.0.2/32"), Some(Origin::Redis));
    assert_eq!(origin("10.8.0.3/32"), Some(Origin::FleetPeer));
    assert_eq!(origin("192.0.2.5/32"), Some(Origin::Config));
    assert_eq!(
        origin("198.51.100.7/32"),
        Some(Origin::Config),
        "a v4-mapped entry protects the IPv4 address"
    );
    assert_eq!(
        origin("::ffff:10.9.0.53/128"),
        Some(Origin::Resolver),
        "and a v4-mapped request is the IPv4 address"
    );
    // A block covering a protected address conflicts too, in either direction.
    assert_eq!(origin("10.9.0.0/24"), Some(Origin::OwnAddress));
    assert_eq!(origin("192.0.2.0/24"), Some(Origin::Config));
    assert_eq!(origin("10.9.1.7/32"), None);
    assert_eq!(
        origin("127.0.0.1/32"),
        None,
        "loopback never reaches XDP as a source; it is not listed"
    );
    let reason = nb.conflict(&net("10.9.0.53/32")).unwrap().reason();
    assert!(
        reason.contains("a resolver in /etc/resolv.conf"),
        "{reason}"
    );
}

#[test]
fn ssh_sessions_last_as_long_as_their_connection() {
    let nb = NeverBlock::default();
    nb.ssh_accepted(ip("10.9.0.7"), 40000, "alice");
    assert_eq!(
        nb.conflict(&net("10.9.0.7/32")).unwrap().origin,
        Origin::SshSession
    );
    // Still established: kept.
    nb.prune(&HashSet::from([(ip("10.9.0.7"), 40000)]));
    assert!(nb.conflict(&net("10.9.0.7/32")).is_some());
    // Gone, but within the grace after the log line: kept (the socket table may lag the log).
    nb.prune(&HashSet::new());
    assert!(nb.conflict(&net("10.9.0.7/32")).is_some());
    // Older than the grace and gone: dropped.
    nb.write().ssh.values_mut().for_each(|v| v.1 -= SSH_GRACE);
    nb.prune(&HashSet::new());
    assert!(nb.conflict(&net("10.9.0.7/32")).is_none());
}

#[test]
fn api_clients_are_protected_for_the_session_time() {
    let nb = NeverBlock::new(Duration::from_secs(3600));
    nb.api_client(ip("10.9.0.8"), "ops");
    nb.api_client(ip("127.0.0.1"), "ops");
    let p = nb.conflict(&net("10.9.0.8/32")).unwrap();
    assert_eq!(
        (p.origin, p.detail.as_str()),
        (Origin::ApiClient, "token ops")
    );
    assert!(p.expires_at.is_some());
    assert_eq!(nb.list().len(), 1, "loopback clients are not listed");
    nb.write()
        .api
        .values_mut()
        .for_each(|v| v.1 -= chrono::Duration::hours(2));
    nb.prune(&HashSet::new());
    assert!(nb.conflict(&net("10.9.0.8/32")).is_none());
}

#[test]
fn handshakes_are_remembered_for_a_while() {
    let h = Handshakes::new(Duration::from_millis(200));
    h.observe([ip("10.9.0.2")]);
    assert!(h.proven(ip("10.9.0.2")));
    assert!(!h.proven(ip("10.9.0.3")));
    std::thread::sleep(Duration::from_millis(250));
    assert!(!h.proven(ip("10.9.0.2")));
}

#[test]
fn only_routable_addresses_are_published() {
    let own = BTreeSet::from([
        ip("127.0.0.1"),
        ip("10.9.0.1"),
        ip("fe80::1"),
        ip("2001:db8::1"),
        ip("169.254.1.1"),
    ]);
    assert_eq!(publishable(&own), [ip("10.9.0.1"), ip("2001:db8::1")]);
}

#[test]
fn the_config_takes_bare_addresses_and_cidrs() {
    let c: TrustConfig = toml::from_str(
        "never_block = [\"10.0.0.7\", \"192.0.2.0/24\", \"2001:db8::1\"]\nrefresh = \"1s\"\n",
    )
    .unwrap();
    assert_eq!(
        c.never_block,
        [
            net("10.0.0.7/32"),
            net("192.0.2.0/24"),
            net("2001:db8::1/128")
        ]
    );
    let e = toml::from_str::<TrustConfig>("never_block = [\"10.0.0.1/24\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("trust.never_block"), "{e}");
    assert!(toml::from_str::<TrustConfig>("never_block = [\"nope\"]").is_err());
}
