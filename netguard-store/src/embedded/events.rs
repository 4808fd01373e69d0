//! Host events in redb: exactly-once by fingerprint within a retention window, fingerprints and
//! history both capped.

use redb::{ReadableTable as _, ReadableTableMetadata as _, WriteTransaction};

use super::{EVENT_FP_EXPIRY, EVENT_FPS, EVENTS, FP_PURGE_BATCH, Fail, META, META_EVENT_SEQ};

/// The caps and times of one `record_events` call.
pub(super) struct Limits {
    pub now_ms: i64,
    pub until_ms: i64,
    pub history_cap: u64,
    pub fingerprint_cap: u64,
}

/// Records `rows` (fingerprint, JSON) in one write transaction: purges expired fingerprints (a
/// bounded batch), keeps each new one with its expiry, appends the new events to the history, and
/// trims both to their caps. Returns new (true) or duplicate (false) per row.
pub(super) fn record_in(
    txn: &WriteTransaction,
    rows: &[(String, Vec<u8>)],
    limits: &Limits,
) -> Result<Vec<bool>, Fail> {
    let Limits {
        now_ms,
        until_ms,
        history_cap: cap,
        fingerprint_cap: fp_cap,
    } = *limits;
    let mut fps = txn.open_table(EVENT_FPS)?;
    let mut index = txn.open_table(EVENT_FP_EXPIRY)?;
    let mut expired = Vec::new();
    for row in index.iter()? {
        let (key, _) = row?;
        let (ms, fp) = key.value();
        if ms > now_ms || expired.len() >= FP_PURGE_BATCH {
            break;
        }
        expired.push((ms, fp.to_owned()));
    }
    for (ms, fp) in &expired {
        index.remove((*ms, fp.as_str()))?;
        if fps.get(fp.as_str())?.is_some_and(|v| v.value() == *ms) {
            fps.remove(fp.as_str())?;
        }
    }
    let mut meta = txn.open_table(META)?;
    let mut seq = meta.get(META_EVENT_SEQ)?.map_or(0, |v| v.value());
    let mut history = txn.open_table(EVENTS)?;
    let mut out = Vec::with_capacity(rows.len());
    for (fp, bytes) in rows {
        let previous = fps.get(fp.as_str())?.map(|v| v.value());
        if previous.is_some_and(|ms| ms > now_ms) {
            out.push(false);
            continue;
        }
        if let Some(ms) = previous {
            index.remove((ms, fp.as_str()))?;
        }
        fps.insert(fp.as_str(), until_ms)?;
        index.insert((until_ms, fp.as_str()), ())?;
        seq += 1;
        history.insert(seq, bytes.as_slice())?;
        out.push(true);
    }
    meta.insert(META_EVENT_SEQ, seq)?;
    // Past the cap, the fingerprints that would expire soonest go first (an index key
    // whose fingerprint was re-added later is stale and just removed).
    while fps.len()? > fp_cap {
        let Some(oldest) = index.pop_first()? else {
            break;
        };
        let (ms, fp) = oldest.0.value();
        if fps.get(fp)?.is_some_and(|v| v.value() == ms) {
            fps.remove(fp)?;
        }
    }
    let excess = history.len()?.saturating_sub(cap);
    for _ in 0..excess {
        history.pop_first()?;
    }
    Ok(out)
}
