//! Staging: making an image available on one compute node before its tasks
//! start, in a node-local cache.
//!
//! Layout, one tree per Slurm node name (the test bed runs three nodes on
//! one kernel, and a shared filesystem path would collide the same way):
//!
//! ```text
//! <cache_dir>/<node>/
//!     .lock                      flock held while the cache changes
//!     images/<key>.sqfs          staged images
//!     refs/<key>/<job>           one empty file per job using the image
//!     tmp/                       copies in progress (unique names)
//! ```
//!
//! `<key>` is the image digest's hex for site images, and `u<uid>-<hex>`
//! for images from a user's own store: those are copied with that user's
//! credentials and owned by them (mode 0400 from their first byte: no other
//! user can open a copy in progress), so one user's copy can never
//! be served to another user, whatever digest their job claimed.
//!
//! A copy is verified against the squashfs checksum recorded when the image
//! was written, and published by rename, so no reader ever sees a partial
//! file. The cache has a size limit; images that no job references are
//! evicted least-recently-used first. Nothing here decides *whose*
//! credentials open the source: the caller passes an already-open reader
//! (the plugin opens user-store files as the user).
//!
//! A source that stops giving bytes (a hung NFS server, the user's own
//! stopped FUSE server) fails the copy after [`NodeCache::with_stall_timeout`]
//! without a byte: Slurm 22.05 cannot signal a task still in its privileged
//! setup, so a copy that waited for ever could be cancelled by nothing. The
//! source is read on a thread of its own; on a stall the partial copy is
//! removed and the error returned while that thread may still be blocked
//! (it ends with its process, or when its read returns).

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::image::store::Scope;
use crate::reference::Digest;

