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
    #[error("config file {path}: {source}")]
    Api {
        path: String,
        #[source]
        source: crate::api::ApiConfigError,
    },
}

impl Config {
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
