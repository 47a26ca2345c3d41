//! An image's answers recorded in one process and replayed in another, so
//! that the squashfs parser never runs where a bug in it could matter.
//!
//! The ABI check of a job runs in slurmstepd, whose real uid is root. The
//! image's squashfs is parsed (`backhand`, with `unsafe` in its
//! decompressors, and tables read whole into memory) in a child process
//! with the user's full credentials ([`crate::container`]'s
//! `assess_image_as_user`): the child runs the check on a [`Recorder`] and
//! sends back every answer the image gave (kinds, listings, file bytes).
//! The parent runs the same check again on a [`Replay`] of those answers.
//! A child that lies only shows the parent another image, which the user
//! could have built anyway: the decisions and the plan are the parent's own
//! code, on the site's modules.
//!
//! The record's encoding is Shoal's own (length-prefixed, bounded by the
//! bytes received); decoding never trusts a length.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::image::{EntryKind, ImageFs};

/// One answer: what the image said, or the error it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer<T> {
    Ok(T),
    NotFound(String),
    Failed(String),
}

impl<T: Clone> Answer<T> {
    fn of(r: &io::Result<T>) -> Answer<T> {
        match r {
            Ok(v) => Answer::Ok(v.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Answer::NotFound(e.to_string()),
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    fn to_result(&self) -> io::Result<T> {
        match self {
            Answer::Ok(v) => Ok(v.clone()),
            Answer::NotFound(m) => Err(io::Error::new(io::ErrorKind::NotFound, m.clone())),
            Answer::Failed(m) => Err(io::Error::other(m.clone())),
        }
    }
}

/// Everything an image answered during one check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    describe: String,
    /// The image could not be opened at all (a message for the user).
    pub open_error: Option<String>,
    entries: BTreeMap<PathBuf, Answer<EntryKind>>,
    lists: BTreeMap<PathBuf, Answer<Vec<String>>>,
    reads: BTreeMap<PathBuf, Answer<Vec<u8>>>,
}

impl Record {
    /// A record of an image that could not be opened.
    pub fn failed(describe: &str, message: String) -> Record {
        Record { describe: describe.to_string(), open_error: Some(message), ..Record::default() }
    }
}

/// Answers from `inner`, recorded as they are given.
pub struct Recorder<'a> {
    inner: &'a dyn ImageFs,
    record: RefCell<Record>,
}

impl<'a> Recorder<'a> {
    /// `describe`: the image as messages name it (the child opens it
    /// through `/proc/self/fd`).
    pub fn new(inner: &'a dyn ImageFs, describe: &str) -> Recorder<'a> {
        Recorder { inner, record: RefCell::new(Record { describe: describe.to_string(), ..Record::default() }) }
    }

    pub fn into_record(self) -> Record {
        self.record.into_inner()
    }
}

impl ImageFs for Recorder<'_> {
    fn describe(&self) -> String {
        self.record.borrow().describe.clone()
    }

    fn entry(&self, path: &Path) -> io::Result<EntryKind> {
        let r = self.inner.entry(path);
        self.record.borrow_mut().entries.insert(path.to_path_buf(), Answer::of(&r));
        r
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let r = self.inner.list(dir);
        self.record.borrow_mut().lists.insert(dir.to_path_buf(), Answer::of(&r));
        r
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        let r = self.inner.read(file);
        self.record.borrow_mut().reads.insert(file.to_path_buf(), Answer::of(&r));
        r
    }
}

/// The recorded answers as an image; a question never asked in the child
/// finds nothing.
pub struct Replay(pub Record);

impl Replay {
    fn answer<T: Clone>(map: &BTreeMap<PathBuf, Answer<T>>, path: &Path) -> io::Result<T> {
        map.get(path).map_or_else(
            || Err(io::Error::new(io::ErrorKind::NotFound, format!("{}: not in the image", path.display()))),
            Answer::to_result,
        )
    }
}

impl ImageFs for Replay {
    fn describe(&self) -> String {
        self.0.describe.clone()
    }
    fn entry(&self, path: &Path) -> io::Result<EntryKind> {
        Replay::answer(&self.0.entries, path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        Replay::answer(&self.0.lists, dir)
    }
    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        Replay::answer(&self.0.reads, file)
    }
}

const MAGIC: &[u8; 4] = b"SHR1";

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn answer<T>(&mut self, a: &Answer<T>, ok: impl FnOnce(&mut Writer, &T)) {
        match a {
            Answer::Ok(v) => {
                self.u8(0);
                ok(self, v);
            }
            Answer::NotFound(m) => {
                self.u8(1);
                self.bytes(m.as_bytes());
            }
            Answer::Failed(m) => {
                self.u8(2);
                self.bytes(m.as_bytes());
            }
        }
    }
    fn map<T>(&mut self, map: &BTreeMap<PathBuf, Answer<T>>, ok: impl Fn(&mut Writer, &T)) {
        self.bytes(&(map.len() as u64).to_le_bytes());
        for (path, a) in map {
            self.bytes(path.as_os_str().as_bytes());
            self.answer(a, &ok);
        }
    }
}

