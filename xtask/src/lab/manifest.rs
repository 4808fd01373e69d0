//! `<out>/MANIFEST.md`: what was run, with which parameters, for how long, and how many rows of each
//! label each scenario gave. Rewritten after every scenario, so an interrupted run still documents
//! what its files hold.

use std::fmt::Write as _;
use std::time::Duration;

use super::record::{Counts, Label, Schema};

/// One scenario's result.
pub struct Outcome {
    pub name: String,
    pub class: Label,
    pub params: String,
    /// Daemon start to daemon exit.
    pub took: Duration,
    /// The labelled window (attack or benign steps running).
    pub window: Duration,
    /// None when nothing was recorded (daemon without --record-features) or the conversion failed.
    pub counts: Option<Counts>,
    /// Empty when all went well; otherwise what went wrong or is worth knowing (time bounds reached).
    pub notes: Vec<String>,
    pub failed: bool,
}

pub struct Meta<'a> {
    pub mode: &'a str,
    pub started: String,
    pub total: Duration,
    pub warmup: Duration,
    pub cooldown: Duration,
    pub spoof_cap: u64,
    pub schema: Option<&'a Schema>,
    pub daemon: String,
}

pub fn render(meta: &Meta, outcomes: &[Outcome]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# NetGuard lab data set\n");
    let _ = writeln!(
        m,
        "Made by `cargo xtask lab` ({} plan), started {}, total {:.0} s. Daemon: {}.\n",
        meta.mode,
        meta.started,
        meta.total.as_secs_f64(),
        meta.daemon
    );
    match meta.schema {
        Some(s) => {
            let _ = writeln!(
                m,
                "Format: `{}`, header `label,{}` ({} features).\n",
                s.version_line,
                s.header,
                s.feature_count()
            );
        }
        None => {
            let _ = writeln!(m, "Format: no feature record was produced in this run.\n");
        }
    }
    let _ = writeln!(m, "## How rows are labelled\n");
    let _ = writeln!(
        m,
        "- By source address. Benign clients: 10.230.1.0/24, 10.230.2.0/24, fd00:230::1:0/112, \
         fd00:230::2:0/112: always `benign`, also during attacks. Attackers: 10.230.<c>.1-4 and \
         fd00:230::<c>:1/3 with c = 11 syn_flood, 12 udp_flood, 13 icmp_flood, 14 port_scan, \
         15 ssh_brute_force.\n\
         - Spoofed floods (hping3 --rand-source): any IPv4 source the lab does not assign \
         (multicast and loopback ones too) is that scenario's attack, by construction (nothing else can send in the lab); so is the daemon's \
         0.0.0.0 row, the aggregate of sources it could not track. Each spoofed scenario keeps about \
         {} rows of spoofed sources (whole sources, chosen by a hash of the address; 0 = no cap); the \
         rest is counted under `over cap`.\n\
         - Dropped as `infra`: link-local/multicast sources (neighbour discovery) and, outside spoofed \
         scenarios, the daemon's 0.0.0.0 aggregate row; as `unexpected`: lab \
         addresses that should be silent in the scenario.\n\
         - Warm-up: rows from the daemon's start until {:.0} s after the benign background started \
         (sliding windows still filling) are dropped. Cool-down: rows after the scenario's tools \
         ended (windows only draining; the daemon runs {:.0} s more) are dropped.\n",
        meta.spoof_cap,
        meta.warmup.as_secs_f64(),
        meta.cooldown.as_secs_f64()
    );

    let _ = writeln!(m, "## Scenarios\n");
    let mut head = String::from("| # | scenario | class | params | took s | window s |");
    let mut rule = String::from("|---|---|---|---|---|---|");
    for l in Label::ALL {
        let _ = write!(head, " {} |", l.as_str());
        rule.push_str("---|");
    }
    head.push_str(" warm-up | cool-down | infra | unexpected | over cap | status |");
    rule.push_str("---|---|---|---|---|---|");
    let _ = writeln!(m, "{head}\n{rule}");
    let mut totals = [0u64; Label::ALL.len()];
    for (i, o) in outcomes.iter().enumerate() {
        let _ = write!(
            m,
            "| {} | {} | {} | {} | {:.1} | {:.1} |",
            i + 1,
            o.name,
            o.class.as_str(),
            o.params.replace('|', "\\|"),
            o.took.as_secs_f64(),
            o.window.as_secs_f64()
        );
        for (k, l) in Label::ALL.iter().enumerate() {
            match &o.counts {
                Some(c) => {
                    let n = c.per_label.get(l).copied().unwrap_or(0);
                    totals[k] += n;
                    let _ = write!(m, " {n} |");
                }
                None => m.push_str(" - |"),
            }
        }
        match &o.counts {
            Some(c) => {
                let _ = write!(
                    m,
                    " {} | {} | {} | {} | {} |",
                    c.warmup, c.cooldown, c.infrastructure, c.unexpected, c.sampled_out
                );
            }
            None => m.push_str(" - | - | - | - | - |"),
        }
        let status = if o.failed { "FAILED" } else { "ok" };
        let notes = if o.notes.is_empty() {
            String::new()
        } else {
            format!(": {}", o.notes.join("; ").replace('|', "\\|"))
        };
        let _ = writeln!(m, " {status}{notes} |");
    }
    let _ = write!(m, "| | **total** | | | | |");
    for t in totals {
        let _ = write!(m, " **{t}** |");
    }
    let _ = writeln!(m, " | | | | | |");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_counts_per_label_and_totals() {
        let mut c = Counts::default();
        c.per_label.insert(Label::Benign, 10);
        c.per_label.insert(Label::SynFlood, 90);
        c.warmup = 3;
        let outcomes = vec![
            Outcome {
                name: "syn_flood_80".into(),
                class: Label::SynFlood,
                params: "hping3 -S | 1000 pps".into(),
                took: Duration::from_secs(14),
                window: Duration::from_secs(6),
                counts: Some(c),
                notes: vec![],
                failed: false,
            },
            Outcome {
                name: "port_scan".into(),
                class: Label::PortScan,
                params: "nmap".into(),
                took: Duration::from_secs(9),
                window: Duration::from_secs(2),
                counts: None,
                notes: vec!["not recorded".into()],
                failed: true,
            },
        ];
        let schema = Schema {
            version_line: "# netguard-features v1".into(),
            header: "ts_ms,src,a,b".into(),
        };
        let meta = Meta {
            mode: "quick",
            started: "now".into(),
            total: Duration::from_secs(30),
            warmup: Duration::from_secs(3),
            cooldown: Duration::from_secs(2),
            spoof_cap: 5000,
            schema: Some(&schema),
            daemon: "netguard".into(),
        };
        let text = render(&meta, &outcomes);
        assert!(
            text.contains("header `label,ts_ms,src,a,b` (2 features)"),
            "{text}"
        );
        assert!(text.contains("| 1 | syn_flood_80 | syn_flood | hping3 -S \\| 1000 pps | 14.0 | 6.0 | 10 | 90 | 0 | 0 | 0 | 0 | 3 | 0 | 0 | 0 | 0 | ok |"), "{text}");
        assert!(text.contains("| 2 | port_scan | port_scan | nmap | 9.0 | 2.0 | - | - | - | - | - | - | - | - | - | - | - | FAILED: not recorded |"), "{text}");
        assert!(text.contains("**10** | **90** | **0**"), "{text}");
    }
}
