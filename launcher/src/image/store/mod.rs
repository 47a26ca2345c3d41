//! The image store: one squashfs file plus metadata per image, content
//! addressed by the image's manifest digest, with a tag index mapping
//! references to digests. What the launcher and the SPANK plugin read
//! ([`Store::resolve`]) and what `shoal pull`/`import` write.
//!
//! Two scopes: the site store (`store.site_dir`, kept by admins, read-only
//! to users) and the user store (`store.user_dir`, else
//! `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`). Lookups try the site
//! store first.
//!
//! Layout of one store root:
//!
//! ```text
//! ROOT/images/sha256/HEX/image.sqfs   the image (mode 0444), never changed once published
//! ROOT/images/sha256/HEX/meta.json    its metadata (ImageMeta)
//! ROOT/indexes/sha256/HEX             an image index, the registry's bytes as served
//! ROOT/tags/REGISTRY/REPOSITORY/:TAG          tag index entry (TagEntry, JSON)
//! ROOT/tags/REGISTRY/REPOSITORY/@sha256:HEX   entry of a digest reference
//! ROOT/locks/HEX.lock                 per-image lock (flock), held while pulling
//! ROOT/locks/tag-HEX.lock             per-reference lock for tag updates
//! ROOT/tmp/NAME/, ROOT/tmp/NAME.lock  one pull's work dir and its held lock
//! ```
//!
//! HEX is the manifest digest of a pulled image (the platform's manifest,
//! not the index), or the sha256 of the squashfs file for images imported
//! from a directory or squashfs file. Tag entries start with `:` or `@`,
//! which no repository path component can, so a tag never collides with a
//! nested repository.
//!
//! An image index is kept as the raw bytes the registry served (never
//! re-serialized: its digest must stay the one pinned, and fields such as
//! `platform.features` and `os.features` must survive), and every entry
//! converted from it is an image of its own, listed in the tag entry's
//! `variants`; which one a node runs is decided by [`crate::select`].
//!
//! Reading a user store is done with that user's credentials: code running
//! as root (slurmstepd) switches to the user (or forks a child as the user)
//! before calling [`Store::resolve`], because every path under a user store
//! is the user's to change.
//!
//! Rules it never breaks: an image directory appears whole or not at all
//! (built under `tmp/`, fsynced, renamed into place under the image's lock);
//! a tag entry is replaced by rename; it never follows a path out of its
//! root; it never writes into a store it was not asked to write.

mod lock;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub use self::lock::{unique_name, Lock, WorkDir};
pub use write::GcReport;
use super::manifest::ImageConfig;
use super::platform::Platform;
use crate::config::Config;
use crate::reference::{Digest, ImageRef, ImageSpec};

/// Which store an image is in: the one notion of a site image (written by
/// the admins, root-owned) against a user's image (anything the user could
/// have written). The pin carries it, and so do the node cache
/// ([`crate::stage::Expected`]) and the launcher ([`crate::container::RunImage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Site,
    User,
}

impl Scope {
    /// Whether the kernel's squashfs parser may see the image: only a site
    /// image, which no user can have written.
    pub fn kernel_mountable(self) -> bool {
        self == Scope::Site
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Site => "site",
            Scope::User => "user",
        })
    }
}

/// What `meta.json` holds: everything about an image except where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Manifest digest (registry images) or squashfs digest (imports).
    pub digest: Digest,
    /// sha256 of `image.sqfs`, for nodes that verify before mounting.
    pub squashfs_sha256: String,
    pub config: ImageConfig,
    /// Where it came from: `registry/repo:tag@digest`, or the imported path.
    pub source_ref: String,
    pub platform: Option<Platform>,
    /// Bytes of `image.sqfs`.
    pub size: u64,
    /// The image's own creation time (RFC 3339), from its config.
    pub created: Option<String>,
    /// When it entered this store, seconds since the epoch.
    pub stored_at: u64,
    /// Root of `image.verity`, the file's hash tree (`image::verity`):
    /// none for images stored before Shoal made trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_root: Option<String>,
}

