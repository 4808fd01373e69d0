//! The follower against real files in a temporary directory: partial lines, both rotation styles,
//! restarts from a saved position, and where it starts.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::hostevents::tail::{FollowOptions, Follower};
use crate::hostevents::{AuthLogCounters, Position};

struct Lab {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        Lab { _dir: dir, path }
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.path.with_file_name(name)
    }
}

/// Appends like a logger does (O_APPEND), so writes after a truncation land at the new end.
fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// What copytruncate does after its copy.
fn truncate(path: &Path) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

fn numbered(from: u32, to: u32) -> String {
    (from..=to).map(|i| format!("line {i}\n")).collect()
}

fn expect(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|i| format!("line {i}")).collect()
}

fn follower(
    path: &Path,
    saved: Option<Position>,
    opts: FollowOptions,
) -> (Follower, Arc<AuthLogCounters>) {
    let counters = Arc::new(AuthLogCounters::default());
    (
        Follower::new(path.to_path_buf(), saved, opts, Arc::clone(&counters)),
        counters,
    )
}

fn replay() -> FollowOptions {
    FollowOptions {
        from_start: true,
        ..FollowOptions::default()
    }
}

#[test]
fn starts_at_the_end_by_default_and_at_the_start_when_asked() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 3));
    let (mut tail, _) = follower(&lab.path, None, FollowOptions::default());
    assert!(tail.poll().lines.is_empty());
    append(&lab.path, &numbered(4, 4));
    assert_eq!(tail.poll().lines, expect(4, 4));

    let (mut tail, counters) = follower(&lab.path, None, replay());
    assert_eq!(tail.poll().lines, expect(1, 4));
    assert_eq!(counters.snapshot().lines, 4);
}

#[test]
fn starting_at_the_end_does_not_cut_a_line_being_written() {
    let lab = Lab::new();
    append(&lab.path, "line 1\nline");
    let (mut tail, _) = follower(&lab.path, None, FollowOptions::default());
    assert!(tail.poll().lines.is_empty());
    append(&lab.path, " 2\n");
    assert_eq!(tail.poll().lines, ["line 2"]);
}

#[test]
fn lines_written_in_pieces_are_joined() {
    let lab = Lab::new();
    File::create(&lab.path).unwrap();
    let (mut tail, _) = follower(&lab.path, None, FollowOptions::default());
    assert!(tail.poll().lines.is_empty());
    for piece in [
        "Failed pass",
        "word for root from 10.0.0.1 ",
        "port 22 ssh2\r",
    ] {
        append(&lab.path, piece);
        assert!(tail.poll().lines.is_empty(), "a piece alone is no line");
        // The saved position stays at the line's start, so a restart re-reads it whole.
        assert_eq!(tail.position().unwrap().current.offset, 0);
    }
    append(&lab.path, "\nnext");
    assert_eq!(
        tail.poll().lines,
        ["Failed password for root from 10.0.0.1 port 22 ssh2"]
    );
    assert_eq!(tail.position().unwrap().current.offset, 53);
}

#[test]
fn rename_rotation_mid_stream_loses_and_repeats_nothing() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 5));
    let (mut tail, counters) = follower(&lab.path, None, replay());
    assert_eq!(tail.poll().lines, expect(1, 5));
    // The writer appends, logrotate renames, creates a new file, and the writer (still holding the
    // old file open) appends once more before it reopens: the old file's lines come first.
    let mut writer = OpenOptions::new().append(true).open(&lab.path).unwrap();
    writer.write_all(numbered(6, 7).as_bytes()).unwrap();
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    append(&lab.path, &numbered(8, 9));
    writer.write_all(b"line 10\nline 1").unwrap();
    let mut got = tail.poll().lines;
    assert_eq!(
        got,
        [expect(6, 7), vec!["line 10".into()], expect(8, 9)].concat()
    );
    // Late writes to the old file still arrive, also one finished after the switch.
    writer.write_all(b"1\n").unwrap();
    append(&lab.path, &numbered(12, 12));
    got = tail.poll().lines;
    assert_eq!(got, ["line 11", "line 12"]);
    assert_eq!(counters.snapshot().rotations, 1);
    assert_eq!(counters.snapshot().lines, 12);
    assert!(tail.position().unwrap().rotated.is_some());
}

#[test]
fn rotated_file_is_let_go_after_the_grace_period() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 1));
    let opts = FollowOptions {
        rotated_grace: Duration::from_millis(50),
        ..replay()
    };
    let (mut tail, _) = follower(&lab.path, None, opts);
    tail.poll();
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    // An unfinished last line of the old file is handed on when the file is let go.
    append(&lab.sibling("auth.log.1"), "line 2\nline 3 cut");
    append(&lab.path, &numbered(4, 4));
    assert_eq!(tail.poll().lines, [expect(2, 2), expect(4, 4)].concat());
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(tail.poll().lines, ["line 3 cut"]);
    assert!(tail.position().unwrap().rotated.is_none());
}

