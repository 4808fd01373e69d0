//! The daemon's configuration file (TOML). Every section is optional; missing keys take defaults.

use std::{path::Path, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{api::ApiConfig, datapath::DatapathConfig, detect::DetectConfig, events::EventsConfig};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This sensor's id in a fleet; default: the host name.
    pub sensor_id: Option<String>,
    pub datapath: DatapathConfig,
    pub store: StoreConfig,
    pub control: ControlSection,
    pub api: ApiConfig,
    pub detect: DetectConfig,
    /// Host events: exactly-once retention and failed-login thresholds (see `crate::events`).
    pub events: EventsConfig,
    /// What is never blocked, and how long handshakes and API sessions are remembered.
    pub trust: crate::trust::TrustConfig,
    /// `text` (default) or `json`: one JSON object per line (`--log-format` overrides it).
    pub log_format: crate::logging::LogFormat,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Redis URL for a fleet-shared store; absent means the embedded store. A URL with a password
    /// belongs in `redis_url_file` or `NETGUARD_REDIS_URL`, not here nor on the command line.
    pub redis: Option<String>,
    /// File holding the Redis URL (first line), e.g. /etc/netguard/redis.url with mode 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url_file: Option<PathBuf>,
    /// For `rediss://`: PEM file of the CA that signed the server's certificate (a private CA);
    /// without it the system's roots are used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca: Option<PathBuf>,
    /// Key prefix in Redis, so several fleets can share one server.
    pub redis_prefix: String,
    pub state_dir: PathBuf,
    /// Alert history kept (oldest trimmed).
    pub alert_cap: usize,
    /// Host-event fingerprints kept for deduplication; past it the soonest to expire go first.
    pub fingerprint_cap: usize,
    /// At SIGTERM/SIGINT, how long to wait for writes queued during a Redis outage to reach Redis;
    /// what is left is kept in the state dir and replayed at the next start.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_flush: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis: None,
            redis_url_file: None,
            redis_ca: None,
            redis_prefix: "netguard".into(),
            state_dir: PathBuf::from("/var/lib/netguard"),
            alert_cap: 100_000,
            fingerprint_cap: netguard_store::DEFAULT_FINGERPRINT_CAP,
            shutdown_flush: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// Largest bulk list request, in items.
    pub max_bulk: usize,
    /// Minimum time between two blocklist-hit alerts for one source, e.g. "60s".
    #[serde(with = "humantime_serde_compat")]
    pub hit_alert_cooldown: Duration,
    /// Caps on automatic blocks: per minute, and the share of the blocklist kept for people and feeds.
    pub auto_caps: crate::control::AutoCaps,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            max_bulk: 100_000,
            hit_alert_cooldown: Duration::from_secs(60),
            auto_caps: Default::default(),
        }
    }
}

/// Durations in the config file are humantime strings ("90s", "4h").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e} (use e.g. \"90s\", \"4h\")")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path}: {field} {problem}")]
    Invalid {
        path: String,
        field: &'static str,
        problem: String,
    },
    #[error("config file {path}: {field} {problem}")]
    InvalidField {
        path: String,
        field: String,
        problem: String,
    },
    #[error("config file {path}: {}", problems.join("; "))]
    OutOfRange { path: String, problems: Vec<String> },
    #[error("config file {path}: {source}")]
    Api {
        path: String,
        #[source]
        source: crate::api::ApiConfigError,
    },
}

/// Limits shared by durations: anything longer is a typo (and, past `chrono`'s range, an overflow
/// that would stop the daemon when the value is first used, long after the start).
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const DAY: Duration = Duration::from_secs(86_400);
const SECOND: Duration = Duration::from_secs(1);