/// Why staging failed. Each message names what failed and what to do; none
/// of them is the node's fault, so the plugin fails the job, not the node.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("node cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("node cache {dir} is full while staging image {digest}; free space on that filesystem or lower `node.cache_size`")]
    DiskFull { dir: PathBuf, digest: Digest },
    #[error("image {digest} ({size} bytes) does not fit in the node cache limit of {limit} bytes even after evicting unused images ({in_use} bytes are in use by running jobs); raise `node.cache_size` in the Shoal config")]
    TooSmall {
        digest: Digest,
        size: u64,
        limit: u64,
        in_use: u64,
    },
    #[error("image {digest}: the source holds {} bytes, not the recorded {expected}; the stored image is damaged or was replaced: remove it (`shoal rm`) and pull it again", actual.map_or_else(|| format!("more than {expected}"), |n| n.to_string()))]
    Size { digest: Digest, expected: u64, actual: Option<u64> },
    #[error("image {digest}: its source gave no data for {secs} s ({copied} of {expected} bytes copied), so the copy into the node cache was stopped and removed; the file is on a filesystem that stopped answering (a hung network filesystem, a stopped FUSE server): check it and resubmit (admins: `node.stall_timeout` in the Shoal config)")]
    Stalled { digest: Digest, secs: u64, copied: u64, expected: u64 },
    #[error("invalid Slurm node name {0:?} for the node cache: expected letters, digits, `.`, `_` and `-`")]
    NodeName(String),
    #[error("node cache {path} is not safe for root to write in ({why}); make it a root-owned directory that only root can write (`node.cache_dir` in the Shoal config)")]
    Unsafe { path: PathBuf, why: String },
    #[error("image {digest}: the copy's checksum {actual} differs from the recorded {expected}; the stored image is damaged: remove it (`shoal rm`) and pull it again")]
    Checksum {
        digest: Digest,
        expected: String,
        actual: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is known about an image before it is copied: its digest names the
/// cache entry, the checksum and size were recorded when it was written.
#[derive(Debug, Clone)]
pub struct Expected {
    pub digest: Digest,
    /// Hex sha256 of the squashfs file.
    pub sha256: String,
    pub size: u64,
    /// Which store it comes from: a site image's copy serves every user, a
    /// user image's copy is for [`Expected::owner`] alone.
    pub scope: Scope,
    /// Whose copy it is (uid, gid): the job's user for a [`Scope::User`]
    /// image (it names and owns the copy); root for a site image.
    pub owner: (u32, u32),
}

impl Expected {
    fn key(&self) -> String {
        match self.scope {
            Scope::Site => self.digest.hex().to_string(),
            Scope::User => format!("u{}-{}", self.owner.0, self.digest.hex()),
        }
    }
}

/// What a copy reads: it is read on a thread of its own (see the module
/// doc), so it must be `Send`.
pub type Source = Box<dyn Read + Send>;

/// How long a copy waits for its source's next byte by default
/// (`node.stall_timeout`).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(crate::config::DEFAULT_STALL_SECS);

/// The node-local image cache of one Slurm node.
#[derive(Debug, Clone)]
pub struct NodeCache {
    root: PathBuf,
    limit: u64,
    stall: Duration,
}

/// A held cache lock; released when dropped or when the process dies.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl NodeCache {
    /// Opens (creating as needed) the cache of `node` under `cache_dir`.
    ///
    /// Root writes here for users, so the tree must be root's (the
    /// caller's): the node name must be one path component, and no
    /// directory on the way may be writable by anyone else (a sticky one
    /// like /tmp only above `cache_dir`) or be a symlink someone else owns.
    /// Otherwise a user could plant symlinks that root would write through.
    pub fn open(cache_dir: &Path, node: &str, limit: u64) -> Result<NodeCache, StageError> {
        if !valid_node_name(node) {
            return Err(StageError::NodeName(node.to_string()));
        }
        check_owned_path(cache_dir)?;
        let root = cache_dir.join(node);
        for sub in ["images", "refs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        check_owned_path(&root.join("tmp"))?;
        for sub in ["images", "refs"] {
            check_owned_path(&root.join(sub))?;
        }
        // Searchable, not listable: a user's task opens its own entry by
        // name, but the names tell which images (digests) and jobs other
        // users run on the node.
        for sub in ["images", "refs", "tmp"] {
            let dir = root.join(sub);
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o711));
        }
        Ok(NodeCache { root, limit, stall: DEFAULT_STALL_TIMEOUT })
    }

    /// A copy whose source gives no byte for `stall` fails with
    /// [`StageError::Stalled`] (default [`DEFAULT_STALL_TIMEOUT`]).
    pub fn with_stall_timeout(mut self, stall: Duration) -> NodeCache {
        self.stall = stall.max(Duration::from_millis(1));
        self
    }

    fn lock(&self) -> Result<Locked, StageError> {
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // flock: released by the kernel if the holder is killed, so a
        // cancelled job can never wedge the node's cache.
        file.lock().map_err(io_err(&path))?;
        Ok(Locked(file))
    }

    /// Path of a staged image (which may not exist).
    pub fn image_path(&self, expected: &Expected) -> PathBuf {
        self.root.join("images").join(format!("{}.sqfs", expected.key()))
    }

    /// Stages `expected` for `job`, copying from `source` unless the node
    /// already has it. Returns the path of the staged file, and whether this
    /// call copied it.
    pub fn stage(
        &self,
        expected: &Expected,
        job: u32,
        source: impl FnOnce() -> io::Result<Source>,
    ) -> Result<(PathBuf, bool), StageError> {
        let dest = self.image_path(expected);
        {
            let _lock = self.lock()?;
            self.add_ref(&expected.key(), job)?;
            if dest.is_file() {
                touch(&dest);
                return Ok((dest, false));
            }
            if let Err(e) = self.make_room(expected) {
                self.remove_ref(&expected.key(), job);
                return Err(e);
            }
            // Dead stagers' copies take room too (a job killed mid-copy on
            // a node whose epilog has not run yet).
            let _ = self.clean_tmp();
        }
        // The copy runs without the cache lock: its source is the user's
        // (a FIFO, a stalled network file, their own FUSE server), and a
        // source that never ends must stall only this job, not every
        // user's staging on the node.
        let result = self.copy_in(expected, source).and_then(|tmp| {
            let _lock = self.lock()?;
            let published = if dest.is_file() {
                // Another stager of the same image won the race.
                let _ = fs::remove_file(&tmp.0);
                Ok(false)
            } else {
                fs::rename(&tmp.0, &dest).map(|()| true).map_err(io_err(&dest))
            };
            drop(tmp);
            published
        });
        if result.is_err() {
            let _lock = self.lock()?;
            self.remove_ref(&expected.key(), job);
        }
        result.map(|copied| (dest, copied))
    }

    fn add_ref(&self, key: &str, job: u32) -> Result<(), StageError> {
        let dir = self.root.join("refs").join(key);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let file = dir.join(job.to_string());
        File::create(&file).map_err(io_err(&file))?;
        Ok(())
    }

    fn remove_ref(&self, key: &str, job: u32) {
        let dir = self.root.join("refs").join(key);
        let _ = fs::remove_file(dir.join(job.to_string()));
        let _ = fs::remove_dir(dir); // only succeeds when no other job refers
    }

    /// Drops every reference `job` holds (the job epilog), leaving the
    /// images for later jobs until eviction needs the space, and removes
    /// copies that stagers killed with their job (`scancel`) left in
    /// `tmp/`.
    pub fn release_job(&self, job: u32) -> Result<(), StageError> {
        let _lock = self.lock()?;
        let refs = self.root.join("refs");
        for entry in fs::read_dir(&refs).map_err(io_err(&refs))?.flatten() {
            let _ = fs::remove_file(entry.path().join(job.to_string()));
            let _ = fs::remove_dir(entry.path());
        }
        self.clean_tmp()
    }

    fn in_use(&self, key: &str) -> bool {
        fs::read_dir(self.root.join("refs").join(key))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Evicts unreferenced images, least recently used first, until the new
    /// image fits under the limit.
    fn make_room(&self, expected: &Expected) -> Result<(), StageError> {
        if expected.size > self.limit {
            return Err(StageError::TooSmall {
                digest: expected.digest.clone(),
                size: expected.size,
                limit: self.limit,
                in_use: 0,
            });
        }
        let images = self.root.join("images");
        let mut entries: Vec<(SystemTime, u64, PathBuf, bool)> = fs::read_dir(&images)
            .map_err(io_err(&images))?
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let meta = e.metadata().ok()?;
                let hex = path.file_stem()?.to_str()?.to_string();
                let used = self.in_use(&hex);
                Some((meta.modified().ok()?, meta.len(), path, used))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.0);
        for (_, len, path, used) in &entries {
            if total + expected.size <= self.limit {
                break;
            }
            if !used {
                fs::remove_file(path).map_err(io_err(path))?;
                total -= len;
            }
        }
        if total + expected.size > self.limit {
            let in_use = entries.iter().filter(|e| e.3).map(|e| e.1).sum();
            return Err(StageError::TooSmall {
                digest: expected.digest.clone(),
                size: expected.size,
                limit: self.limit,
                in_use,
            });
        }
        Ok(())
    }

    /// Copies the source into a new private file in `tmp/`, checked
    /// against the expected size and checksum; returns it (still flocked:
    /// [`NodeCache::clean_tmp`] leaves copies in progress alone).
    fn copy_in(
        &self,
        expected: &Expected,
        source: impl FnOnce() -> io::Result<Source>,
    ) -> Result<(PathBuf, File), StageError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            expected.digest.hex(),
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut created = false;
        let result = (|| {
            let reader = source().map_err(io_err(&tmp))?;
            // A new file (never one planted there), private from its first
            // byte: a user image must not be readable by other users while
            // it is copied (a descriptor opened then would outlive the
            // chmod). Site images are readable by all once published.
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            created = true;
            out.try_lock().map_err(|e| io_err(&tmp)(io::Error::other(e.to_string())))?;
            if let (Scope::User, (uid, gid)) = (expected.scope, expected.owner) {
                // Readable by its user alone (their FUSE server opens it).
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid)).map_err(io_err(&tmp))?;
                out.set_permissions(fs::Permissions::from_mode(0o400))
                    .map_err(io_err(&tmp))?;
            }
            let mut hasher = Sha256::new();
            let mut copied: u64 = 0;
            let chunks = read_ahead(reader, expected.size + 1);
            loop {
                let chunk = match chunks.recv_timeout(self.stall) {
                    Ok(Ok(chunk)) if chunk.is_empty() => break,
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => return Err(io_err(&tmp)(e)),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Err(StageError::Stalled {
                            digest: expected.digest.clone(),
                            secs: self.stall.as_secs_f64().ceil() as u64,
                            copied,
                            expected: expected.size,
                        })
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(io_err(&tmp)(io::Error::other("the source's reader ended without an answer")))
                    }
                };
                copied += chunk.len() as u64;
                if copied > expected.size {
                    return Err(StageError::Size { digest: expected.digest.clone(), expected: expected.size, actual: None });
                }
                hasher.update(&chunk);
                out.write_all(&chunk).map_err(|e| self.write_error(e, expected))?;
            }
            if copied != expected.size {
                return Err(StageError::Size { digest: expected.digest.clone(), expected: expected.size, actual: Some(copied) });
            }
            if expected.scope == Scope::Site {
                out.set_permissions(fs::Permissions::from_mode(0o444))
                    .map_err(io_err(&tmp))?;
            }
            out.sync_all().map_err(|e| self.write_error(e, expected))?;
            let actual = hex(&hasher.finalize());
            if actual != expected.sha256 {
                return Err(StageError::Checksum {
                    digest: expected.digest.clone(),
                    expected: expected.sha256.clone(),
                    actual,
                });
            }
            Ok(out)
        })();
        match result {
            Ok(out) => Ok((tmp, out)),
            Err(e) => {
                if created {
                    let _ = fs::remove_file(&tmp);
                }
                Err(e)
            }
        }
    }

    fn write_error(&self, e: io::Error, expected: &Expected) -> StageError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            StageError::DiskFull {
                dir: self.root.clone(),
                digest: expected.digest.clone(),
            }
        } else {
            StageError::Io {
                path: self.root.join("tmp"),
                source: e,
            }
        }
    }

    /// Removes copies left in `tmp/` by stagers that died: a copy in
    /// progress holds a lock on its file, which the kernel drops when its
    /// stager dies.
    pub fn clean_tmp(&self) -> Result<(), StageError> {
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let path = entry.path();
            let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) else {
                let _ = fs::remove_file(&path); // not a regular file of ours
                continue;
            };
            if file.try_lock().is_ok() {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }
}

