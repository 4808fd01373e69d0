//! sshd's login failure and success lines, as pure functions of one line of text.
//!
//! Usernames are chosen by the attacker and are logged verbatim (sshd escapes only control
//! characters), so a username may itself contain " from 6.6.6.6 port 22". Every pattern is therefore
//! anchored on the part sshd writes *after* the username, read from the right end of the message:
//! the address sshd appends last is the real one, whatever the username says.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::stamp::{self, Zone};
use super::{HostEvent, HostEventKind};

/// The service every event of this parser is tagged with.
pub const SERVICE: &str = "ssh";

/// Program names sshd logs under: OpenSSH 9.8 split the per-connection work into `sshd-session`
/// (and 10.0 the authentication into `sshd-auth`), so newer hosts log failures under those names.
const PROGRAMS: [&str; 3] = ["sshd", "sshd-session", "sshd-auth"];

/// Largest "message repeated N times" count taken at its word. rsyslog folds identical lines only
/// while no other line comes between, and sshd logs each guessed password with its own port, so
/// real folds are small; a forged `message repeated 4000000000 times: [...]` would otherwise make
/// the tailer emit four billion events. 100 is twenty times the default `max_retry` (5), so a
/// genuine fold still trips every threshold; the clamp is counted in
/// `netguard_authlog_repeats_clamped_total`.
pub const MAX_REPEAT: u32 = 100;

/// Which lines of the followed file are believed (`--auth-log-format`).
///
/// A plain-text syslog file cannot prove who wrote a line: rsyslog takes the program name from
/// the message, so any local user's `logger -t 'sshd[1]' 'Failed password ...'` reads exactly
/// like sshd. Only two sources are trustworthy: a file that only sshd writes (`sshd -E FILE`, root
/// only) and journald's own fields (which this daemon does not read yet). See README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthLogFormat {
    /// The first line read decides for the whole run: a syslog envelope means `syslog`, a bare
    /// line means `sshd-e`. (Once decided, the other shape is ignored and counted.)
    #[default]
    Auto,
    /// rsyslog/syslog lines with a timestamp and sshd's program name; bare lines are ignored.
    Syslog,
    /// The bare lines `sshd -E FILE` writes itself, and nothing else.
    #[value(name = "sshd-e")]
    SshdE,
}

impl AuthLogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthLogFormat::Auto => "auto",
            AuthLogFormat::Syslog => "syslog",
            AuthLogFormat::SshdE => "sshd-e",
        }
    }
}

/// The fields a recognised message yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub kind: HostEventKind,
    pub src_ip: IpAddr,
    pub user: Option<String>,
    pub src_port: Option<u16>,
}

/// What one line is, for the tailer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An sshd login event that happened `repeat` times; `clamped` if the line claimed more than
    /// [`MAX_REPEAT`].
    Event {
        event: HostEvent,
        repeat: u32,
        clamped: bool,
    },
    /// A line of the shape the format does not accept (a bare line in a syslog file, or the
    /// reverse): ignored.
    WrongShape,
    /// Anything else: another program, another sshd message.
    Other,
}

/// Parses whole log lines into [`HostEvent`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineParser {
    /// The zone of syslog-format timestamps.
    pub zone: Zone,
    /// Which line shapes are believed. `Auto` in a parser accepts both shapes, as it always did;
    /// the tailer resolves it from the first line ([`LineParser::resolve`]) before parsing.
    pub format: AuthLogFormat,
}

impl LineParser {
    pub fn new(zone: Zone) -> Self {
        LineParser {
            zone,
            format: AuthLogFormat::Auto,
        }
    }

    pub fn with_format(mut self, format: AuthLogFormat) -> Self {
        self.format = format;
        self
    }

    /// In `Auto`, fixes the format from `line` (the first one read) and returns it; otherwise
    /// `None`.
    pub fn resolve(&mut self, line: &str, arrival: DateTime<Utc>) -> Option<AuthLogFormat> {
        if self.format != AuthLogFormat::Auto {
            return None;
        }
        let env = stamp::split(line, arrival, self.zone);
        self.format = if env.ts.is_some() {
            AuthLogFormat::Syslog
        } else {
            AuthLogFormat::SshdE
        };
        Some(self.format)
    }

    /// One line (without its newline) read at `arrival`. Returns the event and how many times it
    /// happened: rsyslog may fold repeats into "message repeated N times: [ MSG]", which stands for N
    /// more occurrences (at most [`MAX_REPEAT`]). `None` for anything that is not an sshd login line.
    pub fn parse(&self, line: &str, arrival: DateTime<Utc>) -> Option<(HostEvent, u32)> {
        match self.classify(line, arrival) {
            Parsed::Event { event, repeat, .. } => Some((event, repeat)),
            Parsed::WrongShape | Parsed::Other => None,
        }
    }

