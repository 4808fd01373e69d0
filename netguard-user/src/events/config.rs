//! `[events]`: how long fingerprints are remembered and the failed-login thresholds, global and per VM.
//!
//! ```toml
//! [events]
//! retention = "24h"            # a fingerprint seen within this window is a duplicate
//! on_success = "annotate"      # or "reset": what a successful login from the source does
//!
//! [events.global]              # failures from one IP across all VMs -> block everywhere
//! max_retry = 10
//! find_time = "10m"
//! ban_time = "1h"
//!
//! [events.per_vm]              # failures from one IP against one VM -> block scoped to that VM
//! max_retry = 5
//! find_time = "10m"
//! ban_time = "1h"
//!
//! [events.vms.web-1]           # per-VM override: only the keys given replace `per_vm`'s
//! max_retry = 3
//! ```
//!
//! The thresholds part ([`Thresholds`]) is also what `GET/PUT /api/v1/thresholds` read and replace.
//! The old tick-based `[detect.rules.failed_auth]` and `[detect.sensors.ID.failed_auth]` are
//! migrated here when the config is loaded ([`migrate_legacy`]).

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::control::FieldError;

/// Durations as humantime text ("10m", "1h") in the config file and in the API's JSON.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => super::super::parse_duration(&s)
                    .map(Some)
                    .map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. \"90s\", \"10m\", \"1h\""))
}

/// What a successful login from a source does to its failure counts.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnSuccess {
    /// Keep counting (fail2ban's behaviour: an attacker who owns one account cannot wipe its
    /// record by logging in), and note the success in the source's next alert, where a login after
    /// a run of failures is the interesting part.
    #[default]
    Annotate,
    /// Forget the source's failures against that VM (and across VMs): a user who mistyped a
    /// password a few times and then got it right starts from zero.
    Reset,
}

/// One threshold: `max_retry` failures within `find_time` block the source for `ban_time`
/// (fail2ban's maxretry / findtime / bantime).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures that trigger the block; the block is made on exactly this failure.
    #[schema(example = 5, minimum = 1)]
    pub max_retry: u32,
    /// The sliding window the failures must fall in, e.g. "10m".
    #[serde(with = "duration_text")]
    #[schema(value_type = String, example = "10m")]
    pub find_time: Duration,
    /// How long the first block lasts, e.g. "1h"; repeat offences multiply it.
    #[serde(with = "duration_text")]
    #[schema(value_type = String, example = "1h")]
    pub ban_time: Duration,
}

fn yes() -> bool {
    true
}

impl Rule {
    pub fn new(max_retry: u32, find_time: Duration, ban_time: Duration) -> Self {
        Rule {
            enabled: true,
            max_retry,
            find_time,
            ban_time,
        }
    }

    /// The documented default per-VM rule: 5 failures within 10 minutes, banned for 1 hour.
    pub fn per_vm_default() -> Self {
        Rule::new(5, Duration::from_secs(600), Duration::from_secs(3600))
    }

    /// The documented default global rule: 10 failures across all VMs within 10 minutes, 1 hour.
    pub fn global_default() -> Self {
        Rule::new(10, Duration::from_secs(600), Duration::from_secs(3600))
    }

    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        if self.max_retry == 0 {
            errors.push(FieldError::new(
                format!("{at}.max_retry"),
                "must be at least 1 (set `enabled = false` to switch the rule off)",
            ));
        }
        if self.max_retry > MAX_RETRY_LIMIT {
            errors.push(FieldError::new(
                format!("{at}.max_retry"),
                format!("{} is over the limit of {MAX_RETRY_LIMIT}", self.max_retry),
            ));
        }
        check_span(&format!("{at}.find_time"), self.find_time, errors);
        check_span(&format!("{at}.ban_time"), self.ban_time, errors);
    }
}

/// Largest `max_retry`: the tracker keeps this many timestamps per source.
pub const MAX_RETRY_LIMIT: u32 = 10_000;
/// Longest `find_time` / `ban_time` accepted.
pub const MAX_SPAN: Duration = Duration::from_secs(365 * 86_400);

fn check_span(field: &str, d: Duration, errors: &mut Vec<FieldError>) {
    if d < Duration::from_secs(1) {
        errors.push(FieldError::new(field, "must be at least 1s, e.g. \"10m\""));
    } else if d > MAX_SPAN {
        errors.push(FieldError::new(field, "must be at most 365d"));
    }
}

