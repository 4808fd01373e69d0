//! Turns one scenario's feature record (written live by `netguard run --record-features`) into a
//! labelled data set file. Pure logic, unit-tested on synthetic records without root.
//!
//! Record format: `# netguard-features v<N>`, then `ts_ms,src,<features...>`, then rows. Output: the
//! same comment line, `label,ts_ms,src,<features...>`, then the kept rows with their label in front.
//! Rows are kept only inside the scenario's labelled window (see `Window`), and labelled by source
//! address (see `LabelRule`).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::IpAddr;

use anyhow::{Context, Result, bail};

/// The classes of the data set; the names are the alert classes of the external contract.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Label {
    Benign,
    SynFlood,
    UdpFlood,
    IcmpFlood,
    PortScan,
    SshBruteForce,
}

impl Label {
    pub const ALL: [Label; 6] = [
        Label::Benign,
        Label::SynFlood,
        Label::UdpFlood,
        Label::IcmpFlood,
        Label::PortScan,
        Label::SshBruteForce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Benign => "benign",
            Label::SynFlood => "syn_flood",
            Label::UdpFlood => "udp_flood",
            Label::IcmpFlood => "icmp_flood",
            Label::PortScan => "port_scan",
            Label::SshBruteForce => "ssh_brute_force",
        }
    }
}

/// Why a row was left out although it was inside the window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dropped {
    /// Link-local, multicast, unspecified or loopback sources: neighbour discovery and the like, which
    /// every host sends whatever it is doing, so they carry no label.
    Infrastructure,
    /// A source that should not be sending in this scenario (the sensor itself, an idle attacker, or an
    /// unknown address when the scenario does not spoof). Kept out rather than guessed.
    Unexpected,
}

/// The daemon's aggregate row for sources beyond its tracking capacity (`detect::windows::OVERFLOW_SRC`
/// in netguard-user): 0.0.0.0, never a real sender.
pub const OVERFLOW_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Labelling by source address for one scenario.
pub struct LabelRule {
    /// The scenario's class: `Benign` for benign-only scenarios.
    pub class: Label,
    /// Addresses of the benign clients: always `benign`, also during an attack.
    pub benign: HashSet<IpAddr>,
    /// Addresses this scenario's attack tools send from.
    pub attackers: HashSet<IpAddr>,
    /// Every address the lab assigns, so that an idle lab host is told apart from a spoofed source.
    pub known: HashSet<IpAddr>,
    /// The scenario spoofs random sources (hping3 --rand-source): any address the lab does not assign
    /// is then the attack, by construction.
    pub spoofed: bool,
}

impl LabelRule {
    pub fn label(&self, src: IpAddr) -> Result<Label, Dropped> {
        if src == OVERFLOW_SRC {
            // The daemon folds sources it does not track into one row. In a spoofed flood that is the
            // flood (the benign clients are tracked from the warm-up on); elsewhere it only holds
            // stray sources such as neighbour discovery.
            return if self.spoofed && self.class != Label::Benign {
                Ok(self.class)
            } else {
                Err(Dropped::Infrastructure)
            };
        }
        // hping3 --rand-source draws from all of IPv4, multicast and loopback included; nothing in
        // the lab sends from such sources itself, so in a spoofed scenario they are the attack too.
        if self.spoofed
            && self.class != Label::Benign
            && src.is_ipv4()
            && !self.known.contains(&src)
        {
            return Ok(self.class);
        }
        if is_infrastructure(src) {
            return Err(Dropped::Infrastructure);
        }
        if self.benign.contains(&src) {
            return Ok(Label::Benign);
        }
        if self.class == Label::Benign {
            return Err(Dropped::Unexpected);
        }
        if self.attackers.contains(&src) || (self.spoofed && !self.known.contains(&src)) {
            return Ok(self.class);
        }
        Err(Dropped::Unexpected)
    }
}

impl LabelRule {
    /// A source that only a spoofing tool can have made up (not the daemon's overflow row).
    pub fn is_spoofed(&self, src: IpAddr) -> bool {
        self.spoofed
            && self.class != Label::Benign
            && src != OVERFLOW_SRC
            && !self.known.contains(&src)
    }
}

