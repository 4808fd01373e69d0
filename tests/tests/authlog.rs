//! The auth-log sensor against a real sshd attacked by hydra and medusa.
//!
//! sshd listens only on the lab's sensor addresses inside its namespace and writes its log with
//! `-E` (bare lines: no timestamp, no `sshd[pid]:`), which the tailer follows. The attacks come from
//! the attacker namespace and are bounded by small word lists, few tasks and a wall-clock `timeout`.
//! Drops stop sshd (and its children), delete the test user and both namespaces, also on panic.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netguard_tests::netns::{
    ATTACKER_V4, ATTACKER_V6, NetnsPair, SENSOR_V4, require_root, require_tool,
};
use netguard_tests::sshd::{
    LabSshd, PORT, SSHD, TestUser, attack_retrying, hydra_target, word_file,
};
use netguard_user::hostevents::{
    AuthLog, AuthLogFormat, AuthLogOptions, HostEvent, HostEventKind as K, LineParser,
    MemoryOffsets, spawn_authlog,
};
use tokio::sync::mpsc;

/// Events reach the channel this soon after the tool that caused them has finished.
const PROMPT: Duration = Duration::from_secs(3);
const TOOL_LIMIT: Duration = Duration::from_secs(40);
/// How long a tool may take to produce its first events, including runs again after it could not
/// connect (see `attack_retrying`).
const TOOL_START: Duration = Duration::from_secs(60);
/// hydra's wait for an answer (-w). sshd closes a connection at MaxAuthTries, and with the default
/// 32 s hydra sits out that long before it reconnects.
const HYDRA_WAIT: &str = "2";

/// The tailer on its own runtime, with every event it sends recorded with its arrival time.
struct Follow {
    events: Arc<Mutex<Vec<(Instant, HostEvent)>>>,
    tail: Option<AuthLog>,
    rt: tokio::runtime::Runtime,
}

impl Follow {
    fn start(path: &Path) -> Follow {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::channel(1024);
        let tail = {
            let _inside = rt.enter();
            // From the start: the whole file is compared with what was read, also lines sshd wrote
            // before the tailer's first look.
            let opts = AuthLogOptions::default()
                .from_start(true)
                .format(AuthLogFormat::SshdE);
            spawn_authlog(path, opts, MemoryOffsets::default(), tx)
        };
        let sink = Arc::clone(&events);
        rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                sink.lock().unwrap().push((Instant::now(), e));
            }
        });
        Follow {
            events,
            tail: Some(tail),
            rt,
        }
    }

    fn events(&self) -> Vec<(Instant, HostEvent)> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the events so far; false after `limit`.
    fn wait(&self, limit: Duration, done: impl Fn(&[(Instant, HostEvent)]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(&self.events.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn stats(&self) -> netguard_user::hostevents::AuthLogStats {
        self.tail.as_ref().unwrap().counters().snapshot()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(tail) = self.tail.take() {
            self.rt.block_on(tail.stop());
        }
    }
}

fn lab_tools() -> bool {
    require_root()
        && require_tool("hydra")
        && require_tool("medusa")
        && require_tool("timeout")
        && require_tool("ssh-keygen")
        && require_tool("useradd")
        // An absolute name: the file itself must exist, PATH is not searched.
        && require_tool(SSHD)
}

/// The lines of the given files that the parser turns into events, as a multiset of raw text.
fn parsed_lines(files: &[&Path]) -> BTreeMap<String, usize> {
    let parser = LineParser::default();
    let mut lines = BTreeMap::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            if let Some((e, n)) = parser.parse(line, chrono::Utc::now()) {
                *lines.entry(e.raw).or_default() += n as usize;
            }
        }
    }
    lines
}

fn raw_multiset(events: &[(Instant, HostEvent)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, e) in events {
        *m.entry(e.raw.clone()).or_default() += 1;
    }
    m
}