/// An image found in a store, ready to mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredImage {
    #[serde(flatten)]
    pub meta: ImageMeta,
    pub squashfs: PathBuf,
    pub scope: Scope,
}

impl StoredImage {
    /// Its hash tree's file and root, when it has one: what a node needs
    /// to serve it where it lies, checked as it is read.
    pub fn verity(&self) -> Option<crate::image::verity::Pinned> {
        let root = self.meta.verity_root.clone()?;
        Some(crate::image::verity::Pinned { file: self.squashfs.with_file_name(crate::image::verity::FILE_NAME), root })
    }
}

impl std::ops::Deref for StoredImage {
    type Target = ImageMeta;
    fn deref(&self) -> &ImageMeta {
        &self.meta
    }
}

/// One tag index entry: what a reference resolved to, per platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    /// The reference as pulled (`registry/repo:tag` or `registry/repo@digest`).
    pub reference: String,
    /// What the registry served for the reference: an index or a manifest.
    pub digest: Option<Digest>,
    /// Image (manifest) digest per requested platform (`linux/amd64`).
    pub images: BTreeMap<String, Digest>,
    /// When `digest` is an image index kept in this store: every entry
    /// converted from it, keyed `#POSITION OS/ARCH[/VARIANT]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Digest>,
}

impl TagEntry {
    /// Every image the entry names (per platform and index variants).
    pub fn all_images(&self) -> impl Iterator<Item = &Digest> {
        self.images.values().chain(self.variants.values())
    }
}

/// An image index kept in a store, with the images converted from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIndex {
    pub digest: Digest,
    /// The registry's bytes, checked against `digest`.
    pub bytes: Vec<u8>,
    pub path: PathBuf,
    pub scope: Scope,
    /// The tag entry's `variants` (empty for an index found by digest only).
    pub variants: BTreeMap<String, Digest>,
    pub reference: String,
}

/// Why a store operation failed; messages name the image and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{reference}: not in the {where_} image store; pull it first with `shoal pull {reference}`"
    )]
    NotFound { reference: String, where_: String },
    #[error("{reference}: pulled for {have}, not for {want}; pull it with `shoal pull --platform {want} {reference}`")]
    OtherPlatform {
        reference: String,
        want: Platform,
        have: String,
    },
    #[error("{path}: damaged image in the store ({detail}); remove it with `shoal rm {reference}` and pull again")]
    Damaged {
        path: PathBuf,
        reference: String,
        detail: String,
    },
    #[error("{0} is a file, not an image in a store; use the file directly")]
    IsAFile(PathBuf),
    #[error("no space left on the device holding {path}; free space there, or set `store.user_dir` in the Shoal config to a larger filesystem")]
    DiskFull { path: PathBuf },
    // `error`, not `source`: the message already carries it, and the CLI
    // prints the cause chain, which would repeat it.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "no user image store: set HOME or XDG_DATA_HOME, or `store.user_dir` in the Shoal config"
    )]
    NoUserStore,
    #[error("no site image store configured: set `store.site_dir` in the Shoal config")]
    NoSiteStore,
}

/// Wraps an io::Error with its path, recognising a full disk.
pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            StoreError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                error: source,
            }
        }
    }
}

/// One store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRoot {
    dir: PathBuf,
    scope: Scope,
}

/// Both scopes: what the rest of Shoal opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub site: Option<StoreRoot>,
    pub user: Option<StoreRoot>,
}

/// The user store's default directory, from the environment given.
pub fn default_user_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = env("XDG_DATA_HOME").filter(|d| d.starts_with('/')) {
        return Some(Path::new(&d).join("shoal"));
    }
    env("HOME")
        .filter(|h| h.starts_with('/'))
        .map(|h| Path::new(&h).join(".local/share/shoal"))
}

