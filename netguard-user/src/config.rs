//! The daemon's configuration file (TOML). Every section is optional; missing keys take defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::datapath::DatapathConfig;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub datapath: DatapathConfig,
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
}

impl Config {
    /// Reads and validates a config file. Unknown keys are errors, so a typo is not silently ignored.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
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
        let c = Config::parse("[datapath]\nflows_max = 4096\nblocklist_v4_max = 10\n", "x").unwrap();
        assert_eq!(c.datapath.flows_max, 4096);
        assert_eq!(c.datapath.blocklist_v4_max, 10);
    }

    #[test]
    fn typo_is_an_error_naming_the_key() {
        let e = Config::parse("[datapath]\nflow_max = 1\n", "cfg.toml").unwrap_err().to_string();
        assert!(e.contains("cfg.toml") && e.contains("flow_max"), "{e}");
    }

    #[test]
    fn zero_size_is_refused() {
        let e = Config::parse("[datapath]\nflows_max = 0\n", "c").unwrap_err().to_string();
        assert!(e.contains("datapath.flows_max"), "{e}");
    }
}