fn count(events: &[(Instant, HostEvent)], kind: K, ip: IpAddr, user: &str) -> usize {
    events
        .iter()
        .filter(|(_, e)| e.kind == kind && e.src_ip == ip && e.user.as_deref() == Some(user))
        .count()
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hydra_against_real_sshd_is_read_from_its_log() {
    if !lab_tools() {
        return;
    }
    let lab = NetnsPair::new("authlog");
    let user = TestUser::create("ngauthlog1");
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("sshd.log");
    // Started before sshd: the file may not exist yet, and is read once it appears.
    let follow = Follow::start(&log);
    let _sshd = LabSshd::start(&lab, &user.name, 3, &log);

    // IPv4: eight wrong passwords for the real user, then the right one (hydra -f stops there).
    let mut words: Vec<String> = (1..=8).map(|i| format!("wrong-{i}")).collect();
    words.push(user.password.clone());
    let words = word_file(work.path(), "words.txt", &words);
    let out = attack_retrying(
        &lab.attacker,
        work.path(),
        TOOL_LIMIT,
        &[
            "hydra",
            "-l",
            &user.name,
            "-P",
            &words.to_string_lossy(),
            "-t",
            "2",
            "-w",
            HYDRA_WAIT,
            "-I",
            "-f",
            &hydra_target(false),
        ],
    );
    ok(&out, "hydra (IPv4)");
    let v4_done = Instant::now();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&user.password),
        "hydra did not find the lab password: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // IPv6: users that do not exist.
    let users = word_file(work.path(), "users.txt", &["admin".into(), "oracle".into()]);
    let out = attack_retrying(
        &lab.attacker,
        work.path(),
        TOOL_LIMIT,
        &[
            "hydra",
            "-L",
            &users.to_string_lossy(),
            "-p",
            "wrong-pw",
            "-t",
            "2",
            "-w",
            HYDRA_WAIT,
            "-I",
            &hydra_target(true),
        ],
    );
    ok(&out, "hydra (IPv6)");
    let v6_done = Instant::now();

    // Every login line sshd wrote arrives as an event, and nothing else.
    let expected = || parsed_lines(&[&log]);
    let complete = follow.wait(PROMPT, |ev| raw_multiset(ev) == expected());
    let events = follow.events();
    assert!(
        complete,
        "events differ from the log's login lines\nlog:\n{}\nevents: {:#?}",
        fs::read_to_string(&log).unwrap(),
        events.iter().map(|(_, e)| &e.raw).collect::<Vec<_>>()
    );

    let v4 = IpAddr::V4(ATTACKER_V4[0]);
    let v6 = IpAddr::V6(ATTACKER_V6[0]);
    let failed_v4 = count(&events, K::FailedPassword, v4, &user.name);
    assert!(
        failed_v4 >= 8,
        "{failed_v4} failed passwords from {v4}: {events:#?}"
    );
    assert!(
        count(&events, K::Accepted, v4, &user.name) >= 1,
        "no Accepted: {events:#?}"
    );
    for bad in ["admin", "oracle"] {
        assert!(
            count(&events, K::InvalidUser, v6, bad) >= 1,
            "no InvalidUser {bad}"
        );
        assert!(
            count(&events, K::FailedPassword, v6, bad) >= 1,
            "no FailedPassword {bad}"
        );
    }
    for (at, e) in &events {
        assert_eq!(e.service, "ssh");
        assert!(
            e.src_port.is_some_and(|p| p > 0) || e.kind == K::PamFailure,
            "{e:?}"
        );
        // Each event was in hand within PROMPT of the run that caused it.
        let done = if e.src_ip == v4 { v4_done } else { v6_done };
        assert!(
            *at <= done + PROMPT,
            "{e:?} arrived {:?} after its run",
            *at - done
        );
    }
    let stats = follow.stats();
    assert_eq!(stats.events, events.len() as u64);
    assert_eq!(
        stats.lines,
        fs::read_to_string(&log).unwrap().lines().count() as u64
    );
}

