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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

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
    pub owner: Owner,
}

/// Whose store an image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The site store: one copy serves every user.
    Site,
    /// A user's own store (uid, gid): a copy for that user only.
    User { uid: u32, gid: u32 },
}

impl Expected {
    fn key(&self) -> String {
        match self.owner {
            Owner::Site => self.digest.hex().to_string(),
            Owner::User { uid, .. } => format!("u{uid}-{}", self.digest.hex()),
        }
    }
}

/// The node-local image cache of one Slurm node.
#[derive(Debug, Clone)]
pub struct NodeCache {
    root: PathBuf,
    limit: u64,
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
        Ok(NodeCache { root, limit })
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
        source: impl FnOnce() -> io::Result<Box<dyn Read>>,
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
        source: impl FnOnce() -> io::Result<Box<dyn Read>>,
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
            let mut reader = source().map_err(io_err(&tmp))?;
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
            if let Owner::User { uid, gid } = expected.owner {
                // Readable by its user alone (their FUSE server opens it).
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid)).map_err(io_err(&tmp))?;
                out.set_permissions(fs::Permissions::from_mode(0o400))
                    .map_err(io_err(&tmp))?;
            }
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut copied: u64 = 0;
            loop {
                // Never more than the recorded size (+1 to see a longer
                // source): a source that does not end (`/dev/zero`, a
                // growing file) must not fill the node's disk.
                let room = (expected.size + 1 - copied).min(buf.len() as u64) as usize;
                let n = match reader.read(&mut buf[..room]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(&tmp)(e)),
                };
                copied += n as u64;
                if copied > expected.size {
                    return Err(StageError::Size { digest: expected.digest.clone(), expected: expected.size, actual: None });
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| self.write_error(e, expected))?;
            }
            if copied != expected.size {
                return Err(StageError::Size { digest: expected.digest.clone(), expected: expected.size, actual: Some(copied) });
            }
            if expected.owner == Owner::Site {
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
mod tests {
    use super::*;
    use std::io::Cursor;

    fn image(byte: u8, len: usize) -> (Expected, Vec<u8>) {
        let data = vec![byte; len];
        let digest: Digest = format!("sha256:{:064x}", byte as u64 + 1).parse().unwrap();
        let sha256 = sha256_hex(&data[..]).unwrap();
        (
            Expected {
                digest,
                sha256,
                size: len as u64,
                owner: Owner::Site,
            },
            data,
        )
    }

    fn src(data: &[u8]) -> impl FnOnce() -> io::Result<Box<dyn Read>> + '_ {
        move || Ok(Box::new(Cursor::new(data.to_vec())) as Box<dyn Read>)
    }

    #[test]
    fn stages_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let (exp, data) = image(1, 100);
        let (p, copied) = cache.stage(&exp, 7, src(&data)).unwrap();
        assert!(copied);
        assert_eq!(fs::read(&p).unwrap(), data);
        // A second job reuses it without reading the source.
        let (p2, copied) = cache
            .stage(&exp, 8, || panic!("source opened for an image already staged"))
            .unwrap();
        assert_eq!(p, p2);
        assert!(!copied);
        assert!(p.starts_with(dir.path().join("n1")));
    }

    #[test]
    fn nodes_have_separate_caches() {
        let dir = tempfile::tempdir().unwrap();
        let (exp, data) = image(1, 10);
        let a = NodeCache::open(dir.path(), "n1", 100).unwrap().stage(&exp, 1, src(&data)).unwrap().0;
        let b = NodeCache::open(dir.path(), "n2", 100).unwrap().stage(&exp, 1, src(&data)).unwrap().0;
        assert_ne!(a, b);
    }

    #[test]
    fn user_images_are_kept_apart_per_user_and_owned_by_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let (site, data) = image(1, 10);
        let me = own_ids();
        let mine = Expected { owner: Owner::User { uid: me.0, gid: me.1 }, ..site.clone() };
        let theirs = Expected { owner: Owner::User { uid: me.0 + 1, gid: me.1 }, ..site.clone() };
        let p_site = cache.stage(&site, 1, src(&data)).unwrap().0;
        let p_mine = cache.stage(&mine, 1, src(&data)).unwrap().0;
        assert_ne!(p_site, p_mine);
        assert_ne!(cache.image_path(&mine), cache.image_path(&theirs));
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&p_mine).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (me.0, 0o400));
    }

    /// Reads like a slow copy, and looks at the copy in progress while it
    /// runs: what another user on the node could open at that moment.
    struct Watching {
        data: Cursor<Vec<u8>>,
        tmp: PathBuf,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
    }

    impl Read for Watching {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            use std::os::unix::fs::MetadataExt;
            for e in fs::read_dir(&self.tmp)?.flatten() {
                let m = e.metadata()?;
                self.seen.lock().unwrap().push((m.uid(), m.mode() & 0o777));
            }
            let n = buf.len().min(4);
            self.data.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_user_image_is_private_from_its_first_byte() {
        // Regression (issue 18): the copy in tmp/ was created 0644 by root
        // and chmod'ed 0400 only at the end, so another user could open it
        // during the copy and keep reading the user's image.
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let (site, data) = image(1, 16);
        let me = own_ids();
        let mine = Expected { owner: Owner::User { uid: me.0, gid: me.1 }, ..site };
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let watching = Watching { data: Cursor::new(data.clone()), tmp: dir.path().join("n1/tmp"), seen: seen.clone() };
        cache.stage(&mine, 1, move || Ok(Box::new(watching) as Box<dyn Read>)).unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "the copy was never seen in progress");
        for (uid, mode) in seen.iter() {
            assert_eq!((*uid, mode & 0o077), (me.0, 0), "copy in progress was uid {uid} mode {mode:o}");
        }
    }

    #[test]
    fn a_node_name_is_one_path_component() {
        // Regression (issue 18): the node name was joined to the cache
        // directory unchecked; `../x` made root create and write the cache
        // outside it.
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        fs::create_dir(&cache_dir).unwrap();
        for bad in ["../escaped", "a/b", "..", ".", "", "n1\0"] {
            let err = NodeCache::open(&cache_dir, bad, 100).unwrap_err();
            assert!(matches!(err, StageError::NodeName(_)), "{bad:?}: {err}");
        }
        assert!(!dir.path().join("escaped").exists());
        assert!(valid_node_name("n1") && valid_node_name("node-01.rack_2"));
    }

    #[test]
    fn a_cache_others_can_write_is_refused() {
        // Regression (issue 18): a cache directory writable by users (a
        // `node.cache_dir` under /tmp or made 0777) was used as it was, so a
        // user could plant `refs/KEY/JOB` or `.lock` symlinks that root then
        // created and truncated files through.
        let dir = tempfile::tempdir().unwrap();
        let open = fs::Permissions::from_mode(0o777);
        let cache_dir = dir.path().join("cache");
        fs::create_dir(&cache_dir).unwrap();
        fs::set_permissions(&cache_dir, open.clone()).unwrap();
        let err = NodeCache::open(&cache_dir, "n1", 100).unwrap_err().to_string();
        assert!(err.contains("not safe") && err.contains("node.cache_dir"), "{err}");
        assert!(!cache_dir.join("n1").exists(), "created inside an unsafe directory");

        // A safe cache_dir whose node tree someone made writable.
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o755)).unwrap();
        NodeCache::open(&cache_dir, "n1", 100).unwrap();
        fs::set_permissions(cache_dir.join("n1/refs"), open.clone()).unwrap();
        let err = NodeCache::open(&cache_dir, "n1", 100).unwrap_err().to_string();
        assert!(err.contains("n1/refs"), "{err}");

        // A sticky world-writable directory above the cache (/tmp) is fine.
        let sticky = dir.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        NodeCache::open(&sticky.join("cache"), "n1", 100).unwrap();
        // ... but not as the cache directory itself.
        let err = NodeCache::open(&sticky, "n2", 100).unwrap_err().to_string();
        assert!(err.contains("not safe"), "{err}");
    }

    #[test]
    fn a_symlink_someone_else_owns_is_refused() {
        let me = own_ids();
        if me.0 != 0 {
            return; // chown to another user needs root (CI runs as root)
        }
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(4242), Some(4242)).unwrap();
        let err = NodeCache::open(&link, "n1", 100).unwrap_err().to_string();
        assert!(err.contains("symlink owned by uid 4242"), "{err}");
        assert!(!real.join("n1").exists());
    }

    #[test]
    fn a_source_longer_or_shorter_than_recorded_is_cut_and_refused() {
        // Regression (issue 18): the copy read its source to the end, so a
        // pin naming `/dev/zero` (read as the user) filled the node's disk.
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1 << 30).unwrap();
        let (exp, _) = image(1, 100);
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        struct Counting(std::sync::Arc<std::sync::atomic::AtomicU64>);
        impl Read for Counting {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                // "Endless" up to 4 MiB, so that a copy without the bound
                // ends (with a checksum error) rather than hangs the test.
                if self.0.load(std::sync::atomic::Ordering::Relaxed) > 4 << 20 {
                    return Ok(0);
                }
                buf.fill(0);
                self.0.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(buf.len())
            }
        }
        let endless = Counting(read.clone());
        let err = cache.stage(&exp, 1, move || Ok(Box::new(endless) as Box<dyn Read>)).unwrap_err();
        assert!(matches!(err, StageError::Size { actual: None, .. }), "{err}");
        assert!(read.load(std::sync::atomic::Ordering::Relaxed) <= 101, "read past the recorded size");
        let (short, data) = image(2, 100);
        let err = cache.stage(&Expected { size: 200, ..short }, 1, src(&data)).unwrap_err();
        assert!(err.to_string().contains("holds 100 bytes, not the recorded 200"), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("n1/tmp")).unwrap().count(), 0);
        assert!(!cache.in_use(&exp.key()));
    }

    #[test]
    fn the_cache_lock_is_free_while_a_source_is_read() {
        // Regression (issue 18): the cache lock was held across the copy,
        // so one user's source that never answers (a FIFO, their own FUSE
        // file) stalled every other user's staging on the node.
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let (exp, data) = image(1, 16);
        let lock_path = dir.path().join("n1/.lock");
        struct Probe {
            data: Cursor<Vec<u8>>,
            lock: PathBuf,
            free: Option<bool>,
            out: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
        }
        impl Read for Probe {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.free.is_none() {
                    let other = File::options().write(true).open(&self.lock)?;
                    let free = other.try_lock().is_ok();
                    self.free = Some(free);
                    *self.out.lock().unwrap() = Some(free);
                }
                self.data.read(buf)
            }
        }
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let probe = Probe { data: Cursor::new(data), lock: lock_path, free: None, out: out.clone() };
        cache.stage(&exp, 1, move || Ok(Box::new(probe) as Box<dyn Read>)).unwrap();
        assert_eq!(*out.lock().unwrap(), Some(true), "the cache lock was held while reading the source");
        assert!(cache.image_path(&exp).is_file());
    }

    #[test]
    fn clean_tmp_leaves_copies_in_progress_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let tmp = dir.path().join("n1/tmp");
        fs::write(tmp.join("dead"), b"x").unwrap();
        let live = File::create(tmp.join("live")).unwrap();
        live.lock().unwrap();
        cache.clean_tmp().unwrap();
        assert!(!tmp.join("dead").exists());
        assert!(tmp.join("live").exists());
    }

    /// The stager [`a_stager_killed_mid_copy_leaves_nothing_visible`]
    /// SIGKILLs: run as a child process (`--ignored --exact`), it stages a
    /// 64 MiB image from a source that dribbles.
    #[test]
    #[ignore = "helper: run by a_stager_killed_mid_copy_leaves_nothing_visible"]
    fn kill_point_child() {
        let Some(dir) = std::env::var_os("SHOAL_TEST_KILL_CACHE") else { return };
        struct Slow(u64);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(std::time::Duration::from_millis(5));
                let n = (buf.len() as u64).min(self.0).min(64 << 10) as usize;
                buf[..n].fill(7);
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let (exp, _) = image(7, 0);
        let exp = Expected { size: 64 << 20, ..exp };
        let cache = NodeCache::open(Path::new(&dir), "n1", 1 << 30).unwrap();
        let _ = cache.stage(&exp, 99, || Ok(Box::new(Slow(64 << 20)) as Box<dyn Read>));
    }

    #[test]
    fn a_stager_killed_mid_copy_leaves_nothing_visible() {
        // Kill point (issue 18): a task SIGKILLed while it copies an image
        // into the node cache leaves no published image, a copy that
        // `clean_tmp` removes, no lock, and the next stage succeeds.
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "stage::tests::kill_point_child", "--test-threads=1"])
            .env("SHOAL_TEST_KILL_CACHE", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let tmp = dir.path().join("n1/tmp");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Until the copy has begun (some bytes in tmp/).
        loop {
            let started = fs::read_dir(&tmp).map(|r| r.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0))).unwrap_or(false);
            if started {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the child never started copying");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1 << 30).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("n1/images")).unwrap().count(), 0, "a partial image was published");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 1, "the killed copy should be in tmp/");
        // The dead job's epilog drops its reference and the dead copy
        // (regression, issue 18: nothing called `clean_tmp`, so every copy
        // `scancel` cut short stayed in tmp/ for good).
        cache.release_job(99).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("n1/refs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the epilog left the dead copy");
        // No lock is left: the next job stages at once.
        let (exp, data) = image(8, 1000);
        let (p, copied) = cache.stage(&exp, 100, src(&data)).unwrap();
        assert!(copied && p.is_file());
    }

    /// The test process's own uid and gid (chown to them needs no root).
    fn own_ids() -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata("/proc/self").unwrap();
        (meta.uid(), meta.gid())
    }

    #[test]
    fn checksum_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
        let (mut exp, data) = image(1, 100);
        exp.sha256 = "0".repeat(64);
        let err = cache.stage(&exp, 7, src(&data)).unwrap_err();
        assert!(matches!(err, StageError::Checksum { .. }), "{err}");
        assert!(!cache.image_path(&exp).exists());
        assert_eq!(fs::read_dir(dir.path().join("n1/tmp")).unwrap().count(), 0);
        assert!(!cache.in_use(&exp.key()), "failed stage kept its reference");
    }

    #[test]
    fn evicts_least_recently_used_unreferenced_images() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 250).unwrap();
        let (a, da) = image(1, 100);
        let (b, db) = image(2, 100);
        let (c, dc) = image(3, 100);
        cache.stage(&a, 1, src(&da)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.stage(&b, 2, src(&db)).unwrap();
        cache.release_job(1).unwrap();
        cache.release_job(2).unwrap();
        // a is older: it goes, b stays.
        cache.stage(&c, 3, src(&dc)).unwrap();
        assert!(!cache.image_path(&a).exists());
        assert!(cache.image_path(&b).exists());
        assert!(cache.image_path(&c).exists());
    }

    #[test]
    fn images_in_use_are_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 150).unwrap();
        let (a, da) = image(1, 100);
        let (b, db) = image(2, 100);
        cache.stage(&a, 1, src(&da)).unwrap();
        let err = cache.stage(&b, 2, src(&db)).unwrap_err();
        match err {
            StageError::TooSmall { in_use, limit, .. } => {
                assert_eq!(in_use, 100);
                assert_eq!(limit, 150);
            }
            other => panic!("{other}"),
        }
        assert!(cache.image_path(&a).exists());
        assert!(!cache.image_path(&b).exists());
    }

    #[test]
    fn image_larger_than_the_cache_is_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(dir.path(), "n1", 50).unwrap();
        let (a, da) = image(1, 100);
        let err = cache.stage(&a, 1, src(&da)).unwrap_err().to_string();
        assert!(err.contains("node.cache_size"), "{err}");
    }
}
