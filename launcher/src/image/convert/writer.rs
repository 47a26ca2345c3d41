//! Carrying the conversion out: decompress layers, feed the flattened tar to
//! `tar2sqfs` (or a directory to `gensquashfs`), hash the result.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use super::decompress::{layer_err, open_layer, pump, Pumped};
use crate::image::superblock;
use super::flatten::{Decision, FlattenError, Flattener, ImagePath, Kind};
use super::tar_entry::{read_meta, Meta, Out};
use super::{
    Compression, ConvertError, Layer, Progress, SquashOptions,
    SquashSummary,
};

/// Converts layers (bottom layer first, as in the manifest) into the
/// squashfs file `out`. See the module doc.
pub fn layers_to_squashfs(
    layers: &[Layer],
    out: &Path,
    opts: &SquashOptions,
    progress: &dyn Fn(Progress),
) -> Result<SquashSummary, ConvertError> {
    let mut total = 0;
    for l in layers {
        total += match &l.arriving {
            Some(a) => a.size(),
            None => std::fs::metadata(&l.path).map_err(|e| layer_err(l, e))?.len(),
        };
    }
    let mut cmd = Command::new("tar2sqfs");
    cmd.args(["--quiet", "--force", "--no-skip"])
        .args(["--defaults", "uid=0,gid=0,mode=0755"]);
    writer_args(&mut cmd, opts)?;
    cmd.arg(out);
    let mut tool = Tool::spawn(cmd, "tar2sqfs", out)?;
    let stdin = tool.child.stdin.take().expect("piped stdin");
    match feed(layers, stdin, out, total, expansion_limit(total), progress) {
        Ok(()) => {
            progress(Progress::Finishing);
            tool.wait(Some(total))?;
            summarise(out)
        }
        // The writer's own failure explains a broken pipe better than the pipe.
        Err(e @ ConvertError::Writer { .. }) => Err(tool.wait(Some(total)).err().unwrap_or(e)),
        // Bad input: dropping `tool` stops the writer.
        Err(e) => Err(e),
    }
}

/// Packs the directory `dir` as it is (owners, modes, xattrs, hard links) into
/// `out`, for `shoal import DIR`.
///
/// This uses `mksquashfs`: squashfs-tools-ng's `gensquashfs --pack-dir`
/// stores hard links as separate files, and a directory needs no flattening.
pub fn dir_to_squashfs(
    dir: &Path,
    out: &Path,
    opts: &SquashOptions,
    progress: &dyn Fn(Progress),
) -> Result<SquashSummary, ConvertError> {
    let meta = std::fs::metadata(dir).map_err(|e| ConvertError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(ConvertError::io(
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    check_block_size(opts.block_size)?;
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(dir)
        .arg(out)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-xattrs",
            "-one-file-system",
        ])
        .arg("-b")
        .arg(opts.block_size.to_string())
        .arg("-processors")
        .arg(jobs().to_string());
    match opts.compression {
        Compression::Zstd { level } => cmd
            .args(["-comp", "zstd", "-Xcompression-level"])
            .arg(level.to_string()),
        Compression::Gzip { level } => cmd
            .args(["-comp", "gzip", "-Xcompression-level"])
            .arg(level.to_string()),
        Compression::Lz4 => cmd.args(["-comp", "lz4"]),
    };
    cmd.stdin(Stdio::null());
    progress(Progress::Finishing);
    let tool = Tool::spawn(cmd, "mksquashfs", out)?;
    tool.wait(None)?;
    summarise(out)
}

/// Checks that `path` is a squashfs 4.0 image with a sane superblock and
/// hashes it, for `shoal import FILE.sqfs`.
pub fn check_squashfs(path: &Path) -> Result<SquashSummary, ConvertError> {
    summarise(path)
}

fn check_block_size(bs: u32) -> Result<(), ConvertError> {
    if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
        return Err(ConvertError::Options(format!(
            "block size {bs}: use a power of two from 4096 to 1048576"
        )));
    }
    Ok(())
}