#[test]
fn two_rotations_in_a_row() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 1));
    let (mut tail, counters) = follower(&lab.path, None, replay());
    tail.poll();
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    append(&lab.path, &numbered(2, 2));
    assert_eq!(tail.poll().lines, expect(2, 2));
    append(&lab.sibling("auth.log.1"), &numbered(3, 3));
    fs::rename(lab.sibling("auth.log.1"), lab.sibling("auth.log.2")).unwrap();
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    append(&lab.sibling("auth.log.1"), &numbered(4, 4));
    append(&lab.path, &numbered(5, 5));
    assert_eq!(tail.poll().lines, expect(3, 5));
    assert_eq!(counters.snapshot().rotations, 2);
}

#[test]
fn copytruncate_mid_stream_restarts_at_zero() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 5));
    let (mut tail, counters) = follower(&lab.path, None, replay());
    assert_eq!(tail.poll().lines, expect(1, 5));
    fs::copy(&lab.path, lab.sibling("auth.log.1")).unwrap();
    truncate(&lab.path);
    append(&lab.path, &numbered(6, 7));
    assert_eq!(tail.poll().lines, expect(6, 7));
    assert_eq!(counters.snapshot().truncations, 1);
    assert_eq!(counters.snapshot().rotations, 0);
}

#[test]
fn copytruncate_lines_written_before_the_copy_are_read_from_the_copy() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 3));
    let (mut tail, counters) = follower(&lab.path, None, replay());
    assert_eq!(tail.poll().lines, expect(1, 3));
    // Written after our last read, then copied away and cut from the live file before we look.
    append(&lab.path, "line 4\nline 5 unfinished");
    // An older rotated file must not be mistaken for the copy.
    append(&lab.sibling("auth.log.2"), &numbered(90, 99));
    fs::copy(&lab.path, lab.sibling("auth.log.1")).unwrap();
    truncate(&lab.path);
    append(&lab.path, &numbered(6, 6));
    assert_eq!(tail.poll().lines, ["line 4", "line 5 unfinished", "line 6"]);
    assert_eq!(counters.snapshot().truncations, 1);
}

#[test]
fn copytruncate_that_regrew_past_the_offset_is_still_noticed() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 3));
    let (mut tail, counters) = follower(&lab.path, None, replay());
    assert_eq!(tail.poll().lines, expect(1, 3));
    truncate(&lab.path);
    // Longer than before by the time we look: the size alone would not tell.
    append(&lab.path, &numbered(10, 19));
    assert_eq!(tail.poll().lines, expect(10, 19));
    assert_eq!(counters.snapshot().truncations, 1);
}

#[test]
fn restart_reads_only_new_lines() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 3));
    let (mut first, _) = follower(&lab.path, None, replay());
    assert_eq!(first.poll().lines, expect(1, 3));
    append(&lab.path, "line 4\nline 5 unfinished");
    assert_eq!(first.poll().lines, expect(4, 4));
    let saved = first.position();
    drop(first);
    append(&lab.path, " now\n");
    append(&lab.path, &numbered(6, 6));
    // Even with from_start: a saved position wins.
    let (mut second, _) = follower(&lab.path, saved, replay());
    assert_eq!(second.poll().lines, ["line 5 unfinished now", "line 6"]);
}

#[test]
fn restart_after_a_rotation_while_down_finishes_the_old_file_first() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 2));
    let (mut first, _) = follower(&lab.path, None, replay());
    first.poll();
    let saved = first.position();
    drop(first);
    append(&lab.path, &numbered(3, 4));
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    append(&lab.path, &numbered(5, 6));
    let (mut second, counters) = follower(&lab.path, saved, FollowOptions::default());
    assert_eq!(second.poll().lines, expect(3, 6));
    assert_eq!(counters.snapshot().rotations, 1);
}

#[test]
fn restart_with_the_rotated_file_still_draining_resumes_both() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 1));
    let (mut first, _) = follower(&lab.path, None, replay());
    first.poll();
    fs::rename(&lab.path, lab.sibling("auth.log.1")).unwrap();
    append(&lab.path, &numbered(2, 2));
    assert_eq!(first.poll().lines, expect(2, 2));
    let saved = first.position();
    assert!(saved.unwrap().rotated.is_some());
    drop(first);
    append(&lab.sibling("auth.log.1"), &numbered(3, 3));
    append(&lab.path, &numbered(4, 4));
    let (mut second, _) = follower(&lab.path, saved, FollowOptions::default());
    assert_eq!(second.poll().lines, expect(3, 4));
}