/// A spoofed flood gives every random source its own rows, one per tick while it is in the long
/// window: 10 s at 3000 pps makes some 200 000 near-identical one-packet rows, which would bury every
/// other scenario. The cap keeps about `cap` of them, choosing whole sources (all rows of a kept
/// source, so its windows stay complete) by a hash of the address, which is the same on every run.
/// Returns the share of spoofed sources to keep; `cap` 0 keeps all.
pub fn spoof_keep(input: impl BufRead, rule: &LabelRule, window: Window, cap: u64) -> Result<f64> {
    if cap == 0 || !rule.spoofed {
        return Ok(1.0);
    }
    let mut rows = 0u64;
    for line in input.lines().skip(2) {
        let line = line?;
        let mut parts = line.splitn(3, ',');
        let (Some(ts), Some(src)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(ts), Ok(src)) = (ts.parse::<u64>(), src.parse::<IpAddr>()) else {
            continue; // convert() reports malformed lines with their line number
        };
        if (window.from_ms..=window.to_ms).contains(&ts) && rule.is_spoofed(src) {
            rows += 1;
        }
    }
    Ok(if rows <= cap {
        1.0
    } else {
        cap as f64 / rows as f64
    })
}

/// Whether a spoofed source is in the kept share: a hash of its address, scaled to [0, 1).
fn sampled(src: IpAddr, keep: f64) -> bool {
    if keep >= 1.0 {
        return true;
    }
    let bytes = match src {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    // FNV's top bits barely depend on the last bytes of a short input; splitmix64's finaliser spreads
    // them, so nearby addresses land all over [0, 1).
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h as f64 / u64::MAX as f64) < keep
}

fn is_infrastructure(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            v.is_unspecified() || v.is_loopback() || v.is_multicast() || v.is_broadcast()
        }
        IpAddr::V6(v) => {
            v.is_unspecified()
                || v.is_loopback()
                || v.is_multicast()
                || v.is_unicast_link_local()
                || v.to_ipv4_mapped().is_some()
        }
    }
}

/// The labelled part of a scenario, in wall-clock Unix milliseconds (the record's `ts_ms`). Rows before
/// `from_ms` are warm-up (the daemon has just attached and its sliding windows are still filling);
/// rows after `to_ms` are cool-down (the tools have stopped and the windows only drain).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The record's first two lines; all scenario files of one run must agree on them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Schema {
    pub version_line: String,
    /// `ts_ms,src,<features...>` as the daemon wrote it.
    pub header: String,
}

impl Schema {
    pub fn feature_count(&self) -> usize {
        self.header.split(',').count() - 2
    }
}

/// Row counts of one conversion.
#[derive(Clone, Default, Debug)]
pub struct Counts {
    pub per_label: BTreeMap<Label, u64>,
    pub warmup: u64,
    pub cooldown: u64,
    pub infrastructure: u64,
    pub unexpected: u64,
    /// Rows of spoofed sources left out by the per-scenario cap (see `spoof_keep`).
    pub sampled_out: u64,
    /// A few of the unexpected sources, for the manifest: they point at a lab or tool problem.
    pub unexpected_examples: Vec<String>,
}

pub const VERSION_PREFIX: &str = "# netguard-features v";