impl Config {
    /// Every duration and count of every section against its range, each problem naming its key
    /// (`events.max_ban_time must be between 1s and 10years`). Checked at start, not at first use.
    pub fn out_of_range(&self) -> Vec<String> {
        let max_ttl = crate::control::request::MAX_TTL;
        let (st, c, d, e, t) = (
            &self.store,
            &self.control,
            &self.detect,
            &self.events,
            &self.trust,
        );
        let mut spans: Vec<(String, Duration, Duration, Duration)> = vec![
            (
                "store.shutdown_flush".into(),
                st.shutdown_flush,
                Duration::ZERO,
                Duration::from_secs(600),
            ),
            (
                "control.hit_alert_cooldown".into(),
                c.hit_alert_cooldown,
                Duration::ZERO,
                DAY,
            ),
            (
                "detect.alert_cooldown".into(),
                d.alert_cooldown,
                Duration::ZERO,
                DAY,
            ),
            (
                "detect.features.long_window".into(),
                d.features.long_window,
                SECOND,
                Duration::from_secs(3600),
            ),
            (
                "detect.features.tick".into(),
                d.features.tick,
                Duration::from_millis(10),
                Duration::from_secs(60),
            ),
            (
                "detect.features.flow_forget_after".into(),
                d.features.flow_forget_after,
                SECOND,
                DAY,
            ),
            (
                "detect.response.max_ttl".into(),
                d.response.max_ttl,
                SECOND,
                max_ttl,
            ),
            (
                "detect.response.offense_memory".into(),
                d.response.offense_memory,
                SECOND,
                YEAR,
            ),
            (
                "detect.response.forgeable_ttl".into(),
                d.response.forgeable_ttl,
                SECOND,
                max_ttl,
            ),
            ("events.retention".into(), e.retention, SECOND, YEAR),
            (
                "events.max_ban_time".into(),
                e.max_ban_time,
                SECOND,
                max_ttl,
            ),
            (
                "events.offense_memory".into(),
                e.offense_memory,
                SECOND,
                YEAR,
            ),
            (
                "trust.refresh".into(),
                t.refresh,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            ),
            (
                "trust.handshake_memory".into(),
                t.handshake_memory,
                Duration::ZERO,
                Duration::from_secs(30 * 86_400),
            ),
            (
                "trust.api_session".into(),
                t.api_session,
                Duration::ZERO,
                Duration::from_secs(30 * 86_400),
            ),
        ];
        spans.extend(
            d.response
                .ttl
                .iter()
                .map(|(class, v)| (format!("detect.response.ttl.{class}"), *v, SECOND, max_ttl)),
        );
        let counts: [(&str, u64, u64); 5] = [
            ("store.alert_cap", st.alert_cap as u64, 1),
            ("store.fingerprint_cap", st.fingerprint_cap as u64, 1),
            ("control.max_bulk", c.max_bulk as u64, 1),
            ("events.max_tracked", e.max_tracked as u64, 1),
            ("detect.max_tracked", d.max_tracked as u64, 1),
        ];
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let mut problems: Vec<String> = spans
            .into_iter()
            .filter(|(_, v, min, max)| v < min || v > max)
            .map(|(field, v, min, max)| {
                format!(
                    "{field} is {}; it must be between {} and {}",
                    show(v),
                    show(min),
                    show(max)
                )
            })
            .collect();
        problems.extend(
            counts
                .into_iter()
                .filter(|(_, v, min)| v < min)
                .map(|(field, v, min)| format!("{field} is {v}; it must be at least {min}")),
        );
        if d.features.long_window < d.features.tick {
            problems.push(format!(
                "detect.features.long_window ({}) is shorter than detect.features.tick ({})",
                show(d.features.long_window),
                show(d.features.tick)
            ));
        }
        problems
    }

