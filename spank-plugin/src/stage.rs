//! Staging on each allocated node: the image a job is pinned to is copied
//! into the node cache, verified against the checksum recorded when it was
//! written; or used where it lies: `node.staging = "in-place"` (served by
//! Shoal's image server, every read checked against the image's hash tree,
//! `shoal::image::verity`; images without one are copied) or `"direct"`
//! (unchecked).
//!
//! Two callers: the job prolog stages ahead of the job (best effort: a
//! failing prolog would drain the node, and a missing image is the job's
//! fault, not the node's), and every task stages again before entering the
//! image, which costs nothing when the prolog succeeded and reports the
//! error in the job's output when it did not.
//!
//! Root never follows a path from a user's store as root: site images come
//! from the configured site store, looked up by digest; user images are read
//! through a descriptor opened with the user's ids (a FIFO or device
//! refused before a byte is read), in the prolog by a `cat` running as the
//! user (a read that hangs in the kernel hangs `cat`, which can be killed,
//! not the prolog). A copy whose source stalls fails after
//! `node.stall_timeout` (see `shoal::stage`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shoal::config::Staging;
use shoal::image::store::{StoreRoot, StoredImage};
use shoal::stage::{Expected, NodeCache, Source};
use shoal::Config;

use crate::pin::{Pin, Scope};

/// The image as this node will mount it.
pub struct Staged {
    pub squashfs: PathBuf,
    /// The site store's (root-owned: may be kernel-mounted) or the user's.
    pub scope: Scope,
    /// The image's run settings, when known (site image, or user store
    /// metadata read as the user).
    pub config: Option<shoal::container::RunConfig>,
    /// Served where it lies, checked against this tree as it is read
    /// (`node.staging = "in-place"`).
    pub verity: Option<shoal::image::verity::Pinned>,
}

/// Reads a whole file through `pread`, so every task of a step can copy
/// from the one descriptor `user_init` opened without sharing an offset.
pub struct ReadAt {
    file: File,
    offset: u64,
}

impl ReadAt {
    pub fn new(file: File) -> ReadAt {
        ReadAt { file, offset: 0 }
    }
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Looks a pinned image up in the site store, as root. Only the digest of
/// the pin is used: the rest of it came from the user.
pub fn site_image(config: &Config, pin: &Pin) -> Result<StoredImage, String> {
    let dir = config
        .store
        .site_dir
        .clone()
        .ok_or_else(|| format!("image {} was found in a site store at submission, but this node's Shoal config has no `store.site_dir`", pin.requested))?;
    StoreRoot::new(dir.clone(), Scope::Site)
        .image(&pin.digest)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "image {} ({}) is not in the site store {} on this node; ask the admins to pull it there, or pull it into your own store",
                pin.requested,
                pin.digest,
                dir.display()
            )
        })
}

fn node_cache(config: &Config, node: &str) -> Result<NodeCache, String> {
    NodeCache::open(&config.node.cache_dir, node, config.node.cache_size.0)
        .map(|c| c.with_stall_timeout(Duration::from_secs(config.node.stall_timeout)))
        .map_err(|e| e.to_string())
}

