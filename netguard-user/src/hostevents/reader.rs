//! One open log file, read line by line from a known offset. [`super::tail::Follower`] decides
//! which files to read and when; this part only reads, splits lines and remembers how far it got.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::AuthLogCounters;
use super::offsets::{FilePos, TAIL_LEN, fnv1a};

/// One read(2) at a time.
const CHUNK: usize = 64 * 1024;

/// One open file and how far it has been read.
pub(super) struct Open {
    pub(super) file: File,
    pub(super) dev: u64,
    pub(super) ino: u64,
    /// Next byte to read.
    pub(super) offset: u64,
    /// Bytes after the last '\n' read so far; while `overlong` is set, only the last
    /// [`TAIL_LEN`] of them (for the fingerprint once the line ends).
    pub(super) partial: Vec<u8>,
    /// Set while dropping a line longer than `max_line`: how many of its bytes have been read.
    /// They count as consumed only once its '\n' is read, so a restart never starts mid-line.
    pub(super) overlong: Option<u64>,
    /// The last `min(committed, TAIL_LEN)` bytes before `committed()`: see [`FilePos::tail_hash`].
    pub(super) tail: Vec<u8>,
    /// When the file last grew: a rotated file is let go after a quiet grace period.
    pub(super) last_growth: Instant,
}