/// Compressor threads: all cores. On 2 cores the writer's threads and the
/// decompressing thread share them (measured best; BENCHMARKS.md).
fn jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn writer_args(cmd: &mut Command, opts: &SquashOptions) -> Result<(), ConvertError> {
    let bs = opts.block_size;
    check_block_size(bs)?;
    match opts.compression {
        Compression::Zstd { level } if (1..=22).contains(&level) => {
            cmd.args(["-c", "zstd", "-X"]).arg(format!("level={level}"))
        }
        Compression::Gzip { level } if (1..=9).contains(&level) => {
            cmd.args(["-c", "gzip", "-X"]).arg(format!("level={level}"))
        }
        Compression::Lz4 => cmd.args(["-c", "lz4"]),
        c => {
            return Err(ConvertError::Options(format!(
                "compression level out of range: {c}"
            )))
        }
    };
    cmd.arg("-j")
        .arg(jobs().to_string())
        .arg("-b")
        .arg(bs.to_string());
    Ok(())
}

/// A running squashfs-tools-ng writer, its stderr collected on the side.
struct Tool {
    child: Child,
    name: &'static str,
    out: std::path::PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl Tool {
    fn spawn(mut cmd: Command, name: &'static str, out: &Path) -> Result<Tool, ConvertError> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        if name == "tar2sqfs" {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ConvertError::ToolMissing { tool: name },
            _ => ConvertError::io(Path::new(name), e),
        })?;
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        });
        Ok(Tool {
            child,
            name,
            out: out.to_path_buf(),
            stderr: Some(stderr),
        })
    }

    /// Waits for the writer; `needed` estimates the image size in bytes for
    /// a disk-full message.
    fn wait(mut self, needed: Option<u64>) -> Result<(), ConvertError> {
        let status = self
            .child
            .wait()
            .map_err(|e| ConvertError::io(&self.out, e))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let dir = match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => ".".into(),
        };
        let free = free_bytes(&dir);
        // tar2sqfs does not always say ENOSPC (a failed write may read
        // "I/O error"): a file system left with almost nothing free is the
        // tell. The partial image still holds its space at this point.
        if stderr.contains("No space left on device") || free.is_some_and(|f| f < 4 << 20) {
            let free = free.unwrap_or(0);
            return Err(ConvertError::DiskFull {
                dir,
                needed_mb: needed.map(|n| n.div_ceil(1 << 20)),
                free_mb: free >> 20,
            });
        }
        let message = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(ConvertError::Writer {
            tool: self.name,
            out: self.out.clone(),
            message: if message.is_empty() {
                status.to_string()
            } else {
                message
            },
        })
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        // Only reached without `wait` on an early error: do not leave the
        // writer running (it is our own child; nothing else is touched).
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The most tar bytes an image's layers may unpack to: 512 MiB plus 100
/// times their compressed size. Real layers unpack to 2-10 times their
/// size; a decompression bomb (a gzip of zeros unpacks to 1000 times its
/// size, zstd and tar's sparse entries far more) would otherwise cost time
/// in proportion to what it unpacks to, not to what was downloaded
/// (memory and disk are bounded anyway: layers stream and zero blocks are
/// stored sparse).
pub(crate) fn expansion_limit(compressed: u64) -> u64 {
    (512u64 << 20).saturating_add(compressed.saturating_mul(100))
}