#[test]
fn restart_after_a_copytruncate_while_down_reads_the_new_content() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 2));
    let (mut first, _) = follower(&lab.path, None, replay());
    first.poll();
    let saved = first.position();
    drop(first);
    append(&lab.path, &numbered(3, 3));
    fs::copy(&lab.path, lab.sibling("auth.log.1")).unwrap();
    truncate(&lab.path);
    append(&lab.path, &numbered(10, 14));
    let (mut second, counters) = follower(&lab.path, saved, FollowOptions::default());
    assert_eq!(second.poll().lines, [expect(3, 3), expect(10, 14)].concat());
    assert_eq!(counters.snapshot().truncations, 1);
}

#[test]
fn a_missing_file_is_waited_for_and_then_read_whole() {
    let lab = Lab::new();
    let (mut tail, _) = follower(&lab.path, None, FollowOptions::default());
    assert!(tail.poll().lines.is_empty());
    assert!(tail.poll().lines.is_empty());
    assert_eq!(tail.position(), None);
    append(&lab.path, &numbered(1, 2));
    assert_eq!(tail.poll().lines, expect(1, 2));
}

#[test]
fn a_deleted_file_is_read_to_its_end_before_the_next_one() {
    let lab = Lab::new();
    append(&lab.path, &numbered(1, 1));
    let (mut tail, _) = follower(&lab.path, None, replay());
    tail.poll();
    let mut writer = OpenOptions::new().append(true).open(&lab.path).unwrap();
    fs::remove_file(&lab.path).unwrap();
    writer.write_all(numbered(2, 2).as_bytes()).unwrap();
    assert_eq!(tail.poll().lines, expect(2, 2));
    append(&lab.path, &numbered(3, 3));
    assert_eq!(tail.poll().lines, expect(3, 3));
}

#[test]
fn overlong_lines_are_dropped_whole_and_big_files_are_read_in_budgets() {
    let lab = Lab::new();
    append(&lab.path, &format!("{}\nshort\n", "x".repeat(100)));
    let opts = FollowOptions {
        max_line: 40,
        read_budget: 64,
        ..replay()
    };
    let (mut tail, counters) = follower(&lab.path, None, opts);
    let mut lines = Vec::new();
    loop {
        let batch = tail.poll();
        lines.extend(batch.lines);
        if !batch.more {
            break;
        }
    }
    assert_eq!(lines, ["short"]);
    assert_eq!(counters.snapshot().overlong, 1);
}

#[test]
fn an_overlong_line_split_across_reads_yields_no_piece() {
    // A `logger` message over the limit, written in pieces: today's tail of it would have read as
    // a bare `sshd -E` line. Nothing of it is handed on, and the position never stops inside it.
    let lab = Lab::new();
    File::create(&lab.path).unwrap();
    let opts = FollowOptions {
        max_line: 40,
        ..FollowOptions::default()
    };
    let (mut tail, counters) = follower(&lab.path, None, opts.clone());
    assert!(tail.poll().lines.is_empty());
    append(&lab.path, "ok 1\n");
    assert_eq!(tail.poll().lines, ["ok 1"]);
    let start = tail.position().unwrap();
    append(&lab.path, &"y".repeat(30));
    assert!(tail.poll().lines.is_empty());
    append(&lab.path, &"y".repeat(30));
    assert!(tail.poll().lines.is_empty());
    assert_eq!(tail.position().unwrap(), start, "inside the long line");
    // A restart now resumes at the long line's start and drops it too.
    let (mut again, again_counters) = follower(&lab.path, Some(start), opts.clone());
    append(
        &lab.path,
        "Failed password for root from 10.0.0.1 port 22 ssh2\n",
    );
    assert!(tail.poll().lines.is_empty());
    assert!(again.poll().lines.is_empty());
    assert_eq!(counters.snapshot().overlong, 1);
    assert_eq!(again_counters.snapshot().overlong, 1);
    append(&lab.path, "ok 2\n");
    assert_eq!(tail.poll().lines, ["ok 2"]);
    assert_eq!(again.poll().lines, ["ok 2"]);
    let len = fs::metadata(&lab.path).unwrap().len();
    assert_eq!(tail.position().unwrap().current.offset, len);
    // Starting at the end inside a long line drops the rest of it too.
    append(&lab.path, &"z".repeat(100));
    let (mut late, late_counters) = follower(&lab.path, None, opts);
    assert!(late.poll().lines.is_empty());
    append(
        &lab.path,
        "Failed password for root from 10.0.0.1 port 22 ssh2\nok 3\n",
    );
    assert_eq!(late.poll().lines, ["ok 3"]);
    assert_eq!(late_counters.snapshot().overlong, 1);
}