impl Store {
    /// The stores the config names, the user store's default taken from
    /// this process's environment. Opening touches no file.
    pub fn open(config: &Config) -> Store {
        Store::open_with_env(config, &|k| std::env::var(k).ok())
    }

    /// Like [`Store::open`] with the user store's default taken from `env`
    /// (`HOME`, `XDG_DATA_HOME`): for code acting for a job's user, such
    /// as the SPANK plugin with the job's environment.
    pub fn open_with_env(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Store {
        Store::with_dirs(
            config.store.site_dir.clone(),
            config
                .store
                .user_dir
                .clone()
                .or_else(|| default_user_dir(env)),
        )
    }

    pub fn with_dirs(site: Option<PathBuf>, user: Option<PathBuf>) -> Store {
        Store {
            site: site.map(|dir| StoreRoot {
                dir,
                scope: Scope::Site,
            }),
            user: user.map(|dir| StoreRoot {
                dir,
                scope: Scope::User,
            }),
        }
    }

    /// The root for `scope`, or an error that says how to configure it.
    ///
    /// A user store that does not exist yet is made private (0700): its
    /// images may come from registries only this user can log in to, and
    /// its tags tell what they run, so other users of a login node must not
    /// read it (home directories are often world-readable). An existing
    /// one that others may enter (made 0755 before issue 18's F7, or by a
    /// umask) is tightened to 0700 when its owner opens it, with a note on
    /// stderr; group bits alone are left (a user sharing with a project
    /// group chose them: Shoal never makes a store so).
    pub fn root(&self, scope: Scope) -> Result<&StoreRoot, StoreError> {
        match scope {
            Scope::Site => self.site.as_ref().ok_or(StoreError::NoSiteStore),
            Scope::User => {
                let root = self.user.as_ref().ok_or(StoreError::NoUserStore)?;
                if !root.dir.exists() {
                    use std::os::unix::fs::DirBuilderExt;
                    // Best effort: a read-only home fails later, where a
                    // write is tried, with its own message.
                    let _ = fs::DirBuilder::new().recursive(true).mode(0o700).create(&root.dir);
                } else {
                    tighten_legacy_store(&root.dir);
                }
                Ok(root)
            }
        }
    }

    /// Site store first, then the user store.
    pub fn roots(&self) -> impl Iterator<Item = &StoreRoot> {
        self.site.iter().chain(self.user.iter())
    }

    /// Finds the image `spec` names for this machine's platform.
    pub fn resolve(&self, spec: &ImageSpec) -> Result<StoredImage, StoreError> {
        self.resolve_for(spec, &Platform::host())
    }

    /// Finds the image `spec` names for `platform`, site store first. Reads
    /// only; never touches the network.
    pub fn resolve_for(
        &self,
        spec: &ImageSpec,
        platform: &Platform,
    ) -> Result<StoredImage, StoreError> {
        let mut other_platform = None;
        for root in self.roots() {
            match root.resolve(spec, platform) {
                Ok(Some(img)) => return Ok(img),
                Ok(None) => {}
                Err(e @ StoreError::OtherPlatform { .. }) => other_platform = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = other_platform {
            return Err(e);
        }
        if let ImageSpec::File(p) = spec {
            return Err(StoreError::IsAFile(p.clone()));
        }
        let where_ = match (&self.site, &self.user) {
            (Some(s), Some(u)) => {
                format!("site ({}) or user ({})", s.dir.display(), u.dir.display())
            }
            (Some(s), None) => format!("site ({})", s.dir.display()),
            (None, Some(u)) => format!("user ({})", u.dir.display()),
            (None, None) => "(none configured)".into(),
        };
        Err(StoreError::NotFound {
            reference: spec.to_string(),
            where_,
        })
    }

    /// The image index `spec` names, if it names one kept in a store (site
    /// first): a reference pulled as an index, or `id:`/`@` its digest.
    pub fn find_index(&self, spec: &ImageSpec) -> Result<Option<(StoredIndex, &StoreRoot)>, StoreError> {
        for root in self.roots() {
            if let Some(i) = root.find_index(spec)? {
                return Ok(Some((i, root)));
            }
        }
        Ok(None)
    }

    /// Every tag entry and image of both stores, for `shoal images`.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        for root in self.roots() {
            out.extend(root.list()?);
        }
        Ok(out)
    }
}

/// A row of `shoal images`: a reference (None for an image no tag names)
/// and the image.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub reference: Option<String>,
    pub platform_key: Option<String>,
    #[serde(flatten)]
    pub image: StoredImage,
}