impl Open {
    /// Opens `path` and positions it at `offset`, normally a line start. An offset inside a line
    /// (a line too long to look back over) drops the rest of that line, as an over-long one: a
    /// line's tail alone is never handed on.
    pub(super) fn at(path: &Path, offset: u64) -> io::Result<Open> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let offset = offset.min(meta.len());
        let keep = offset.min(TAIL_LEN as u64);
        let mut tail = vec![0; keep as usize];
        file.read_exact_at(&mut tail, offset - keep)?;
        let mid_line = offset > 0 && tail.last() != Some(&b'\n');
        Ok(Open {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            offset,
            partial: Vec::new(),
            overlong: mid_line.then_some(0),
            tail,
            last_growth: Instant::now(),
        })
    }

    /// Opens `path` just after its last complete line: "start at the end" without cutting into a
    /// line that is being written.
    pub(super) fn at_end(path: &Path, max_line: usize) -> io::Result<Open> {
        let len = fs::metadata(path)?.len();
        let look = len.min(max_line as u64);
        let mut last = vec![0; look as usize];
        File::open(path)?.read_exact_at(&mut last, len - look)?;
        let end = match last.iter().rposition(|&b| b == b'\n') {
            Some(i) => len - look + i as u64 + 1,
            // The whole file is one unfinished line: it is being written, take it whole.
            None if look == len => 0,
            // Inside a line longer than `max_line`: `at` drops the rest of it.
            None => len,
        };
        Open::at(path, end)
    }

    /// Reopens the file a saved position names, if it still holds what was consumed.
    pub(super) fn resume(path: &Path, saved: &FilePos) -> io::Result<Option<Open>> {
        let open = Open::holding(path, saved)?;
        Ok(open.filter(|o| o.dev == saved.dev && o.ino == saved.ino))
    }

    /// Opens `path` at `pos.offset` if the bytes before it are the ones `pos` consumed, whatever
    /// the file's inode: also a copy of the file.
    pub(super) fn holding(path: &Path, pos: &FilePos) -> io::Result<Option<Open>> {
        let open = Open::at(path, pos.offset)?;
        let same = open.offset == pos.offset && fnv1a(&open.tail) == pos.tail_hash;
        Ok(same.then_some(open))
    }

    pub(super) fn committed(&self) -> u64 {
        self.offset - self.overlong.unwrap_or(self.partial.len() as u64)
    }

    /// Forgets the unfinished line, e.g. when the file restarts at 0.
    pub(super) fn clear_partial(&mut self) {
        self.partial.clear();
        self.overlong = None;
    }

    pub(super) fn pos(&self) -> FilePos {
        FilePos {
            dev: self.dev,
            ino: self.ino,
            offset: self.committed(),
            tail_hash: fnv1a(&self.tail),
        }
    }

    /// True when the file no longer holds what was read: it shrank below the read offset, or the
    /// bytes before the consumed offset changed (truncated and rewritten past it).
    pub(super) fn truncated(&self) -> io::Result<bool> {
        if self.file.metadata()?.len() < self.offset {
            return Ok(true);
        }
        let mut now = vec![0; self.tail.len()];
        let start = self.committed() - now.len() as u64;
        match self.file.read_exact_at(&mut now, start) {
            Ok(()) => Ok(now != self.tail),
            // Shrunk between the two calls.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads what was appended, up to `budget` bytes; returns the bytes read.
    pub(super) fn read(
        &mut self,
        out: &mut Vec<String>,
        budget: &mut usize,
        counters: &AuthLogCounters,
        max_line: usize,
    ) -> io::Result<usize> {
        let mut buf = vec![0; CHUNK.min((*budget).max(1))];
        let mut total = 0;
        while *budget > 0 {
            let want = buf.len().min(*budget);
            let n = self.file.read_at(&mut buf[..want], self.offset)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            total += n;
            *budget -= n;
            self.absorb(&buf[..n], out, counters, max_line);
        }
        if total > 0 {
            self.last_growth = Instant::now();
        }
        Ok(total)
    }

    /// Reads to the end, whatever the budget: a file that is being left must be finished before
    /// the lines of the file that replaces it.
    pub(super) fn read_all(
        &mut self,
        out: &mut Vec<String>,
        counters: &AuthLogCounters,
        max_line: usize,
    ) -> io::Result<usize> {
        let mut budget = usize::MAX;
        self.read(out, &mut budget, counters, max_line)
    }

    /// Splits freshly read bytes into lines, keeping an unfinished one in `partial`. A line longer
    /// than `max_line` is dropped whole, up to and including its '\n', and counted: a piece of it
    /// handed on as a line of its own would be text whose start nobody can vouch for (in a syslog
    /// file, the tail of any user's `logger` message would read as a bare `sshd -E` line).
    fn absorb(
        &mut self,
        data: &[u8],
        out: &mut Vec<String>,
        counters: &AuthLogCounters,
        max_line: usize,
    ) {
        let mut start = 0;
        for nl in data
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| (b == b'\n').then_some(i))
        {
            let piece = &data[start..=nl];
            if self.overlong.take().is_some() || self.partial.len() + piece.len() - 1 > max_line {
                self.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut self.partial);
                self.remember(&line);
                counters.overlong.fetch_add(1, Ordering::Relaxed);
            } else if self.partial.is_empty() {
                emit(&piece[..piece.len() - 1], out, counters);
                self.remember(piece);
            } else {
                self.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut self.partial);
                emit(&line[..line.len() - 1], out, counters);
                self.remember(&line);
            }
            start = nl + 1;
        }
        let rest = &data[start..];
        if let Some(read) = &mut self.overlong {
            *read += rest.len() as u64;
        } else if self.partial.len() + rest.len() > max_line {
            self.overlong = Some((self.partial.len() + rest.len()) as u64);
        }
        self.partial.extend_from_slice(rest);
        if self.overlong.is_some() {
            // Only the last bytes are needed (for the fingerprint), so memory stays bounded.
            let excess = self.partial.len().saturating_sub(TAIL_LEN);
            self.partial.drain(..excess);
        }
    }

    /// Hands on an unfinished line as it is: the file is being left (rotation, truncation), so it
    /// will never be finished here. It counts as consumed; an over-long one is dropped (counted).
    pub(super) fn flush_partial(&mut self, out: &mut Vec<String>, counters: &AuthLogCounters) {
        if self.overlong.take().is_some() {
            let line = std::mem::take(&mut self.partial);
            self.remember(&line);
            counters.overlong.fetch_add(1, Ordering::Relaxed);
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(&line, out, counters);
            self.remember(&line);
        }
    }

    /// Keeps the last TAIL_LEN consumed bytes.
    fn remember(&mut self, consumed: &[u8]) {
        let keep = &consumed[consumed.len().saturating_sub(TAIL_LEN)..];
        self.tail.extend_from_slice(keep);
        let excess = self.tail.len().saturating_sub(TAIL_LEN);
        self.tail.drain(..excess);
    }
}

fn emit(line: &[u8], out: &mut Vec<String>, counters: &AuthLogCounters) {
    // `sshd -E` ends its lines with "\r\n".
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.push(String::from_utf8_lossy(line).into_owned());
    counters.lines.fetch_add(1, Ordering::Relaxed);
}