/// Reads `reader` on a thread of its own, at most `limit` bytes, in chunks
/// of up to 1 MiB; an empty chunk is the end. The thread stops when the
/// receiver is dropped (at its next chunk) or the limit is reached.
///
/// Never more than the limit (the recorded size + 1, to see a longer
/// source): a source that does not end (`/dev/zero`, a growing file) must
/// not fill the node's disk.
fn read_ahead(mut reader: Source, limit: u64) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::sync_channel(2);
    let spawned = std::thread::Builder::new().name("shoal-stage-read".into()).spawn(move || {
        let mut left = limit;
        while left > 0 {
            let mut buf = vec![0u8; left.min(1 << 20) as usize];
            let chunk = match reader.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let last = !matches!(&chunk, Ok(b) if !b.is_empty());
            left -= chunk.as_ref().map_or(0, |b| b.len() as u64);
            if tx.send(chunk).is_err() || last {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = tx.send(Err(e));
        return rx;
    }
    rx
}

/// A Slurm node name as a cache directory name: one path component of
/// letters, digits, `.`, `_` and `-`, not `.` or `..`.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 255
        && node != "."
        && node != ".."
        && node.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Checks every existing level of `path` (an absolute or relative path):
/// each must be a directory owned by root or by this process's user,
/// writable by no one else (above the last level a sticky directory such
/// as /tmp is fine), and a symlink on the way must be owned by root or
/// this user too (then no one else can replace it).
fn check_owned_path(path: &Path) -> Result<(), StageError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |p: &Path, why: String| StageError::Unsafe { path: p.to_path_buf(), why };
    let mut levels: Vec<&Path> = path.ancestors().filter(|p| !p.as_os_str().is_empty()).collect();
    levels.reverse();
    let last = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate() {
        let link = match fs::symlink_metadata(level) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(level)(e)),
        };
        if link.file_type().is_symlink() && link.uid() != 0 && link.uid() != me {
            return Err(unsafe_dir(level, format!("a symlink owned by uid {}", link.uid())));
        }
        let md = fs::metadata(level).map_err(io_err(level))?;
        if !md.is_dir() {
            return Err(unsafe_dir(level, "not a directory".into()));
        }
        let sticky_ok = i < last && md.mode() & 0o1000 != 0;
        if (md.uid() != 0 && md.uid() != me) || (md.mode() & 0o022 != 0 && !sticky_ok) {
            return Err(unsafe_dir(level, format!("owned by uid {} with mode {:o}", md.uid(), md.mode() & 0o7777)));
        }
    }
    Ok(())
}

/// Marks an image as just used, for least-recently-used eviction.
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a reader's bytes (what the store records for a squashfs).
pub fn sha256_hex(mut r: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut r, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
