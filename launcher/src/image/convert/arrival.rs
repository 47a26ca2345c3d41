//! A layer blob the converter reads while it is still being downloaded, so
//! a pull converts as the bytes arrive instead of after the last one
//! (issue 17: overlap download and conversion).
//!
//! The download writes the blob file and reports each chunk written
//! ([`Arrival::grew`]; a retry that starts the file again reports the
//! bytes it threw away as negative) and its end ([`Arrival::finish`]). The
//! reader ([`Arrival::reader`]) reads the file up to what was written,
//! waits for more, and at its end checks the sha256 of every byte it
//! delivered against the layer's digest itself: the download's own check
//! covers the file, this one covers what the converter saw (which a retry
//! that rewrote the file could otherwise make differ).
//!
//! Must never: deliver bytes past what the download reported written, end
//! without the download's success, or end successfully with bytes that do
//! not hash to the digest.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

/// One blob's download as the converter sees it.
pub struct Arrival {
    size: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    written: u64,
    /// The download ended: `Err` says why it failed.
    done: Option<Result<(), String>>,
}

impl Arrival {
    /// A download of `size` bytes (the manifest's) about to start.
    pub fn new(size: u64) -> Arc<Arrival> {
        Arc::new(Arrival { size, state: Mutex::default(), changed: Condvar::new() })
    }

    /// The blob's size as the manifest gives it.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `n` more bytes are in the file (negative: a failed attempt's bytes
    /// are gone; the next attempt writes the file from its start).
    pub fn grew(&self, n: i64) {
        let mut s = self.state();
        s.written = s.written.saturating_add_signed(n);
        self.changed.notify_all();
    }

    /// The download ended (its digest checked when `Ok`).
    pub fn finish(&self, result: Result<(), String>) {
        let mut s = self.state();
        s.done.get_or_insert(result);
        self.changed.notify_all();
    }

    /// Waits until more than `pos` bytes are written (`Some(written)`) or
    /// the download ended with no more (`None`).
    fn wait_beyond(&self, pos: u64) -> io::Result<Option<u64>> {
        let mut s = self.state();
        loop {
            match &s.done {
                Some(Err(e)) => return Err(io::Error::other(format!("its download failed: {e}"))),
                Some(Ok(())) if s.written <= pos => return Ok(None),
                _ if s.written > pos => return Ok(Some(s.written)),
                _ => s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }

    /// A reader of the blob file `path` (created by the download) as it
    /// grows, checked against `digest` (`sha256:HEX`) at its end.
    pub fn reader(self: &Arc<Arrival>, path: PathBuf, digest: &str) -> Growing {
        Growing { arrival: self.clone(), path, file: None, pos: 0, hasher: Sha256::new(), digest: digest.to_string() }
    }
}

/// See [`Arrival::reader`].
pub struct Growing {
    arrival: Arc<Arrival>,
    path: PathBuf,
    file: Option<File>,
    pos: u64,
    hasher: Sha256,
    digest: String,
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(written) = self.arrival.wait_beyond(self.pos)? else {
            let got = format!("sha256:{:x}", std::mem::take(&mut self.hasher).finalize());
            if got != self.digest {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the bytes read as it downloaded are {got}, not the layer")));
            }
            return Ok(0);
        };
        // The file exists once a byte was reported written into it.
        if self.file.is_none() {
            self.file = Some(File::open(&self.path)?);
        }
        let want = buf.len().min((written - self.pos) as usize);
        let n = self.file.as_ref().expect("opened").read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // Reported but not readable: the file was started again (a
            // retry) between the report and this read; wait for it.
            return self.read(buf);
        }
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn digest(b: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(b))
    }

    #[test]
    fn reads_what_arrives_while_it_arrives_and_ends_with_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let a = Arrival::new(data.len() as u64);
        let mut r = a.reader(path.clone(), &digest(&data));
        let writer = {
            let (a, data, path) = (a.clone(), data.clone(), path.clone());
            std::thread::spawn(move || {
                let mut f = File::create(&path).unwrap();
                for c in data.chunks(7000) {
                    f.write_all(c).unwrap();
                    a.grew(c.len() as i64);
                    std::thread::yield_now();
                }
                a.finish(Ok(()));
            })
        };
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_failed_download_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"abc").unwrap();
        let a = Arrival::new(10);
        a.grew(3);
        a.finish(Err("connection reset".into()));
        let e = a.reader(path, &digest(b"abcdefghij")).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_digest_fail_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"evil").unwrap();
        let a = Arrival::new(4);
        a.grew(4);
        a.finish(Ok(()));
        let e = a.reader(path, &digest(b"good")).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_retry_that_starts_the_file_again_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let a = Arrival::new(6);
        let mut r = a.reader(path.clone(), &digest(b"abcdef"));
        std::fs::write(&path, b"abc").unwrap();
        a.grew(3);
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        // The attempt broke off; the next writes the whole file again.
        a.grew(-3);
        std::fs::write(&path, b"abcdef").unwrap();
        a.grew(6);
        a.finish(Ok(()));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!([&buf[..], &rest].concat(), b"abcdef");
    }
}