    /// [`LineParser::parse`], saying also why a line was not taken.
    pub fn classify(&self, line: &str, arrival: DateTime<Utc>) -> Parsed {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let env = stamp::split(line, arrival, self.zone);
        let bare = env.ts.is_none();
        match (self.format, bare) {
            (AuthLogFormat::Syslog, true) | (AuthLogFormat::SshdE, false) => {
                return Parsed::WrongShape;
            }
            _ => {}
        }
        match env.program {
            // Everything with an envelope must be sshd's own, so that another program cannot
            // inject failures by writing sshd's wording. (Its name is still only a claim: see
            // [`AuthLogFormat`].)
            Some(program) if !PROGRAMS.contains(&program) => return Parsed::Other,
            None if !bare => return Parsed::Other,
            _ => {}
        }
        // `sshd -E` never folds repeats (only rsyslog does), so a bare "message repeated" line
        // is not unfolded.
        let (message, claimed) = if bare {
            (env.message, 1)
        } else {
            unfold_repeat(env.message)
        };
        let Some(m) = parse_message(message) else {
            return Parsed::Other;
        };
        let event = HostEvent {
            ts: env.ts.unwrap_or(arrival),
            kind: m.kind,
            src_ip: m.src_ip,
            user: m.user,
            src_port: m.src_port,
            service: SERVICE.to_owned(),
            raw: line.to_owned(),
        };
        Parsed::Event {
            event,
            repeat: claimed.min(MAX_REPEAT),
            clamped: claimed > MAX_REPEAT,
        }
    }
}

/// "message repeated 3 times: [ MSG]" → (MSG, 3); anything else → (message, 1).
fn unfold_repeat(message: &str) -> (&str, u32) {
    let folded = message
        .strip_prefix("message repeated ")
        .and_then(|r| r.split_once(" times: [ "))
        .and_then(|(n, r)| Some((r.strip_suffix(']')?, parse_count(n)?)));
    folded.unwrap_or((message, 1))
}

/// A repeat count; one too large for u32 is still a (clamped) count, not a reason to read the
/// line as unfolded.
fn parse_count(n: &str) -> Option<u32> {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(n.parse::<u32>().unwrap_or(u32::MAX))
}

/// One sshd message (after the syslog envelope, if any). `None` if it is not a login line.
pub fn parse_message(message: &str) -> Option<Match> {
    // Syslog copies carry sshd's severity prefix; `-E` files do not.
    let msg = message
        .strip_prefix("error: ")
        .unwrap_or(message)
        .trim_end();
    if let Some(rest) = msg.strip_prefix("Failed ") {
        return failed_or_accepted(rest, HostEventKind::FailedPassword);
    }
    if let Some(rest) = msg.strip_prefix("Accepted ") {
        return failed_or_accepted(rest, HostEventKind::Accepted);
    }
    if let Some(rest) = msg.strip_prefix("Invalid user ") {
        // "Invalid user X from IP port P"; sshd before 7.x left out the port.
        let (user, tail) = rest.rsplit_once(" from ")?;
        let (ip, port) = ip_port_tail(tail)?;
        return Some(found(HostEventKind::InvalidUser, ip, user, port));
    }
    if let Some(rest) = msg.strip_prefix("User ") {
        // "User X from IP not allowed because not listed in AllowUsers" (or DenyUsers, AllowGroups,
        // a locked account, a missing shell): a login name sshd refuses, logged once per connection
        // like "Invalid user". The reason is sshd's text, so the last " not allowed because " is
        // the real one.
        let (left, _reason) = rest.rsplit_once(" not allowed because ")?;
        let (user, ip) = left.rsplit_once(" from ")?;
        let (ip, None) = ip_port_tail(ip)? else {
            return None;
        };
        return Some(found(HostEventKind::InvalidUser, ip, user, None));
    }
    if let Some(rest) = msg.strip_prefix("maximum authentication attempts exceeded for ") {
        let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
        let (user, tail) = rest.rsplit_once(" from ")?;
        let (ip, port) = ip_port_tail(tail)?;
        return Some(found(HostEventKind::TooManyFailures, ip, user, port));
    }
    if let Some(rest) = msg.strip_prefix("Disconnecting ") {
        // "Disconnecting (authenticating|invalid) user X IP port P: Too many authentication failures".
        let rest = strip_preauth(rest).strip_suffix(": Too many authentication failures")?;
        return user_ip_port(rest, HostEventKind::TooManyFailures);
    }
    for prefix in [
        "Connection closed by ",
        "Connection reset by ",
        "Disconnected from ",
    ] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            // Only the forms with a user: a bare "Connection closed by IP port P" is any client
            // (a port scan's banner grab), not a login attempt.
            return user_ip_port(strip_preauth(rest), HostEventKind::ClosedPreauth);
        }
    }
    pam_failure(msg)
}