impl StoreRoot {
    pub fn new(dir: PathBuf, scope: Scope) -> StoreRoot {
        StoreRoot { dir, scope }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// `indexes/sha256/HEX`.
    pub fn index_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("indexes/sha256").join(digest.hex())
    }

    /// Keeps `bytes`, an image index, under its sha256 (atomically; the
    /// same bytes again change nothing).
    pub fn put_index(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest: Digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes)).parse().expect("sha256 digest");
        let path = self.index_path(&digest);
        if path.exists() {
            return Ok(digest);
        }
        let parent = path.parent().expect("index path has a parent");
        ensure_dir(parent)?;
        let tmp = parent.join(format!(".{}.new", unique_name()));
        write_synced(&tmp, bytes)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(parent)?;
        Ok(digest)
    }

    /// The bytes of index `digest`, checked, if kept here.
    pub fn index_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.index_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if format!("{:x}", sha2::Sha256::digest(&bytes)) != digest.hex() {
            return Err(StoreError::Damaged {
                path,
                reference: format!("id:{digest}"),
                detail: "the index's bytes do not match its digest".into(),
            });
        }
        Ok(Some(bytes))
    }

    fn find_index(&self, spec: &ImageSpec) -> Result<Option<StoredIndex>, StoreError> {
        let (digest, variants, reference) = match spec {
            ImageSpec::File(_) => return Ok(None),
            ImageSpec::Id(d) => (d.clone(), BTreeMap::new(), format!("id:{d}")),
            ImageSpec::Registry(r) => match self.tag_entry(r)? {
                Some(TagEntry { digest: Some(d), variants, reference, .. }) if !variants.is_empty() => {
                    (d, variants, reference)
                }
                Some(_) => return Ok(None),
                None => match r.digest() {
                    Some(d) => (d.clone(), BTreeMap::new(), r.to_string()),
                    None => return Ok(None),
                },
            },
        };
        Ok(self.index_bytes(&digest)?.map(|bytes| StoredIndex {
            path: self.index_path(&digest),
            digest,
            bytes,
            scope: self.scope,
            variants,
            reference,
        }))
    }

    fn image_dir(&self, digest: &Digest) -> PathBuf {
        self.dir.join("images/sha256").join(digest.hex())
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn tags_dir(&self) -> PathBuf {
        self.dir.join("tags")
    }

    /// `tags/REGISTRY/REPO/:TAG` or `.../@sha256:HEX`. Both parts were
    /// validated by the reference grammar (no `..`, no empty components).
    pub fn tag_path(&self, r: &ImageRef) -> PathBuf {
        let leaf = match (r.digest(), r.tag()) {
            (Some(d), _) => format!("@{d}"),
            (None, Some(t)) => format!(":{t}"),
            (None, None) => ":latest".to_string(),
        };
        self.tags_dir()
            .join(r.registry())
            .join(r.repository())
            .join(leaf)
    }

    /// The tag index entry for `r`, if any.
    pub fn tag_entry(&self, r: &ImageRef) -> Result<Option<TagEntry>, StoreError> {
        let path = self.tag_path(r);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Damaged {
                        path,
                        reference: r.to_string(),
                        detail: e.to_string(),
                    })
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The image with manifest digest `digest`, if published here.
    pub fn image(&self, digest: &Digest) -> Result<Option<StoredImage>, StoreError> {
        let dir = self.image_dir(digest);
        let meta_path = dir.join("meta.json");
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&meta_path)(e)),
        };
        let damaged = |detail: String| StoreError::Damaged {
            path: dir.clone(),
            reference: format!("id:{digest}"),
            detail,
        };
        let meta: ImageMeta = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        let squashfs = dir.join("image.sqfs");
        let size = fs::metadata(&squashfs)
            .map_err(|e| damaged(format!("image.sqfs: {e}")))?
            .len();
        if size != meta.size || &meta.digest != digest {
            return Err(damaged(format!(
                "image.sqfs is {size} bytes, meta.json says {}",
                meta.size
            )));
        }
        Ok(Some(StoredImage {
            meta,
            squashfs,
            scope: self.scope,
        }))
    }

    fn resolve(
        &self,
        spec: &ImageSpec,
        platform: &Platform,
    ) -> Result<Option<StoredImage>, StoreError> {
        match spec {
            ImageSpec::Id(d) => self.image(d),
            ImageSpec::File(_) => Ok(None),
            ImageSpec::Registry(r) => {
                let Some(entry) = self.tag_entry(r)? else {
                    // A digest reference may name an image pulled by tag.
                    return match r.digest() {
                        Some(d) => self.image(d),
                        None => Ok(None),
                    };
                };
                let key = platform.to_string();
                match entry.images.get(&key) {
                    Some(d) => self.image(d),
                    None if entry.images.is_empty() => Ok(None),
                    None => Err(StoreError::OtherPlatform {
                        reference: r.to_string(),
                        want: platform.clone(),
                        have: entry.images.keys().cloned().collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }
    }

    /// Every tag entry's images, then images no tag names.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut named = BTreeSet::new();
        for (path, entry) in self.tag_entries()? {
            for (platform, digest) in entry.images.iter().chain(entry.variants.iter()) {
                named.insert(digest.clone());
                if let Some(image) = self.image(digest)? {
                    out.push(Listed {
                        reference: Some(entry.reference.clone()),
                        platform_key: Some(platform.clone()),
                        image,
                    });
                } else {
                    let _ = &path; // an entry whose image is gone: skipped, gc drops it
                }
            }
        }
        for d in self.image_digests()? {
            if !named.contains(&d) {
                if let Some(image) = self.image(&d)? {
                    out.push(Listed {
                        reference: None,
                        platform_key: None,
                        image,
                    });
                }
            }
        }
        Ok(out)
    }

    /// All tag entries with their files.
    pub fn tag_entries(&self) -> Result<Vec<(PathBuf, TagEntry)>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![self.tags_dir()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let ty = e.file_type().map_err(io_err(&e.path()))?;
                if ty.is_dir() {
                    stack.push(e.path());
                } else if ty.is_file() && (name.starts_with(':') || name.starts_with('@')) {
                    if let Ok(bytes) = fs::read(e.path()) {
                        if let Ok(entry) = serde_json::from_slice::<TagEntry>(&bytes) {
                            out.push((e.path(), entry));
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.reference.cmp(&b.1.reference));
        Ok(out)
    }

    /// Digests of every published image.
    pub fn image_digests(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.dir.join("images/sha256");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out: Vec<Digest> = entries
            .flatten()
            .filter_map(|e| {
                format!("sha256:{}", e.file_name().to_string_lossy())
                    .parse()
                    .ok()
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_err(dir))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = sha2::Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests;

/// A user store others may enter becomes 0700 when its owner opens it (see
/// [`Store::root`]). Only a directory this process's user owns (through a
/// symlink too: its target's owner is checked); another user's store is
/// left alone.
fn tighten_legacy_store(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(md) = fs::metadata(dir) else { return };
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() || md.mode() & 0o007 == 0 {
        return;
    }
    if fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).is_ok() {
        eprintln!(
            "shoal: made your image store {} private (mode {:o} -> 700): other users could read its images and tags",
            dir.display(),
            md.mode() & 0o7777
        );
    }
}