/// A per-VM override: each key given replaces the `per_vm` rule's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry: Option<u32>,
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5m")]
    pub find_time: Option<Duration>,
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "4h")]
    pub ban_time: Option<Duration>,
}

impl RuleOverride {
    /// `base` with this override's keys applied.
    pub fn apply(&self, base: &Rule) -> Rule {
        Rule {
            enabled: self.enabled.unwrap_or(base.enabled),
            max_retry: self.max_retry.unwrap_or(base.max_retry),
            find_time: self.find_time.unwrap_or(base.find_time),
            ban_time: self.ban_time.unwrap_or(base.ban_time),
        }
    }
}

/// The thresholds in force: what `GET /api/v1/thresholds` shows and `PUT` replaces as a whole.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Failures from one IP across every VM: a global block.
    pub global: Rule,
    /// Failures from one IP against one VM: a block scoped to that VM.
    pub per_vm: Rule,
    /// Per-VM overrides of `per_vm`, by VM (sensor) id.
    #[serde(default)]
    pub vms: BTreeMap<String, RuleOverride>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            global: Rule::global_default(),
            per_vm: Rule::per_vm_default(),
            vms: BTreeMap::new(),
        }
    }
}

impl Thresholds {
    /// The per-VM rule in force for `vm`.
    pub fn for_vm(&self, vm: &str) -> Cow<'_, Rule> {
        match self.vms.get(vm) {
            Some(o) => Cow::Owned(o.apply(&self.per_vm)),
            None => Cow::Borrowed(&self.per_vm),
        }
    }

    /// The longest find time of any rule: how far back failures can matter.
    pub fn longest_find_time(&self) -> Duration {
        self.vms
            .values()
            .filter_map(|o| o.find_time)
            .chain([self.global.find_time, self.per_vm.find_time])
            .max()
            .unwrap_or_default()
    }

    /// Every problem, each named by its field (`per_vm.max_retry`, `vms.web-1.find_time`).
    pub fn validate(&self, prefix: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        self.global
            .validate(&format!("{prefix}global"), &mut errors);
        self.per_vm
            .validate(&format!("{prefix}per_vm"), &mut errors);
        for (vm, o) in &self.vms {
            let at = format!("{prefix}vms.{vm}");
            if let Err(e) = netguard_store::types::validate_sensor_id(vm) {
                errors.push(FieldError::new(at.clone(), e.to_string()));
                continue;
            }
            o.apply(&self.per_vm).validate(&at, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// `[events]` in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// How long an event's fingerprint is remembered: the same event posted again within this
    /// window is acknowledged as a duplicate and not counted again.
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Most events one `POST /api/v1/events` may carry (413 above).
    pub max_batch: usize,
    pub on_success: OnSuccess,
    /// Each repeat offence (within `offense_memory`) multiplies the ban time...
    pub escalation_factor: f64,
    /// ...up to this.
    #[serde(with = "duration_text")]
    pub max_ban_time: Duration,
    /// Offences older than this are forgotten.
    #[serde(with = "duration_text")]
    pub offense_memory: Duration,
    /// Sources (and source/VM pairs) whose failures are tracked at most; the stalest are dropped.
    pub max_tracked: usize,
    /// Keys left out keep the documented defaults ([`Rule::global_default`]).
    #[serde(deserialize_with = "global_rule")]
    pub global: Rule,
    /// Keys left out keep the documented defaults ([`Rule::per_vm_default`]).
    #[serde(deserialize_with = "per_vm_rule")]
    pub per_vm: Rule,
    pub vms: BTreeMap<String, RuleOverride>,
}

fn global_rule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
    Ok(RuleOverride::deserialize(d)?.apply(&Rule::global_default()))
}

fn per_vm_rule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
    Ok(RuleOverride::deserialize(d)?.apply(&Rule::per_vm_default()))
}

impl Default for EventsConfig {
    fn default() -> Self {
        let t = Thresholds::default();
        EventsConfig {
            retention: Duration::from_secs(24 * 3600),
            max_batch: 10_000,
            on_success: OnSuccess::Annotate,
            escalation_factor: 2.0,
            max_ban_time: Duration::from_secs(7 * 86_400),
            offense_memory: Duration::from_secs(86_400),
            max_tracked: 100_000,
            global: t.global,
            per_vm: t.per_vm,
            vms: t.vms,
        }
    }
}

