//! Keeps [`Trust`] current: re-reads the host's addresses, routes, resolvers and socket table, the
//! Redis server's address and the fleet's published addresses, and publishes this sensor's own.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use netguard_store::{Sensor, Store};

use super::{ADDRESSES_LABEL, FleetFacts, Trust, TrustConfig, derive, derive_entries, publishable};

/// The host part of a Redis URL (`redis://[user[:pass]@]host[:port][/db]`, `rediss://...`); None
/// for a unix socket. Never logs the URL: it may hold a password.
pub fn redis_host(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("rediss://")
        .or_else(|| url.strip_prefix("redis://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once(']')?;
        (h.to_owned(), p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = port.map_or(Some(6379), |p| p.parse().ok())?;
    (!host.is_empty()).then_some((host, port))
}

/// Everything the refresh reads besides the host.
pub struct RefreshContext {
    pub trust: Trust,
    pub cfg: TrustConfig,
    pub store: Arc<dyn Store>,
    pub sensor_id: String,
    /// Set when the store is a Redis shared by a fleet.
    pub redis_url: Option<String>,
}

impl RefreshContext {
    /// One refresh; the daemon runs it once before detection starts, then every `cfg.refresh`.
    pub async fn refresh(&self, published: &mut Vec<IpAddr>) {
        let host = tokio::task::spawn_blocking(derive::read_host)
            .await
            .unwrap_or_default();
        let mut fleet = FleetFacts::default();
        if let Some((h, port)) = self.redis_url.as_deref().and_then(redis_host) {
            match tokio::net::lookup_host((h.as_str(), port)).await {
                Ok(addrs) => fleet.redis = addrs.map(|a| a.ip()).collect(),
                Err(e) => log::debug!("never-block: cannot resolve the Redis host: {e}"),
            }
        }
        if self.redis_url.is_some() {
            self.publish(&host, published).await;
            match self.store.list_sensors().await {
                Ok(sensors) => {
                    for s in sensors.iter().filter(|s| s.id != self.sensor_id) {
                        let addrs = s.labels.get(ADDRESSES_LABEL).map_or("", String::as_str);
                        fleet.peers.extend(
                            addrs
                                .split(',')
                                .filter_map(|a| a.trim().parse().ok())
                                .map(|ip| (s.id.clone(), ip)),
                        );
                    }
                }
                Err(e) => log::debug!("never-block: cannot read the fleet's sensors: {e}"),
            }
        }
        self.trust
            .never_block
            .set_derived(derive_entries(&host, &fleet, &self.cfg));
        self.trust.handshakes.observe(
            host.sockets
                .iter()
                .filter(|s| s.handshake_done())
                .map(|s| s.remote.0),
        );
        let established: HashSet<(IpAddr, u16)> = host
            .sockets
            .iter()
            .filter(|s| s.established())
            .map(|s| s.remote)
            .collect();
        self.trust.never_block.prune(&established);
    }

    /// Publishes this sensor's addresses in the fleet registry when they changed, keeping whatever
    /// else the registry holds about it (a name and labels given through `/vms`).
    async fn publish(&self, host: &derive::HostFacts, published: &mut Vec<IpAddr>) {
        let mine = publishable(&host.own);
        if mine == *published {
            return;
        }
        let existing = match self.store.list_sensors().await {
            Ok(all) => all.into_iter().find(|s| s.id == self.sensor_id),
            Err(e) => {
                log::debug!("never-block: cannot read the sensor registry: {e}");
                return;
            }
        };
        let mut sensor = existing.unwrap_or_else(|| Sensor {
            id: self.sensor_id.clone(),
            name: None,
            registered_at: chrono::Utc::now(),
            labels: Default::default(),
        });
        let text = mine
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sensor.labels.insert(ADDRESSES_LABEL.into(), text);
        match self.store.put_sensor(&sensor).await {
            Ok(()) => *published = mine,
            Err(e) => log::warn!(
                "could not publish this sensor's addresses to the fleet (they stay unprotected on the other sensors until it works): {e}"
            ),
        }
    }
}

/// Refreshes forever, every `cfg.refresh`.
pub async fn run(ctx: RefreshContext, mut published: Vec<IpAddr>) {
    let mut every =
        tokio::time::interval(ctx.cfg.refresh.max(std::time::Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        ctx.refresh(&mut published).await;
    }
}

#[cfg(test)]
mod tests {
    use super::redis_host;

    #[test]
    fn redis_hosts_from_urls_without_their_secrets() {
        let h = |u: &str| redis_host(u);
        assert_eq!(
            h("redis://10.9.0.2:6390/0"),
            Some(("10.9.0.2".into(), 6390))
        );
        assert_eq!(
            h("rediss://user:s3cret@cache.lab:6380"),
            Some(("cache.lab".into(), 6380))
        );
        assert_eq!(h("redis://:p@ss@10.0.0.1"), Some(("10.0.0.1".into(), 6379)));
        assert_eq!(
            h("redis://[2001:db8::2]:7000/1"),
            Some(("2001:db8::2".into(), 7000))
        );
        assert_eq!(h("unix:///run/redis.sock"), None);
        assert_eq!(h("redis://"), None);
    }
}
