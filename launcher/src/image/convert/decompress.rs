//! Reading one layer blob: decompression chosen by the magic bytes, on a
//! thread of its own a few MiB ahead of the tar parser, with progress counted
//! on compressed bytes.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::{ConvertError, Layer, LayerCompression, Progress};

/// Counts compressed bytes read (shared with the thread that reports
/// progress).
struct Counting<R> {
    inner: R,
    done: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The layer's decompressed tar stream. The magic bytes decide over the
/// media type: a mislabelled blob is read as what it is.
pub(super) fn open_layer(
    l: &Layer,
    done: Arc<AtomicU64>,
) -> Result<Box<dyn Read + Send>, ConvertError> {
    let file: Box<dyn Read + Send> = match &l.arriving {
        Some(a) => Box::new(a.reader(l.path.clone(), &l.digest)),
        None => Box::new(File::open(&l.path).map_err(|e| layer_err(l, e))?),
    };
    let mut buf = BufReader::with_capacity(1 << 20, Counting { inner: file, done });
    let magic = {
        use std::io::BufRead;
        let head = buf.fill_buf().map_err(|e| layer_err(l, e))?;
        head.get(..4).map(|m| [m[0], m[1], m[2], m[3]])
    };
    let kind = match magic {
        Some([0x1f, 0x8b, _, _]) => LayerCompression::Gzip,
        Some([0x28, 0xb5, 0x2f, 0xfd]) => LayerCompression::Zstd,
        // Anything else is read as a plain tar (whatever the label says): a
        // tar has its "ustar" magic and parses, anything else fails reading.
        _ => LayerCompression::Uncompressed,
    };
    Ok(match kind {
        LayerCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        LayerCompression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(|e| layer_err(l, e))?)
        }
        LayerCompression::Uncompressed => Box::new(buf),
    })
}

/// Decompresses on its own thread, a few MiB ahead of the tar parser: when
/// the writer is slow to take input, decompression goes on instead of
/// waiting on the pipe (gzip is the one step that cannot be split).
pub(super) fn pump(mut from: Box<dyn Read + Send>, to: SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = to.send(Err(e));
                    return;
                }
            }
        }
        if n == 0 {
            return;
        }
        buf.truncate(n);
        if to.send(Ok(buf)).is_err() {
            return; // the reader gave up (bad entry): stop quietly
        }
    }
}

/// The receiving end of [`pump`], reporting progress as data arrives.
pub(super) struct Pumped<'a> {
    pub(super) rx: Receiver<io::Result<Vec<u8>>>,
    pub(super) chunk: Vec<u8>,
    pub(super) at: usize,
    pub(super) done: Arc<AtomicU64>,
    pub(super) reported: u64,
    pub(super) total: u64,
    pub(super) progress: &'a dyn Fn(Progress),
    /// Tar bytes of every layer so far, against the writer's `expansion_limit`.
    pub(super) unpacked: &'a AtomicU64,
    pub(super) limit: u64,
}

/// What [`Pumped`] fails with past the limit (told apart from a corrupt
/// layer by the count, not the text).
pub(super) const BOMB: &str = "the layers unpack to more than the limit";

impl Read for Pumped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.at = 0;
                    let unpacked = self.unpacked.fetch_add(self.chunk.len() as u64, Ordering::Relaxed)
                        + self.chunk.len() as u64;
                    if unpacked > self.limit {
                        return Err(io::Error::other(BOMB));
                    }
                }
                Err(_) => return Ok(0), // end of the layer
            }
            let done = self.done.load(Ordering::Relaxed);
            if done - self.reported >= 4 << 20 {
                self.reported = done;
                (self.progress)(Progress::Reading {
                    done,
                    total: self.total,
                });
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A layer file that could not be read, named with its digest and path.
pub(super) fn layer_err(l: &Layer, source: io::Error) -> ConvertError {
    ConvertError::LayerRead {
        digest: l.digest.clone(),
        path: l.path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_compressed_streams_fail_when_drained() {
        use std::io::Write as _;
        let data = vec![0u8; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (name, blob) in [("gzip", gz), ("zstd", zs)] {
            for cut in [blob.len() / 2, blob.len() - 4] {
                let l = Layer {
                    path: std::env::temp_dir()
                        .join(format!("shoal-trunc-{}-{name}-{cut}", std::process::id())),
                    compression: LayerCompression::Gzip,
                    digest: name.into(),
                    arriving: None,
                };
                std::fs::write(&l.path, &blob[..cut]).unwrap();
                let mut r = open_layer(&l, Arc::new(AtomicU64::new(0))).unwrap();
                let res = io::copy(&mut r, &mut io::sink());
                std::fs::remove_file(&l.path).unwrap();
                assert!(
                    res.is_err(),
                    "{name} cut at {cut} of {}: {res:?}",
                    blob.len()
                );
            }
        }
    }
}