/// Root's own check of the site image policy before an image is staged:
/// the site's policy file only (never the user's environment), against the
/// pinned digest and the signatures the pin carries, which prove
/// themselves. Accepted decisions are cached in the node cache per
/// (policy, identity, digest), so the tasks of a large step check once.
pub fn admit(config: &Config, node: &str, pin: &Pin) -> Result<(), String> {
    use shoal::image::trust::{self, DecisionCache, Identity};
    let Some(policy) = trust::site_policy(config).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let identity = match pin.identity.as_deref().map(str::parse::<shoal::ImageSpec>) {
        Some(Ok(shoal::ImageSpec::Registry(r))) => Some(r),
        Some(_) => return Err(format!("image {}: the pin's identity is not a registry reference; resubmit", pin.requested)),
        None => None,
    };
    let id = identity.as_ref().map_or(Identity::Local, Identity::Registry);
    DecisionCache::new(config.node.cache_dir.join(node).join("trust"))
        .check(&policy, id, &pin.digest, pin.signatures.as_ref())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Stages a site image (any context running as root).
pub fn stage_site(config: &Config, node: &str, job: u32, pin: &Pin) -> Result<Staged, String> {
    admit(config, node, pin)?;
    let stored = site_image(config, pin)?;
    let run_config = Some(shoal::resolve::run_config(&stored.config));
    if config.node.staging == Staging::Direct {
        return Ok(Staged { squashfs: stored.squashfs, scope: Scope::Site, config: run_config, verity: None });
    }
    // The tree's root from the site store (root's), never from the pin.
    if let (Staging::InPlace, Some(verity)) = (config.node.staging, stored.verity()) {
        return Ok(Staged { squashfs: stored.squashfs, scope: Scope::Site, config: run_config, verity: Some(verity) });
    }
    let expected = Expected {
        digest: stored.digest.clone(),
        sha256: stored.squashfs_sha256.clone(),
        size: stored.size,
        scope: Scope::Site,
        // Site copies are made by root (the prolog) and serve every user.
        owner: (0, 0),
    };
    let source = stored.squashfs.clone();
    let (path, copied) = node_cache(config, node)?
        .stage(&expected, job, move || Ok(Box::new(File::open(&source)?) as Source))
        .map_err(|e| e.to_string())?;
    log_copy(copied, job, node, pin, &path);
    Ok(Staged { squashfs: path, scope: Scope::Site, config: run_config, verity: None })
}

/// Stages a user image from `source`, which reads the user's file with the
/// user's credentials.
pub fn stage_user(
    config: &Config,
    node: &str,
    job: u32,
    pin: &Pin,
    owner: (u32, u32),
    source: impl FnOnce() -> io::Result<Source>,
) -> Result<(PathBuf, Option<shoal::image::verity::Pinned>), String> {
    admit(config, node, pin)?;
    if config.node.staging == Staging::Direct {
        return Ok((pin.squashfs.clone(), None));
    }
    // The user's own file, served by the user's own server, checked
    // against the tree their store recorded.
    if let (Staging::InPlace, Some(verity)) = (config.node.staging, pin.user_verity()) {
        return Ok((pin.squashfs.clone(), Some(verity)));
    }
    let expected = Expected {
        digest: pin.digest.clone(),
        sha256: pin.sha256.clone(),
        size: pin.size,
        scope: Scope::User,
        owner,
    };
    let (path, copied) = node_cache(config, node)?.stage(&expected, job, source).map_err(|e| e.to_string())?;
    log_copy(copied, job, node, pin, &path);
    Ok((path, None))
}

/// One slurmd log line per copy into a node cache (how often an image is
/// really copied is what staging is about).
fn log_copy(copied: bool, job: u32, node: &str, pin: &Pin, path: &std::path::Path) {
    if copied {
        crate::spank::log_info(&format!(
            "{}: job {job}: staged {} ({}) into {node}'s cache: {} ({} bytes)",
            crate::TAG,
            pin.requested,
            pin.digest,
            path.display(),
            pin.size
        ));
    }
}

/// The job prolog: stage ahead of the job. Never fails the prolog (that
/// would drain the node); problems are logged and met again, with a
/// message in the job's output, when the tasks stage.
pub fn prolog(config: &Config, job: u32, uid: u32, gid: u32) -> Result<(), String> {
    let Ok(value) = std::env::var(format!("SPANK_{}", crate::pin::JOB_CONTROL_ENV)) else {
        return Ok(()); // not an image job
    };
    let pin = Pin::from_env(&value)?;
    let node = crate::job::node_name()?;
    if pin.index {
        // An image index: the tasks choose and stage (as the user, who may
        // own the index); the prolog refreshes what uniform jobs read.
        return crate::choose::refresh(config, &node).map(|_| ());
    }
    match pin.scope {
        Scope::Site => stage_site(config, &node, job, &pin).map(|_| ()),
        Scope::User => {
            let path = pin.squashfs.clone();
            let cat: CatSlot = Arc::default();
            let slot = cat.clone();
            let staged = stage_user(config, &node, job, &pin, (uid, gid), move || cat_as_user(&path, uid, gid, slot));
            // A copy given up (stalled) leaves its reader blocked: end it.
            if let Some(child) = cat.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                let _ = child.kill();
            }
            staged.map(|_| ())
        }
    }
}

/// The prolog's `cat`, shared with its reader so the prolog can end it.
type CatSlot = Arc<Mutex<Option<Child>>>;

/// Streams a user's file through `cat` running as the user. The file is
/// opened with the user's ids (the path is the user's, never resolved with
/// root's), refused unless it is a regular file (a FIFO's open would wait
/// for ever, a device's read never end), and given to `cat` as its stdin.
fn cat_as_user(path: &std::path::Path, uid: u32, gid: u32, slot: CatSlot) -> io::Result<Source> {
    // The pin's path was resolved at submission: a symlink there now is new.
    let file = shoal::container::open_image_as(path, shoal::image::file::Links::Refuse, uid, gid, &[])
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // std drops supplementary groups (setgroups(0)) when it changes the uid
    // as root, so the reader has exactly the user's uid and primary gid.
    let mut child = Command::new("/bin/cat")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear()
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    Ok(Box::new(ChildReader { out, child: slot }))
}

/// A child's stdout that reports the child's failure at the end of input.
struct ChildReader {
    out: ChildStdout,
    child: CatSlot,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 {
            if let Some(child) = self.child.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                let status = child.wait()?;
                if !status.success() {
                    return Err(io::Error::other(format!("reading the image as the user failed ({status})")));
                }
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if let Some(child) = self.child.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