impl EventsConfig {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            global: self.global.clone(),
            per_vm: self.per_vm.clone(),
            vms: self.vms.clone(),
        }
    }

    /// Every problem, named by its config key (`events.per_vm.max_retry`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = self
            .thresholds()
            .validate("events.")
            .err()
            .unwrap_or_default();
        if self.retention < Duration::from_secs(1) || self.retention > MAX_SPAN {
            errors.push(FieldError::new(
                "events.retention",
                "must be between 1s and 365d, e.g. \"24h\"",
            ));
        }
        if self.max_batch == 0 {
            errors.push(FieldError::new("events.max_batch", "must be at least 1"));
        }
        if !(self.escalation_factor >= 1.0 && self.escalation_factor.is_finite()) {
            errors.push(FieldError::new(
                "events.escalation_factor",
                "must be a number >= 1 (1 = no escalation)",
            ));
        }
        if self.max_tracked == 0 {
            errors.push(FieldError::new("events.max_tracked", "must be at least 1"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Moves the old tick-based failed-login rule into `[events]`, so old config files keep working:
/// `[detect.rules.failed_auth]` (max_retry, find_time) fills the keys `[events.per_vm]` does not set
/// (it counted failures against this sensor, which is the per-VM rule), and
/// `[detect.sensors.ID.failed_auth]` becomes `[events.vms.ID]`. Its `class` key is dropped: the
/// class now follows the service (`ssh_brute_force` for SSH, `brute_force` otherwise). Returns the
/// text unchanged when there is nothing to migrate, and one warning line per moved section.
pub fn migrate_legacy(text: &str) -> (Cow<'_, str>, Vec<String>) {
    if !text.contains("failed_auth") {
        return (Cow::Borrowed(text), Vec::new());
    }
    // Unparsable text is left to the typed parser, which reports the error with its line.
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return (Cow::Borrowed(text), Vec::new());
    };
    let mut notes = Vec::new();
    let mut moved: Vec<(Option<String>, toml::Table)> = Vec::new();
    if let Some(detect) = doc.get_mut("detect").and_then(toml::Value::as_table_mut) {
        if let Some(rules) = detect.get_mut("rules").and_then(toml::Value::as_table_mut)
            && let Some(toml::Value::Table(old)) = rules.remove("failed_auth")
        {
            moved.push((None, old));
        }
        if let Some(sensors) = detect
            .get_mut("sensors")
            .and_then(toml::Value::as_table_mut)
        {
            for (id, over) in sensors.iter_mut() {
                if let Some(toml::Value::Table(old)) =
                    over.as_table_mut().and_then(|t| t.remove("failed_auth"))
                {
                    moved.push((Some(id.clone()), old));
                }
            }
        }
    }
    if moved.is_empty() {
        return (Cow::Borrowed(text), Vec::new());
    }
    let events = doc
        .entry("events")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(events) = events.as_table_mut() else {
        return (Cow::Borrowed(text), Vec::new());
    };
    for (sensor, old) in moved {
        let (from, target) = match &sensor {
            None => (
                "[detect.rules.failed_auth]".to_owned(),
                "[events.per_vm]".to_owned(),
            ),
            Some(id) => (
                format!("[detect.sensors.{id}.failed_auth]"),
                format!("[events.vms.{id}]"),
            ),
        };
        let slot = match &sensor {
            None => events
                .entry("per_vm")
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            Some(id) => events
                .entry("vms")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .map(|vms| {
                    vms.entry(id.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                })
                .expect("just inserted as a table"),
        };
        let Some(slot) = slot.as_table_mut() else {
            continue;
        };
        for key in ["max_retry", "find_time"] {
            if let Some(v) = old.get(key)
                && !slot.contains_key(key)
            {
                // max_retry = 0 switched the old rule off.
                if key == "max_retry" && v.as_integer() == Some(0) {
                    slot.insert("enabled".into(), toml::Value::Boolean(false));
                    continue;
                }
                slot.insert(key.into(), v.clone());
            }
        }
        notes.push(format!(
            "{from} is deprecated and was read as {target} (max_retry, find_time; the ban time is \
             `ban_time` there): move it to {target} to silence this warning"
        ));
    }
    match toml::to_string(&doc) {
        Ok(text) => (Cow::Owned(text), notes),
        Err(_) => (Cow::Borrowed(text), Vec::new()),
    }
}