/// copytruncate as logrotate does it (copy, then truncate), with the window between the two kept
/// as short as possible: whatever sshd appends while the copy runs is copied too, up to the size
/// checked right before the truncate. A line landing in the microseconds after that check is lost
/// by copytruncate itself, for any reader.
fn copytruncate(path: &Path, copy: &Path) {
    let mut src = File::open(path).unwrap();
    let mut dst = File::create(copy).unwrap();
    let mut copied = 0u64;
    loop {
        let len = fs::metadata(path).unwrap().len();
        if copied == len {
            break;
        }
        src.seek(SeekFrom::Start(copied)).unwrap();
        let mut buf = Vec::new();
        (&mut src).take(len - copied).read_to_end(&mut buf).unwrap();
        dst.write_all(&buf).unwrap();
        copied += buf.len() as u64;
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

#[test]
fn rotation_during_attacks_loses_no_line() {
    if !lab_tools() {
        return;
    }
    let lab = NetnsPair::new("authrot");
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("sshd.log");
    let rotated = work.path().join("sshd.log.1");
    let copied = work.path().join("sshd.log.2");
    // No valid login at all: every attempt fails.
    let sshd = LabSshd::start(&lab, "ngauthlog-nobody", 3, &log);
    let follow = Follow::start(&log);
    let users = word_file(
        work.path(),
        "users.txt",
        &["root".into(), "admin".into(), "oracle".into()],
    );
    let guesses = |n: u32| (1..=n).map(|i| format!("guess-{i}")).collect::<Vec<_>>();
    let text = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let users = text(users);
    // hydra is the slower of the two (its tasks reconnect after every MaxAuthTries cut).
    let hydra_words = text(word_file(work.path(), "hydra.txt", &guesses(12)));
    let words = text(word_file(work.path(), "medusa.txt", &guesses(20)));

    // Phase 1: hydra, with a rename rotation (logrotate's `create`) once events are flowing.
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            let target = hydra_target(false);
            let args = [
                "hydra",
                "-L",
                &users,
                "-P",
                &hydra_words,
                "-t",
                "4",
                "-w",
                HYDRA_WAIT,
                "-I",
                &target,
            ];
            attack_retrying(&lab.attacker, work.path(), TOOL_LIMIT, &args)
        });
        assert!(
            follow.wait(TOOL_START, |ev| ev.len() >= 10),
            "no events from hydra"
        );
        fs::rename(&log, &rotated).unwrap();
        File::create(&log).unwrap();
        let before = follow.events().len();
        ok(&run.join().unwrap(), "hydra");
        assert!(
            follow.events().len() > before,
            "hydra ended before the rotation: nothing mid-stream"
        );
    });

    // Phase 2: medusa, with a copytruncate once events are flowing again.
    std::thread::scope(|s| {
        let before = follow.events().len();
        let run = s.spawn(|| {
            // medusa cannot bind a source address: it uses the route's, the attacker's first.
            let (sensor, port) = (SENSOR_V4.to_string(), PORT.to_string());
            let args = [
                "medusa", "-b", "-h", &sensor, "-n", &port, "-U", &users, "-P", &words, "-M",
                "ssh", "-t", "2",
            ];
            attack_retrying(&lab.attacker, work.path(), TOOL_LIMIT, &args)
        });
        assert!(
            follow.wait(TOOL_START, |ev| ev.len() >= before + 10),
            "no events from medusa"
        );
        copytruncate(&log, &copied);
        let mid = follow.events().len();
        ok(&run.join().unwrap(), "medusa");
        assert!(
            follow.events().len() > mid,
            "medusa ended before the copytruncate: nothing mid-stream"
        );
    });

    // Every login line in the three files arrives exactly once.
    let files = [rotated.as_path(), copied.as_path(), log.as_path()];
    let complete = follow.wait(PROMPT, |ev| raw_multiset(ev) == parsed_lines(&files));
    let (want, got) = (parsed_lines(&files), raw_multiset(&follow.events()));
    // Each lost line with the file it is in, which tells the rotation that lost it.
    let missing: Vec<_> = want
        .iter()
        .filter(|(l, n)| got.get(*l) < Some(n))
        .map(|(l, _)| {
            let home = files
                .iter()
                .find(|f| fs::read_to_string(f).unwrap().contains(l.as_str()));
            (l, home.map(|f| f.display().to_string()))
        })
        .collect();
    let extra: Vec<_> = got.iter().filter(|(l, n)| want.get(*l) < Some(n)).collect();
    assert!(
        complete,
        "lost lines: {missing:#?}\nextra (or duplicated) lines: {extra:#?}"
    );
    // And every line, login or not, was read once.
    let in_files = || -> u64 {
        let lines = files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap().lines().count());
        lines.sum::<usize>() as u64
    };
    follow.wait(PROMPT, |_| follow.stats().lines == in_files());
    let stats = follow.stats();
    assert_eq!(stats.lines, in_files(), "{stats:?}");
    assert!(stats.rotations >= 1 && stats.truncations >= 1, "{stats:?}");
    // Each file was really written to: a rotation that leaves one empty would prove nothing (sshd
    // opens the path afresh for each connection, so the new file fills after the rename).
    for f in files {
        assert!(
            fs::read_to_string(f).unwrap().lines().count() > 0,
            "{} is empty",
            f.display()
        );
    }
    drop(sshd);
}