/// After "Failed " / "Accepted ": "METHOD for [invalid user ]X from IP port P ssh2[: KEY...]".
fn failed_or_accepted(rest: &str, kind: HostEventKind) -> Option<Match> {
    let (method, rest) = rest.split_once(" for ")?;
    let counted = match kind {
        // A guessed password, typed or through keyboard-interactive PAM. "Failed none" (the probe
        // every client starts with) and "Failed publickey" (a client offering each of its keys) are
        // not guesses, and counting them would double every attempt.
        HostEventKind::FailedPassword => {
            matches!(
                method,
                "password" | "keyboard-interactive/pam" | "keyboard-interactive"
            )
        }
        _ => !method.is_empty() && !method.contains(' '),
    };
    if !counted {
        return None;
    }
    let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
    let (user, tail) = rest.rsplit_once(" from ")?;
    let (ip, port) = ip_port_tail(tail)?;
    Some(found(kind, ip, user, port))
}

/// "(authenticating |invalid )user X IP port P" (the connection-level forms, which have no "from").
fn user_ip_port(rest: &str, kind: HostEventKind) -> Option<Match> {
    let rest = rest
        .strip_prefix("authenticating user ")
        // Not plain "user X": "Disconnected from user X" is the logout of a session that logged in.
        .or_else(|| rest.strip_prefix("invalid user "))?;
    let (left, port) = rest.rsplit_once(" port ")?;
    let port = port.parse::<u16>().ok()?;
    let (user, ip) = left.rsplit_once(' ')?;
    let ip = parse_ip(ip)?;
    Some(found(kind, ip, user, Some(port)))
}

/// "IP[ port P][ ssh2][: details][ [preauth]]", the part sshd writes after " from ".
fn ip_port_tail(tail: &str) -> Option<(IpAddr, Option<u16>)> {
    let mut words = tail.split(' ');
    let ip = parse_ip(words.next()?)?;
    let port = match words.next() {
        None => None,
        Some("port") => Some(words.next()?.trim_end_matches(':').parse::<u16>().ok()?),
        // Anything else right after the address is not a shape sshd writes.
        Some(_) => return None,
    };
    Some((ip, port))
}

/// PAM: "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser=
/// rhost=IP  user=X". `rhost` may be a host name when sshd resolves names (UseDNS); those are
/// skipped because a name cannot be blocked. "PAM N more authentication failures" summarises lines
/// already counted and is not matched.
fn pam_failure(msg: &str) -> Option<Match> {
    let (_, fields) = msg.split_once("authentication failure;")?;
    let mut rhost = None;
    let mut user = None;
    let mut words = fields.split_whitespace();
    while let Some(word) = words.next() {
        if let Some(v) = word.strip_prefix("rhost=") {
            rhost = Some(v);
        } else if let Some(v) = word.strip_prefix("user=") {
            // PAM writes user= last; a name with spaces runs to the end of the line.
            let tail: Vec<&str> = words.by_ref().collect();
            let name = std::iter::once(v).chain(tail).collect::<Vec<_>>().join(" ");
            user = Some(name);
        }
    }
    let ip = parse_ip(rhost?)?;
    Some(Match {
        kind: HostEventKind::PamFailure,
        src_ip: ip,
        user: user.filter(|u| !u.is_empty()),
        src_port: None,
    })
}

fn strip_preauth(s: &str) -> &str {
    s.strip_suffix(" [preauth]").unwrap_or(s)
}

/// An address as sshd prints it; IPv4-mapped IPv6 (`::ffff:10.0.0.1`, from a dual-stack socket) is
/// turned into IPv4 so the block lands in the IPv4 blocklist.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn found(kind: HostEventKind, ip: IpAddr, user: &str, port: Option<u16>) -> Match {
    Match {
        kind,
        src_ip: ip,
        // sshd logs an empty username as "user  from": keep "unknown" distinct from a name.
        user: (!user.is_empty()).then(|| user.to_owned()),
        src_port: port,
    }
}