/// The record as bytes for the pipe.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut w = Writer(MAGIC.to_vec());
    w.bytes(r.describe.as_bytes());
    match &r.open_error {
        Some(m) => {
            w.u8(1);
            w.bytes(m.as_bytes());
        }
        None => w.u8(0),
    }
    w.map(&r.entries, |w, k| match k {
        EntryKind::File => w.u8(0),
        EntryKind::Dir => w.u8(1),
        EntryKind::Symlink(t) => {
            w.u8(2);
            w.bytes(t.as_os_str().as_bytes());
        }
        EntryKind::Device => w.u8(3),
        EntryKind::Other => w.u8(4),
    });
    w.map(&r.lists, |w, names| {
        w.bytes(&(names.len() as u64).to_le_bytes());
        for n in names {
            w.bytes(n.as_bytes());
        }
    });
    w.map(&r.reads, |w, data| w.bytes(data));
    w.0
}

struct Reader<'a>(&'a [u8]);

type Decoded<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if n > self.0.len() {
            return Err(format!("cut short ({n} bytes wanted, {} left)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Decoded<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Decoded<&'a [u8]> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| "a length past the address space".to_string())?;
        self.take(n)
    }
    fn text(&mut self) -> Decoded<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
    }
    /// A count of items that each take at least `min` bytes: never more
    /// than the bytes left allow.
    fn count(&mut self, min: usize) -> Decoded<usize> {
        let n = u64::from_le_bytes(self.bytes()?.try_into().map_err(|_| "a bad count".to_string())?);
        if n > (self.0.len() / min.max(1)) as u64 {
            return Err(format!("a count of {n} past the bytes left"));
        }
        Ok(n as usize)
    }
    fn answer<T>(&mut self, ok: impl FnOnce(&mut Reader<'a>) -> Decoded<T>) -> Decoded<Answer<T>> {
        Ok(match self.u8()? {
            0 => Answer::Ok(ok(self)?),
            1 => Answer::NotFound(self.text()?),
            2 => Answer::Failed(self.text()?),
            t => return Err(format!("answer tag {t}")),
        })
    }
    fn map<T>(&mut self, ok: impl Fn(&mut Reader<'a>) -> Decoded<T>) -> Decoded<BTreeMap<PathBuf, Answer<T>>> {
        let mut map = BTreeMap::new();
        for _ in 0..self.count(9)? {
            let path = PathBuf::from(OsStr::from_bytes(self.bytes()?));
            map.insert(path, self.answer(&ok)?);
        }
        Ok(map)
    }
}

/// Reads a record back; an error says what was wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err("not a record of the ABI check".into());
    }
    let describe = r.text()?;
    let open_error = match r.u8()? {
        0 => None,
        1 => Some(r.text()?),
        t => return Err(format!("open tag {t}")),
    };
    let entries = r.map(|r| {
        Ok(match r.u8()? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink(PathBuf::from(OsStr::from_bytes(r.bytes()?))),
            3 => EntryKind::Device,
            4 => EntryKind::Other,
            t => return Err(format!("kind tag {t}")),
        })
    })?;
    let lists = r.map(|r| (0..r.count(8)?).map(|_| r.text()).collect())?;
    let reads = r.map(|r| Ok(r.bytes()?.to_vec()))?;
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the record", r.0.len()));
    }
    Ok(Record { describe, open_error, entries, lists, reads })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::mem_image::MemImage;

    #[test]
    fn a_replay_answers_what_the_image_answered_and_nothing_else() {
        let img = MemImage::new()
            .file("/usr/lib/libc.so.6", b"\x7fELF...")
            .link("/lib", "usr/lib")
            .device("/dev/null")
            .dir("/opt");
        let rec = Recorder::new(&img, "/home/u/x.sqfs");
        assert_eq!(rec.entry(Path::new("/lib")).unwrap(), EntryKind::Symlink("usr/lib".into()));
        assert_eq!(rec.entry(Path::new("/dev/null")).unwrap(), EntryKind::Device);
        assert!(rec.entry(Path::new("/nope")).is_err());
        assert_eq!(rec.list(Path::new("/usr/lib")).unwrap(), vec!["libc.so.6".to_string()]);
        assert_eq!(rec.read(Path::new("/usr/lib/libc.so.6")).unwrap(), b"\x7fELF...");
        let record = rec.into_record();
        let back = decode(&encode(&record)).unwrap();
        assert_eq!(back, record);
        let replay = Replay(back);
        assert_eq!(replay.describe(), "/home/u/x.sqfs");
        assert_eq!(replay.entry(Path::new("/lib")).unwrap(), EntryKind::Symlink("usr/lib".into()));
        assert_eq!(replay.entry(Path::new("/nope")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(replay.read(Path::new("/usr/lib/libc.so.6")).unwrap(), b"\x7fELF...");
        // Never asked in the child: not there.
        assert_eq!(replay.entry(Path::new("/opt")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let failed = Record::failed("/x", "bad superblock".into());
        assert_eq!(decode(&encode(&failed)).unwrap().open_error.as_deref(), Some("bad superblock"));
    }

    #[test]
    fn damaged_records_are_refused_without_trusting_their_lengths() {
        let img = MemImage::new().file("/a", &[7u8; 100]);
        let rec = Recorder::new(&img, "x");
        rec.read(Path::new("/a")).unwrap();
        let bytes = encode(&rec.into_record());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        // The describe length claims 2^63 bytes.
        huge[4..12].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(decode(&huge).is_err());
        let mut extra = bytes;
        extra.push(0);
        assert!(decode(&extra).unwrap_err().contains("after the record"));
    }
}
