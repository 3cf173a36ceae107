//! The ledger's journal: what the SQLite file has not taken yet, appended
//! with one `write(2)` per batch.
//!
//! A call's "sent" record must be in the kernel before the call leaves, so
//! that a `kill -9` forgets nothing; it need not be in SQLite yet. A SQLite
//! commit per batch wrote whole pages (about 20 KiB a call) and queued each
//! request behind the others' commits; a line here is a few hundred bytes and
//! one system call. The SQLite file takes the records later, a second's worth
//! in one transaction, off the request path (`sqlite.rs`).
//!
//! The journal is a run of segment files beside the state file, named
//! `<state file>.ledger-<run>-<seq>`: `run` orders runs (it starts with the
//! run's start time), `seq` orders a run's segments. Each line is one
//! [`Record`] as JSON. A segment is locked (`flock`) by the process that
//! writes it from its creation until it is folded and deleted, so a process
//! opening the state file replays only the segments whose writer is gone.

use super::Record;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One segment file, locked by this process while it lives.
#[derive(Debug)]
pub(super) struct Segment {
    file: File,
    path: PathBuf,
    /// The bytes written whole so far: a failed append is cut back to it.
    len: u64,
}

impl Segment {
    /// Creates segment `seq` of run `run` beside `state`, and locks it.
    pub(super) fn create(state: &Path, run: &str, seq: u64) -> io::Result<Segment> {
        // Created and locked under another name, then renamed into place:
        // an opener looking for orphans never sees it unlocked.
        let name = format!("{run}-{seq:010}");
        let path = state.with_file_name(format!("{}{name}", prefix(state)));
        let making = state.with_file_name(format!(
            "{}making-{name}",
            prefix(state).trim_end_matches("ledger-")
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&making)?;
        file.lock()?;
        std::fs::rename(&making, &path)?;
        Ok(Segment { file, path, len: 0 })
    }

    /// Appends `records` with one write. On failure (a full disk) the
    /// segment is cut back to its last whole batch, so a later append never
    /// follows a torn line.
    pub(super) fn append(&mut self, records: &[Record]) -> io::Result<u64> {
        let mut bytes = Vec::with_capacity(256 * records.len());
        for record in records {
            serde_json::to_writer(&mut bytes, record).map_err(io::Error::other)?;
            bytes.push(b'\n');
        }
        match self.file.write_all(&bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(bytes.len() as u64)
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Deletes the file (its records are in SQLite now); the lock goes with
    /// the handle.
    pub(super) fn remove(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// The segments beside `state` whose writer is gone, oldest first, each
/// with its records (locked now by this process, to be folded and removed).
/// A torn last line (a write cut by a crash) is skipped; so is a line this
/// version cannot read, with a warning.
pub(super) fn orphans(state: &Path) -> io::Result<Vec<(Segment, Vec<Record>)>> {
    let dir = match state.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    let prefix = prefix(state);
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    let mut found = Vec::new();
    for name in names {
        let path = dir.join(&name);
        // A live process may fold and remove a segment between the listing
        // and here, or between the open and the lock: skip what is gone.
        let file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
        if std::os::unix::fs::MetadataExt::nlink(&file.metadata()?) == 0 {
            continue;
        }
        let mut records = Vec::new();
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            if line.ends_with(b"\n") {
                match serde_json::from_slice(&line) {
                    Ok(record) => records.push(record),
                    Err(e) => tracing::warn!("{name}: a record skipped ({e})"),
                }
            }
            line.clear();
        }
        let len = file.metadata()?.len();
        found.push((Segment { file, path, len }, records));
    }
    Ok(found)
}

/// What every segment name of `state` starts with.
fn prefix(state: &Path) -> String {
    let name = state.file_name().map_or_else(
        || "gemini-flux.db".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{name}.ledger-")
}

/// A run's name: its start time first, so runs sort in the order they
/// began, then its process id and the number of stores this process opened
/// before it (a test may open two on one file in the same millisecond).
pub(super) fn run_name() -> String {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{:013}-{}-{}",
        crate::clock::Timestamp::wall_now().millis(),
        std::process::id(),
        OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `Timestamp` fields as milliseconds in the journal (the API writes them
/// as RFC 3339).
pub(super) mod millis {
    use crate::clock::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.millis())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        i64::deserialize(d).map(Timestamp)
    }
}

/// `KeyIndex` fields as the 1-based number they serialize to.
pub(super) mod key_index {
    use crate::keys::KeyIndex;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(k: &KeyIndex, s: S) -> Result<S::Ok, S::Error> {
        k.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyIndex, D::Error> {
        let n = u64::deserialize(d)?;
        KeyIndex::from_one_based(n).ok_or_else(|| serde::de::Error::custom("key 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::keys::{KeyIndex, KeyState};
    use crate::store::Outcome;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gemini-flux-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.db")
    }

    fn records() -> Vec<Record> {
        let at = Timestamp(1_781_118_000_000);
        vec![
            Record::CallSent {
                id: 7,
                at,
                day: at.pacific_day(),
                key_id: "k1".into(),
                key_index: KeyIndex::new(2),
                fingerprint: "…0003".into(),
                model: "gemini-2.5-flash".into(),
                input_tokens: 120_000,
                requests: 1,
                output_tokens: 0,
            },
            Record::CallSettled {
                id: 7,
                outcome: Outcome::Ok,
                input_tokens: 119_000,
                output_tokens: 12,
                latency_ms: 840,
            },
            Record::KeyState {
                key_id: "k1".into(),
                state: KeyState::Invalid("API key not valid".into()),
            },
        ]
    }

    #[test]
    fn a_gone_writers_segments_come_back_in_order_and_a_live_ones_do_not() {
        let state = dir("orphans");
        let mut live = Segment::create(&state, "0000000000002-1", 0).unwrap();
        live.append(&records()[..1]).unwrap();
        {
            let mut first = Segment::create(&state, "0000000000001-1", 0).unwrap();
            let mut second = Segment::create(&state, "0000000000001-1", 1).unwrap();
            second.append(&records()[1..]).unwrap();
            first.append(&records()[..1]).unwrap();
        } // that run is gone: its locks with it
        let found = orphans(&state).unwrap();
        let lines: Vec<Vec<Record>> = found.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            lines,
            [records()[..1].to_vec(), records()[1..].to_vec()],
            "the gone run's two segments, oldest first; the live one left alone"
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_rest_kept() {
        let state = dir("torn");
        let path = {
            let mut segment = Segment::create(&state, "0000000000001-1", 0).unwrap();
            segment.append(&records()).unwrap();
            segment.path.clone()
        };
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"CallSent":{"id":8,"at":17"#).unwrap();
        let found = orphans(&state).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, records());
        let (segment, _) = found.into_iter().next().unwrap();
        segment.remove().unwrap();
        assert!(!path.exists());
    }
}