/// Reads the layers top first and writes the flattened tar into `stdin`.
fn feed<W: Write>(
    layers: &[Layer],
    stdin: W,
    out_path: &Path,
    total: u64,
    limit: u64,
    progress: &dyn Fn(Progress),
) -> Result<(), ConvertError> {
    let pipe_err = |e: io::Error| ConvertError::Writer {
        tool: "tar2sqfs",
        out: out_path.to_path_buf(),
        message: e.to_string(),
    };
    let mut out = Out(tar::Builder::new(BufWriter::with_capacity(1 << 20, stdin)));
    let mut flat = Flattener::new();
    let mut dirs: BTreeMap<ImagePath, Meta> = BTreeMap::new();
    let done = Arc::new(AtomicU64::new(0));
    let unpacked = AtomicU64::new(0);
    for (index, layer) in layers.iter().enumerate().rev() {
        flat.begin_layer(index);
        let decoder = open_layer(layer, done.clone())?;
        let over = |e: ConvertError| {
            if unpacked.load(Ordering::Relaxed) > limit {
                ConvertError::BadEntry {
                    digest: layer.digest.clone(),
                    entry: "(its data)".into(),
                    reason: format!(
                        "the layers unpack to more than {limit} bytes from {total} compressed bytes \
                         (Shoal converts at most 512 MiB plus 100 times the compressed size): a decompression bomb"
                    ),
                }
            } else {
                e
            }
        };
        std::thread::scope(|s| -> Result<(), ConvertError> {
            let (tx, rx) = sync_channel(8);
            s.spawn(move || pump(decoder, tx));
            let reader = Pumped {
                rx,
                chunk: Vec::new(),
                at: 0,
                done: done.clone(),
                reported: 0,
                total,
                progress,
                unpacked: &unpacked,
                limit,
            };
            let mut archive = tar::Archive::new(reader);
            let entries = archive.entries().map_err(|e| layer_err(layer, e))?;
            for entry in entries {
                let mut e = entry.map_err(|e| layer_err(layer, e))?;
                let raw = e.path_bytes().into_owned();
                let bad = |reason: String| ConvertError::BadEntry {
                    digest: layer.digest.clone(),
                    entry: String::from_utf8_lossy(&raw).into_owned(),
                    reason,
                };
                use tar::EntryType as T;
                let kind = match e.header().entry_type() {
                    T::Regular | T::Continuous => Kind::File,
                    T::Directory => Kind::Dir,
                    T::Symlink => Kind::Symlink,
                    T::Link => Kind::HardLink(
                        e.link_name_bytes()
                            .ok_or_else(|| bad("hard link without a target".into()))?
                            .into_owned(),
                    ),
                    T::Fifo => Kind::Fifo,
                    T::Char | T::Block => Kind::Device,
                    // Global PAX headers and the like carry no file.
                    T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
                    T::GNUSparse => return Err(bad("GNU sparse files are not supported".into())),
                    other => {
                        return Err(bad(format!(
                            "unknown tar entry type {:?}",
                            other.as_byte() as char
                        )))
                    }
                };
                let named =
                    |e: FlattenError| e.name_layers(|i| layers[i].digest.clone()).to_string();
                match flat.entry(&raw, &kind).map_err(|e| bad(named(e)))? {
                    Decision::Skip | Decision::Link { .. } => {}
                    Decision::Dir(path) => {
                        let meta = read_meta(&mut e).map_err(|e| layer_err(layer, e))?;
                        dirs.insert(path, meta);
                    }
                    Decision::Emit(path) => {
                        let meta = read_meta(&mut e).map_err(|e| layer_err(layer, e))?;
                        match kind {
                            Kind::Symlink => {
                                let target = e
                                    .link_name_bytes()
                                    .ok_or_else(|| bad("symlink without a target".into()))?
                                    .into_owned();
                                out.link(tar::EntryType::Symlink, &path, &target, &meta)
                            }
                            Kind::Fifo => {
                                out.data(tar::EntryType::Fifo, &path, &meta, 0, io::empty())
                            }
                            _ => {
                                let size = e.size();
                                // A read error here is the layer's (corrupt
                                // stream); a write error the writer's.
                                let mut src = ErrTag {
                                    inner: &mut e,
                                    left: size,
                                    failed: None,
                                };
                                let r =
                                    out.data(tar::EntryType::Regular, &path, &meta, size, &mut src);
                                if let Some(err) = src.failed {
                                    return Err(layer_err(layer, err));
                                }
                                r
                            }
                        }
                        .map_err(pipe_err)?;
                    }
                }
            }
            // Read to the end of the stream: a compressed layer cut short
            // fails its gzip/zstd checks here even when the cut fell between
            // tar entries. (A plain tar cut exactly between entries cannot be
            // told from its end: the blob digest, checked by the puller,
            // covers that.)
            let mut rest = archive.into_inner();
            io::copy(&mut rest, &mut io::sink()).map_err(|e| layer_err(layer, e))?;
            Ok(())
        })
        .map_err(over)?;
        flat.end_layer();
    }
    let (dir_list, links) = flat
        .finish()
        .map_err(|(index, path, e)| ConvertError::BadEntry {
            digest: layers[index].digest.clone(),
            entry: String::from_utf8_lossy(&path).into_owned(),
            reason: e.name_layers(|i| layers[i].digest.clone()).to_string(),
        })?;
    // Directories that no layer gave an entry get what tar2sqfs gives
    // implicit parents: 0755 root:root.
    let implicit = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    };
    for path in &dir_list {
        let meta = dirs.get(path).unwrap_or(&implicit);
        out.data(tar::EntryType::Directory, path, meta, 0, io::empty())
            .map_err(pipe_err)?;
    }
    let none = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    };
    for (path, target) in &links {
        out.link(tar::EntryType::Link, path, target, &none)
            .map_err(pipe_err)?;
    }
    let mut w = out.0.into_inner().map_err(pipe_err)?;
    w.flush().map_err(pipe_err)?;
    Ok(())
}