/// Reads a record from `input` and writes the labelled file to `out`.
/// `spoof_keep` (0..=1] is the share of spoofed sources whose rows are kept (see `spoof_keep`).
pub fn convert(
    input: impl BufRead,
    mut out: impl Write,
    rule: &LabelRule,
    window: Window,
    spoof_keep: f64,
) -> Result<(Schema, Counts)> {
    let mut lines = input.lines();
    let version_line = lines
        .next()
        .transpose()?
        .context("the record is empty (did the daemon write anything?)")?;
    if !version_line.starts_with(VERSION_PREFIX) {
        bail!("line 1 is `{version_line}`, expected `{VERSION_PREFIX}<N>`");
    }
    let header = lines
        .next()
        .transpose()?
        .context("the record has no header line")?;
    if !header.starts_with("ts_ms,src,") {
        bail!("line 2 is `{header}`, expected `ts_ms,src,<feature names...>`");
    }
    let schema = Schema {
        version_line,
        header,
    };
    let fields = schema.header.split(',').count();
    writeln!(out, "{}", schema.version_line)?;
    writeln!(out, "label,{}", schema.header)?;

    let mut counts = Counts::default();
    for (i, line) in lines.enumerate() {
        let line = line?;
        let n = i + 3;
        if line.trim().is_empty() {
            continue;
        }
        let got = line.split(',').count();
        if got != fields {
            bail!("line {n} has {got} fields, the header has {fields}: `{line}`");
        }
        let mut parts = line.splitn(3, ',');
        let ts = parts.next().unwrap_or_default();
        let src = parts.next().unwrap_or_default();
        let ts: u64 = ts
            .parse()
            .with_context(|| format!("line {n}: ts_ms `{ts}` is not an integer"))?;
        let src: IpAddr = src
            .parse()
            .with_context(|| format!("line {n}: src `{src}` is not an IP address"))?;
        if ts < window.from_ms {
            counts.warmup += 1;
            continue;
        }
        if ts > window.to_ms {
            counts.cooldown += 1;
            continue;
        }
        if rule.is_spoofed(src) && !sampled(src, spoof_keep) {
            counts.sampled_out += 1;
            continue;
        }
        match rule.label(src) {
            Ok(label) => {
                *counts.per_label.entry(label).or_default() += 1;
                writeln!(out, "{},{line}", label.as_str())?;
            }
            Err(Dropped::Infrastructure) => counts.infrastructure += 1,
            Err(Dropped::Unexpected) => {
                counts.unexpected += 1;
                let s = src.to_string();
                if counts.unexpected_examples.len() < 5 && !counts.unexpected_examples.contains(&s)
                {
                    counts.unexpected_examples.push(s);
                }
            }
        }
    }
    out.flush()?;
    Ok((schema, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> HashSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn rule(class: Label, spoofed: bool) -> LabelRule {
        LabelRule {
            class,
            benign: ips(&["10.230.1.1", "fd00:230::1:1"]),
            attackers: ips(&["10.230.11.1"]),
            known: ips(&[
                "10.230.0.1",
                "10.230.1.1",
                "fd00:230::1:1",
                "10.230.11.1",
                "10.230.12.1",
            ]),
            spoofed,
        }
    }

    const RECORD: &str = "# netguard-features v1\n\
        ts_ms,src,pkts,syn_ratio\n\
        1000,10.230.11.1,5,1.0\n\
        2000,10.230.11.1,900,0.99\n\
        2000,10.230.1.1,12,0.1\n\
        2000,fd00:230::1:1,3,0\n\
        2000,fe80::1,1,0\n\
        2000,203.0.113.9,1,1\n\
        2500,10.230.12.1,1,1\n\
        \n\
        3000,10.230.0.1,1,0\n\
        9000,10.230.11.1,1,0\n";

    #[test]
    fn labels_by_source_inside_the_window() {
        let mut out = Vec::new();
        let w = Window {
            from_ms: 1500,
            to_ms: 3000,
        };
        let (schema, c) = convert(
            RECORD.as_bytes(),
            &mut out,
            &rule(Label::SynFlood, true),
            w,
            1.0,
        )
        .unwrap();
        assert_eq!(schema.version_line, "# netguard-features v1");
        assert_eq!(schema.feature_count(), 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# netguard-features v1");
        assert_eq!(lines[1], "label,ts_ms,src,pkts,syn_ratio");
        assert_eq!(
            &lines[2..],
            [
                "syn_flood,2000,10.230.11.1,900,0.99",
                "benign,2000,10.230.1.1,12,0.1",
                "benign,2000,fd00:230::1:1,3,0",
                // Spoofed: not a lab address, so the attack by construction.
                "syn_flood,2000,203.0.113.9,1,1",
            ]
        );
        assert_eq!(c.per_label[&Label::SynFlood], 2);
        assert_eq!(c.per_label[&Label::Benign], 2);
        assert_eq!((c.warmup, c.cooldown, c.infrastructure), (1, 1, 1));
        // The idle UDP attacker and the sensor itself are lab addresses that should not send here.
        assert_eq!(c.unexpected, 2);
        assert_eq!(c.unexpected_examples, ["10.230.12.1", "10.230.0.1"]);
    }

    #[test]
    fn unknown_sources_are_dropped_unless_the_scenario_spoofs() {
        let r = rule(Label::PortScan, false);
        assert_eq!(
            r.label("203.0.113.9".parse().unwrap()),
            Err(Dropped::Unexpected)
        );
        assert_eq!(r.label("10.230.11.1".parse().unwrap()), Ok(Label::PortScan));
        let b = rule(Label::Benign, true);
        assert_eq!(
            b.label("10.230.11.1".parse().unwrap()),
            Err(Dropped::Unexpected)
        );
        assert_eq!(b.label("10.230.1.1".parse().unwrap()), Ok(Label::Benign));
        assert_eq!(
            b.label("ff02::1".parse().unwrap()),
            Err(Dropped::Infrastructure)
        );
        // The untracked-sources aggregate is the attack only where the attack spoofs.
        assert_eq!(b.label(OVERFLOW_SRC), Err(Dropped::Infrastructure));
        assert_eq!(r.label(OVERFLOW_SRC), Err(Dropped::Infrastructure));
        let spoof = rule(Label::IcmpFlood, true);
        assert_eq!(spoof.label(OVERFLOW_SRC), Ok(Label::IcmpFlood));
        // A random IPv4 source is the attack even where it is multicast; IPv6 link-local stays out.
        assert_eq!(
            spoof.label("239.1.2.3".parse().unwrap()),
            Ok(Label::IcmpFlood)
        );
        assert_eq!(
            spoof.label("fe80::1".parse().unwrap()),
            Err(Dropped::Infrastructure)
        );
        assert_eq!(
            r.label("239.1.2.3".parse().unwrap()),
            Err(Dropped::Infrastructure)
        );
    }

    #[test]
    fn spoofed_sources_are_capped_by_whole_sources() {
        let mut text = String::from("# netguard-features v1\nts_ms,src,pkts\n");
        for i in 0..2000u32 {
            let src = std::net::Ipv4Addr::from(0x0b00_0000 + i); // 11.0.x.y: spoofed
            for ts in [2000, 2500] {
                text.push_str(&format!("{ts},{src},1\n"));
            }
        }
        text.push_str("2000,10.230.1.1,5\n2000,0.0.0.0,900\n");
        let r = rule(Label::UdpFlood, true);
        let w = Window {
            from_ms: 1000,
            to_ms: 3000,
        };
        let keep = spoof_keep(text.as_bytes(), &r, w, 400).unwrap();
        assert!((keep - 0.1).abs() < 1e-9, "{keep}");
        let mut out = Vec::new();
        let (_, c) = convert(text.as_bytes(), &mut out, &r, w, keep).unwrap();
        let kept = c.per_label[&Label::UdpFlood];
        // About 400 spoofed rows plus the overflow row, never the benign one; both rows of a source.
        assert!((300..=500).contains(&kept), "{kept}");
        assert_eq!(kept + c.sampled_out, 4001);
        assert_eq!(c.per_label[&Label::Benign], 1);
        assert_eq!(kept % 2, 1, "sources are kept whole, plus the overflow row");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("udp_flood,2000,0.0.0.0,900"));
        // Under the cap, or not spoofing: everything is kept.
        assert_eq!(spoof_keep(text.as_bytes(), &r, w, 0).unwrap(), 1.0);
        assert_eq!(
            spoof_keep(text.as_bytes(), &rule(Label::UdpFlood, false), w, 10).unwrap(),
            1.0
        );
    }

    #[test]
    fn malformed_records_say_where() {
        let w = Window {
            from_ms: 0,
            to_ms: u64::MAX,
        };
        let r = rule(Label::SynFlood, false);
        let e = convert("ts_ms,src\n".as_bytes(), Vec::new(), &r, w, 1.0).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = convert(
            "# netguard-features v2\nsrc,ts_ms,a\n".as_bytes(),
            Vec::new(),
            &r,
            w,
            1.0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let bad = "# netguard-features v2\nts_ms,src,a\n1,10.230.1.1,1,2\n";
        let e = convert(bad.as_bytes(), Vec::new(), &r, w, 1.0).unwrap_err();
        assert!(e.to_string().contains("line 3 has 4 fields"), "{e}");
        let bad = "# netguard-features v2\nts_ms,src,a\n1,host,1\n";
        let e = convert(bad.as_bytes(), Vec::new(), &r, w, 1.0).unwrap_err();
        assert!(e.to_string().contains("not an IP"), "{e}");
        assert!(convert("".as_bytes(), Vec::new(), &r, w, 1.0).is_err());
    }
}
