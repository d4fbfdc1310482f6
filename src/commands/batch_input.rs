//! `batch`'s input, read as a stream, twice: a scan before anything runs (the format, the
//! sha256 the output's settings name, the record count, duplicate ids, every line readable)
//! and then the records one at a time as the run takes them. Neither pass holds the file or
//! its parsed records: memory is one line and, per record, two bits when its id is its line
//! number (the default) or its id's 16-byte fingerprint when it names one.

use crate::cli::Shard;
use crate::formats::records::{id_key, InputFormat, LineError, Record, RecordReader};
use anyhow::{anyhow, bail, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest input line read (a record, with its prompt).
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// An id's fingerprint: the first 16 bytes of the sha256 of its key (collisions among even
/// billions of ids are out of reach).
type IdPrint = u128;

fn id_print(key: &str) -> IdPrint {
    let d = Sha256::digest(key.as_bytes());
    u128::from_le_bytes(d[..16].try_into().unwrap_or_default())
}

/// What the scan found.
pub struct Input {
    file: File,
    path: PathBuf,
    pub format: InputFormat,
    pub sha256: String,
    /// Records this run takes (its shard's).
    pub n_records: usize,
    ids: Ids,
    shard: Option<Shard>,
}

/// The ids of a file's records: an id that is its record's line number (the default when a
/// record names none) as bits by line, any other by its fingerprint with its line.
#[derive(Default)]
struct Ids {
    /// Lines whose record's id is the line number, and of those the ones this run takes.
    own_line: Vec<u64>,
    own_line_taken: Vec<u64>,
    named: HashMap<IdPrint, (u32, bool)>,
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(bits: &mut Vec<u64>, i: usize) {
    if bits.len() <= i / 64 {
        bits.resize(i / 64 + 1, 0);
    }
    bits[i / 64] |= 1 << (i % 64);
}

impl Ids {
    /// Add record `line`'s id; the line of an earlier record with the same id, if any.
    fn insert(&mut self, id: &serde_json::Value, line: usize, taken: bool) -> Option<usize> {
        let print = id_print(&id_key(id));
        if id.as_u64() == Some(line as u64) {
            // a named id equal to this line number came first
            if let Some(&(first, _)) = self.named.get(&print) {
                return Some(first as usize);
            }
            set_bit(&mut self.own_line, line);
            if taken {
                set_bit(&mut self.own_line_taken, line);
            }
            return None;
        }
        if let Some(n) = id.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| bit(&self.own_line, n)) {
            return Some(n);
        }
        self.named.insert(print, (u32::try_from(line).unwrap_or(u32::MAX), taken)).map(|(first, _)| first as usize)
    }

    fn is_empty(&self) -> bool {
        self.own_line.iter().all(|&w| w == 0) && self.named.is_empty()
    }

    /// Is `key` ([`id_key`]) the id of a record this run takes?
    fn taken(&self, key: &str) -> bool {
        match key.parse::<usize>() {
            Ok(n) if bit(&self.own_line, n) => bit(&self.own_line_taken, n),
            _ => self.named.get(&id_print(key)).is_some_and(|&(_, taken)| taken),
        }
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn in_shard(shard: Option<Shard>, i: usize) -> bool {
    shard.is_none_or(|s| i % s.count == s.index)
}

impl Input {
    /// Scan `path` (a regular file): every line must be readable UTF-8 of at most
    /// [`MAX_LINE_BYTES`]; ids must be unique in the whole file (the first duplicate is named
    /// with both lines); the format is `format` or the first record's.
    pub fn scan(path: &Path, format: Option<InputFormat>, shard: Option<Shard>) -> Result<Self> {
        let name = path.display();
        let mut file = crate::io::open_regular(path)?;
        let mut reader = RecordReader::new(BufReader::new(Hashing { inner: &mut file, hasher: Sha256::new() }), format, MAX_LINE_BYTES);
        let mut ids = Ids::default();
        let mut n_records = 0;
        for (i, item) in reader.by_ref().enumerate() {
            let (line, record) = item.map_err(|e| anyhow!("{name}: {e}"))?;
            let id = match &record {
                Ok(job) => &job.id,
                Err(bad) => &bad.id,
            };
            let taken = in_shard(shard, i);
            if let Some(first) = ids.insert(id, line, taken) {
                bail!("{name}: line {line}: duplicate id {id} (also line {first}); ids must be unique");
            }
            n_records += usize::from(taken);
        }
        let format = reader.format().unwrap_or(InputFormat::Jsonl);
        let sha256 = format!("{:x}", reader_hash(reader));
        if n_records == 0 && ids.is_empty() {
            bail!("{name}: no records (the file is empty)");
        }
        Ok(Self { file, path: path.to_path_buf(), format, sha256, n_records, ids, shard })
    }

    /// Does the input hold this id (among the records this run takes)?
    pub fn holds(&self, key: &str) -> bool {
        self.ids.taken(key)
    }

    /// The run's records in order, read again from the start, without those in `done` (ids
    /// an output already holds): `(i, record)` with `i` counting the records yielded. A file
    /// changed since the scan ends in an error item.
    pub fn records<'s>(&'s mut self, done: &'s HashSet<String>) -> Result<Records<'s>> {
        self.file.seek(SeekFrom::Start(0)).map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let reader =
            RecordReader::new(BufReader::new(Hashing { inner: &mut self.file, hasher: Sha256::new() }), Some(self.format), MAX_LINE_BYTES);
        Ok(Records { reader: Some(reader), path: &self.path, sha256: &self.sha256, shard: self.shard, done, n_read: 0, n_yielded: 0 })
    }
}

fn reader_hash<R: Read>(reader: RecordReader<BufReader<Hashing<R>>>) -> sha2::digest::Output<Sha256> {
    reader.into_inner().into_inner().hasher.finalize()
}

/// The second pass ([`Input::records`]).
pub struct Records<'a> {
    reader: Option<RecordReader<BufReader<Hashing<&'a mut File>>>>,
    path: &'a Path,
    sha256: &'a str,
    shard: Option<Shard>,
    done: &'a HashSet<String>,
    /// Records read (all shards), and yielded.
    n_read: usize,
    n_yielded: usize,
}

impl Iterator for Records<'_> {
    type Item = Result<(usize, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        loop {
            let Some(item) = reader.next() else {
                // the end: the file must be the one scanned
                let reader = self.reader.take()?;
                let sha = format!("{:x}", reader_hash(reader));
                return (sha != self.sha256).then(|| Err(changed(self.path)));
            };
            let (_, record) = match item {
                Ok(x) => x,
                Err(e) => {
                    self.reader = None;
                    return Some(Err(match e {
                        LineError::Io { .. } => anyhow!("{}: {e}", self.path.display()),
                        _ => changed(self.path),
                    }));
                }
            };
            let i = self.n_read;
            self.n_read += 1;
            let id = match &record {
                Ok(job) => &job.id,
                Err(bad) => &bad.id,
            };
            if !in_shard(self.shard, i) || self.done.contains(&id_key(id)) {
                continue;
            }
            self.n_yielded += 1;
            return Some(Ok((self.n_yielded - 1, record)));
        }
    }
}

fn changed(path: &Path) -> anyhow::Error {
    anyhow!(
        "{}: the file changed while the batch ran; the records written so far are whole, resume with --resume once it is final",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_scan_and_the_records_read_the_file_as_a_stream() {
        let text = "\u{feff}{\"id\": \"a\", \"prompt\": \"x\"}\n\n{bad\n{\"prompt\": \"y\"}\r\n{\"id\": \"d\", \"prompt\": \"z\"}";
        let (_dir, path) = file(text);
        let mut input = Input::scan(&path, None, None).unwrap();
        assert_eq!((input.format, input.n_records), (InputFormat::Jsonl, 4));
        assert_eq!(input.sha256, format!("{:x}", Sha256::digest(text.as_bytes())));
        assert!(input.holds("\"a\"") && input.holds("4") && !input.holds("\"b\""));
        let done: HashSet<String> = ["\"a\"".to_string()].into();
        let got: Vec<(usize, usize, bool)> = input
            .records(&done)
            .unwrap()
            .map(|r| r.unwrap())
            .map(|(i, r)| match r {
                Ok(j) => (i, j.line, true),
                Err(b) => (i, b.line, false),
            })
            .collect();
        assert_eq!(got, vec![(0, 3, false), (1, 4, true), (2, 5, true)]);
        // shards take every count-th record, counted over all records
        let mut odd = Input::scan(&path, None, Some(Shard { index: 1, count: 2 })).unwrap();
        assert_eq!(odd.n_records, 2);
        let lines: Vec<usize> = odd.records(&HashSet::new()).unwrap().map(|r| r.unwrap().1.map_or_else(|b| b.line, |j| j.line)).collect();
        assert_eq!(lines, vec![3, 5]);
    }

    #[test]
    fn what_cannot_be_read_is_one_line_naming_the_line() {
        for (bytes, expected) in [
            (b"{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 1, \"prompt\": \"b\"}\n".to_vec(), "line 2: duplicate id 1 (also line 1)"),
            (b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\"}\n".to_vec(), "line 2: not UTF-8 text (byte 12 of the line)"),
            (b"\n\n".to_vec(), "no records"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("in.jsonl");
            std::fs::write(&path, &bytes).unwrap();
            let e = Input::scan(&path, None, None).err().unwrap().to_string();
            assert!(e.contains(expected) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_file_changed_after_the_scan_is_an_error_at_its_end() {
        let (_dir, path) = file("{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n");
        let mut input = Input::scan(&path, None, None).unwrap();
        std::fs::write(&path, "{\"prompt\": \"a\"}\n{\"prompt\": \"c\"}\n").unwrap();
        let items: Vec<_> = input.records(&HashSet::new()).unwrap().collect();
        assert_eq!(items.len(), 3);
        assert!(items[2].as_ref().unwrap_err().to_string().contains("changed while the batch ran"), "{:?}", items[2].as_ref().err());
    }
}