/// Remembers a read error, so it is not mistaken for the writer's, and
/// makes a file that ends early an error (the tar writer would otherwise
/// pass a short entry on, misaligning the stream).
struct ErrTag<'a, R> {
    inner: &'a mut R,
    left: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for ErrTag<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match self.inner.read(buf) {
            Ok(0) if self.left > 0 && !buf.is_empty() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer ends inside a file (truncated download?)",
            )),
            r => r,
        };
        match r {
            Ok(n) => {
                self.left = self.left.saturating_sub(n as u64);
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}


/// Checks the superblock, fsyncs and hashes the file (its sha256 and its
/// hash tree, in one pass).
fn summarise(path: &Path) -> Result<SquashSummary, ConvertError> {
    let io_err = |e| ConvertError::io(path, e);
    // A user's path (`--image=PATH` at submission, `shoal import`): never
    // wait on a FIFO or read a device.
    let mut file = crate::image::file::open_image_file(path, crate::image::file::Links::Follow).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut head = [0u8; superblock::SIZE];
    let n = read_full(&mut file, &mut head).map_err(io_err)?;
    let sb = superblock::parse(&head[..n], len).map_err(|reason| ConvertError::NotSquashfs {
        path: path.to_path_buf(),
        reason,
    })?;
    // The writers do not fsync; the caller renames this file into the store.
    file.sync_all().map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut tree = crate::image::verity::Builder::default();
    hasher.update(&head[..n]);
    tree.update(&head[..n]);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tree.update(&buf[..n]);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(SquashSummary {
        size: len,
        sha256,
        entries: sb.inodes.into(),
        verity: tree.finish(),
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::convert::LayerCompression;

    #[test]
    fn a_decompression_bomb_is_refused_once_past_the_limit() {
        // Regression (issue 18): conversion took time in proportion to what
        // a layer unpacks to, without bound (a gzip of zeros is 1/1000 of
        // it). Here a limit of 4 MiB on an 8 MiB file of zeros.
        use std::io::Write as _;
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(8 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, "zeros", io::repeat(0).take(8 << 20)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let l = Layer { path: dir.path().join("layer"), compression: LayerCompression::Gzip, digest: "sha256:bomb".into(), arriving: None };
        std::fs::write(&l.path, &blob).unwrap();
        let total = blob.len() as u64;
        let out = dir.path().join("out");
        let e = feed(&[l.clone()], io::sink(), &out, total, 4 << 20, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("layer sha256:bomb") && e.contains("decompression bomb") && e.contains("cannot be converted safely"), "{e}");
        // Under the limit it converts; the real limit lets small layers
        // unpack to 512 MiB at least.
        feed(&[l], io::sink(), &out, total, 16 << 20, &|_| {}).unwrap();
        assert!(expansion_limit(total) > 512 << 20);
        assert_eq!(expansion_limit(u64::MAX), u64::MAX);
    }
}