    /// Reads and validates a config file. Unknown keys are errors, so a typo is not silently ignored.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        // The old tick-based failed-login rule now lives in [events]; old files keep working.
        let (text, moved) = crate::events::migrate_legacy(text);
        for note in moved {
            log::warn!("config file {path}: {note}");
        }
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let d = &self.datapath;
        let checks: [(&'static str, u32); 5] = [
            ("datapath.blocklist_v4_max", d.blocklist_v4_max),
            ("datapath.blocklist_v6_max", d.blocklist_v6_max),
            ("datapath.allowlist_v4_max", d.allowlist_v4_max),
            ("datapath.allowlist_v6_max", d.allowlist_v6_max),
            ("datapath.flows_max", d.flows_max),
        ];
        for (field, v) in checks {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    field,
                    problem: "must be at least 1".into(),
                });
            }
        }
        if d.events_bytes > 1 << 30 {
            return Err(ConfigError::Invalid {
                path: path.into(),
                field: "datapath.events_bytes",
                problem: format!("{} is over the 1 GiB limit", d.events_bytes),
            });
        }
        if let Err(problem) = self.control.auto_caps.validate() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                field: "control.auto_caps.reserved_share",
                problem,
            });
        }
        self.api.validate().map_err(|source| ConfigError::Api {
            path: path.into(),
            source,
        })?;
        let problems = self.out_of_range();
        if !problems.is_empty() {
            return Err(ConfigError::OutOfRange {
                path: path.into(),
                problems,
            });
        }
        if let Err(e) = self.detect.validate() {
            return Err(ConfigError::InvalidField {
                path: path.into(),
                field: String::new(),
                problem: e.to_string(),
            });
        }
        if let Err(errors) = self.events.validate() {
            let first = &errors[0];
            return Err(ConfigError::InvalidField {
                path: path.into(),
                field: first.field.clone(),
                problem: first.error.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.datapath.blocklist_v4_max, 1 << 20);
        assert_eq!(c.datapath.flows_max, 1 << 20);
    }

    #[test]
    fn sizes_are_read() {
        let c =
            Config::parse("[datapath]\nflows_max = 4096\nblocklist_v4_max = 10\n", "x").unwrap();
        assert_eq!(c.datapath.flows_max, 4096);
        assert_eq!(c.datapath.blocklist_v4_max, 10);
    }

    #[test]
    fn durations_out_of_range_are_named_at_start_all_at_once() {
        let e = Config::parse(
            "[events]\nmax_ban_time = \"1000000years\"\noffense_memory = \"0s\"\n[detect.response.ttl]\nport_scan = \"20years\"\n",
            "cfg.toml",
        )
        .unwrap_err()
        .to_string();
        for field in [
            "events.max_ban_time",
            "events.offense_memory",
            "detect.response.ttl.port_scan",
        ] {
            assert!(e.contains(field), "{field} missing from: {e}");
        }
        assert!(
            e.contains("cfg.toml") && e.contains("must be between"),
            "{e}"
        );
        assert!(Config::default().out_of_range().is_empty());
        let e = Config::parse("[trust]\nrefresh = \"1ms\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("trust.refresh"), "{e}");
        let e = Config::parse("[detect.features]\ntick = \"20s\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("long_window"), "{e}");
    }

    #[test]
    fn typo_is_an_error_naming_the_key() {
        let e = Config::parse("[datapath]\nflow_max = 1\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("flow_max"), "{e}");
    }

    #[test]
    fn store_and_control_sections() {
        let c = Config::parse(
            "sensor_id = \"vm-1\"\n[store]\nredis = \"redis://127.0.0.1:6390\"\n[control]\nhit_alert_cooldown = \"5s\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.sensor_id.as_deref(), Some("vm-1"));
        assert_eq!(c.store.redis.as_deref(), Some("redis://127.0.0.1:6390"));
        assert_eq!(c.control.hit_alert_cooldown, Duration::from_secs(5));
        assert_eq!(c.store.shutdown_flush, Duration::from_secs(5), "default");
        let c = Config::parse("[store]\nshutdown_flush = \"250ms\"\n", "x").unwrap();
        assert_eq!(c.store.shutdown_flush, Duration::from_millis(250));
        let e = Config::parse("[control]\nhit_alert_cooldown = \"soon\"\n", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn events_section_and_legacy_failed_auth_migration() {
        let c = Config::parse(
            "[events.per_vm]\nmax_retry = 3\n[events.vms.web-1]\nban_time = \"2h\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.events.per_vm.max_retry, 3);
        assert_eq!(
            c.events.per_vm.find_time,
            Duration::from_secs(600),
            "unset keys keep defaults"
        );
        assert_eq!(c.events.global.max_retry, 10);
        assert_eq!(
            c.events.vms["web-1"].ban_time,
            Some(Duration::from_secs(7200))
        );
        // The old tick rule is read as the per-VM rule, its per-sensor override as a VM override.
        let old = "[detect.rules.failed_auth]\nmax_retry = 4\nfind_time = \"5m\"\nclass = \"ssh_brute_force\"\n\
                   [detect.sensors.web-1.failed_auth]\nmax_retry = 0\n";
        let c = Config::parse(old, "x").unwrap();
        assert_eq!(
            (c.events.per_vm.max_retry, c.events.per_vm.find_time),
            (4, Duration::from_secs(300))
        );
        assert_eq!(
            c.events.vms["web-1"].enabled,
            Some(false),
            "max_retry 0 switched the rule off"
        );
        let e = Config::parse("[events.global]\nmax_retry = 0\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("events.global.max_retry"), "{e}");
        let e = Config::parse("[events.per_vm]\nfind_time = \"soon\"\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn agent_tokens_must_name_their_vm_and_the_rate_limit_is_read() {
        let tokens = "[[api.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"operator-token-0123456789\"\n\
                      [[api.tokens]]\nname = \"win-1\"\nrole = \"agent\"\ntoken = \"agent-token-one-0123456789\"\nvm_id = \"win-1\"\n\
                      [[api.tokens]]\nname = \"win-agents\"\nrole = \"agent\"\ntoken = \"agent-token-two-0123456789\"\n";
        let e = Config::parse(tokens, "cfg.toml").unwrap_err().to_string();
        assert!(
            e.contains("cfg.toml")
                && e.contains("api.tokens[2] (name \"win-agents\"): an agent token must name its VM: add vm_id = \"...\""),
            "{e}"
        );
        let fixed = format!(
            "{tokens}vm_id = \"win-2\"\n[api.events_rate_limit]\nper_second = 0.5\nburst = 4\n"
        );
        let c = Config::parse(&fixed, "cfg.toml").unwrap();
        assert_eq!(c.api.tokens[2].vm_id.as_deref(), Some("win-2"));
        assert_eq!(
            (
                c.api.events_rate_limit.per_second,
                c.api.events_rate_limit.burst
            ),
            (0.5, 4)
        );
        assert_eq!(
            Config::parse("", "x").unwrap().api.events_rate_limit.burst,
            20,
            "default burst"
        );
        let e = Config::parse("[api.events_rate_limit]\nper_second = 0\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.events_rate_limit.per_second"), "{e}");
    }

    #[test]
    fn zero_size_is_refused() {
        let e = Config::parse("[datapath]\nflows_max = 0\n", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("datapath.flows_max"), "{e}");
    }
}
