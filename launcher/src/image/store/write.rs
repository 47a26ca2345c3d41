//! What changes a store root: image and tag locks, publishing an image,
//! setting and removing tags, removing images and garbage collection. The
//! read side (lookups, listing) is in the parent module.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;
use sha2::Digest as _;

use super::{
    ensure_dir, io_err, sync_dir, unique_name, write_synced, ImageMeta, Lock, StoreError,
    StoreRoot, StoredImage, TagEntry, WorkDir,
};
use crate::image::platform::Platform;
use crate::reference::{Digest, ImageRef, ImageSpec};

impl StoreRoot {
    /// Takes the per-image lock (waits while another process holds it).
    pub fn lock_image(&self, digest: &Digest) -> Result<Lock, StoreError> {
        let path = self
            .dir
            .join("locks")
            .join(format!("{}.lock", digest.hex()));
        ensure_dir(&self.dir.join("locks"))?;
        Lock::acquire(&path).map_err(io_err(&path))
    }

    fn lock_tag(&self, r: &ImageRef) -> Result<Lock, StoreError> {
        let key = format!(
            "{:x}",
            sha2::Sha256::digest(self.tag_path(r).to_string_lossy().as_bytes())
        );
        let path = self.dir.join("locks").join(format!("tag-{key}.lock"));
        ensure_dir(&self.dir.join("locks"))?;
        Lock::acquire(&path).map_err(io_err(&path))
    }

    /// A fresh locked work directory under `tmp/`.
    pub fn work_dir(&self) -> Result<WorkDir, StoreError> {
        let tmp = self.tmp_dir();
        ensure_dir(&self.dir)?;
        WorkDir::create(&tmp).map_err(io_err(&tmp))
    }

    /// Publishes `squashfs` (inside `work`) with its hash tree `tree`
    /// (`meta.verity_root` is its root) and `meta` as image `meta.digest`.
    /// The caller holds the image's lock. When the image is already there
    /// (another process won), the existing one is returned.
    pub fn publish(
        &self,
        work: &WorkDir,
        squashfs: &Path,
        tree: &crate::image::verity::Tree,
        meta: &ImageMeta,
        _lock: &Lock,
    ) -> Result<StoredImage, StoreError> {
        debug_assert_eq!(meta.verity_root.as_deref(), Some(tree.root().as_str()));
        if let Some(existing) = self.image(&meta.digest)? {
            return Ok(existing);
        }
        // "Stage" means a node cache's copy (crate::stage); this is the
        // image directory made whole before its rename into place.
        let ready = work.path().join("publish");
        fs::create_dir(&ready).map_err(io_err(&ready))?;
        let sqfs = ready.join("image.sqfs");
        fs::rename(squashfs, &sqfs).map_err(io_err(&sqfs))?;
        let f = File::open(&sqfs).map_err(io_err(&sqfs))?;
        f.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(&sqfs))?;
        f.sync_all().map_err(io_err(&sqfs))?;
        let tree_path = ready.join(crate::image::verity::FILE_NAME);
        write_synced(&tree_path, &tree.encode())?;
        let meta_path = ready.join("meta.json");
        write_synced(
            &meta_path,
            &serde_json::to_vec_pretty(meta).expect("meta serializes"),
        )?;
        sync_dir(&ready)?;
        let parent = self.dir.join("images/sha256");
        ensure_dir(&parent)?;
        let dest = self.image_dir(&meta.digest);
        match fs::rename(&ready, &dest) {
            Ok(()) => {}
            // Published by a process that did not hold our lock (cannot
            // happen through Shoal; tolerated anyway).
            Err(e) if dest.join("meta.json").exists() => drop(e),
            Err(e) => return Err(io_err(&dest)(e)),
        }
        sync_dir(&parent)?;
        self.image(&meta.digest)?
            .ok_or_else(|| StoreError::Damaged {
                path: dest,
                reference: meta.source_ref.clone(),
                detail: "vanished right after publishing".into(),
            })
    }

    /// Points `r` (for `platform`) at `image`; `top` is what the registry
    /// served for `r` (an index or the manifest itself). Replaces the entry
    /// by rename, under a per-reference lock.
    pub fn set_tag(
        &self,
        r: &ImageRef,
        top: Option<&Digest>,
        platform: &Platform,
        image: &Digest,
    ) -> Result<(), StoreError> {
        let _lock = self.lock_tag(r)?;
        let mut entry = self.tag_entry(r).ok().flatten().unwrap_or_default();
        if entry.digest.as_ref() != top {
            // The reference moved: other platforms' images are stale for it.
            entry.images.clear();
            entry.variants.clear();
        }
        entry.reference = r.to_string();
        entry.digest = top.cloned();
        entry.images.insert(platform.to_string(), image.clone());
        self.write_tag(r, &entry)
    }

    /// Points `r` at the image index `index` whose converted entries are
    /// `variants`, and (per platform) at the image an index-unaware lookup
    /// for that platform takes, under the per-reference lock.
    pub fn set_index_tag(
        &self,
        r: &ImageRef,
        index: &Digest,
        variants: BTreeMap<String, Digest>,
        per_platform: BTreeMap<String, Digest>,
    ) -> Result<(), StoreError> {
        let _lock = self.lock_tag(r)?;
        let mut entry = self.tag_entry(r).ok().flatten().unwrap_or_default();
        if entry.digest.as_ref() != Some(index) {
            entry.images.clear();
            entry.variants.clear();
        }
        entry.reference = r.to_string();
        entry.digest = Some(index.clone());
        entry.images.extend(per_platform);
        entry.variants.extend(variants);
        self.write_tag(r, &entry)
    }

    fn write_tag(&self, r: &ImageRef, entry: &TagEntry) -> Result<(), StoreError> {
        let path = self.tag_path(r);
        let parent = path.parent().expect("tag path has a parent");
        ensure_dir(parent)?;
        let tmp = parent.join(format!(".{}.new", unique_name()));
        write_synced(
            &tmp,
            &serde_json::to_vec_pretty(&entry).expect("entry serializes"),
        )?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(parent)
    }

    /// Removes the tag entry `r`. Returns the image digests it named.
    pub fn remove_tag(&self, r: &ImageRef) -> Result<Vec<Digest>, StoreError> {
        let _lock = self.lock_tag(r)?;
        let Some(entry) = self.tag_entry(r)? else {
            return Ok(Vec::new());
        };
        let path = self.tag_path(r);
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(entry.all_images().cloned().collect())
    }

    /// Removes image `digest` if no tag entry names it and nobody holds its
    /// lock (a pull in progress). Returns whether it was removed.
    pub fn remove_if_unreferenced(&self, digest: &Digest) -> Result<bool, StoreError> {
        let lock_path = self
            .dir
            .join("locks")
            .join(format!("{}.lock", digest.hex()));
        let _lock = match Lock::try_acquire(&lock_path) {
            Ok(Some(l)) => Some(l),
            Ok(None) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&lock_path)(e)),
        };
        if self
            .tag_entries()?
            .iter()
            .any(|(_, e)| e.all_images().any(|d| d == digest))
        {
            return Ok(false);
        }
        self.remove_image(digest)?;
        Ok(true)
    }

    /// Takes the image directory out of sight by rename, then deletes it.
    fn remove_image(&self, digest: &Digest) -> Result<(), StoreError> {
        let dir = self.image_dir(digest);
        if !dir.exists() {
            return Ok(());
        }
        ensure_dir(&self.tmp_dir())?;
        let trash = self.tmp_dir().join(format!("{}.rm", unique_name()));
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    /// Removes unreferenced images, tag entries whose image is gone, and
    /// work dirs whose lock nobody holds (left by killed pulls).
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        for (path, entry) in self.tag_entries()? {
            if entry
                .all_images()
                .all(|d| !self.image_dir(d).join("meta.json").exists())
            {
                let r: Result<ImageSpec, _> = entry.reference.parse();
                if let Ok(ImageSpec::Registry(r)) = r {
                    let _lock = self.lock_tag(&r)?;
                    // Re-check under the lock: a pull may have just set it.
                    if let Some(e) = self.tag_entry(&r)? {
                        if e.all_images()
                            .all(|d| !self.image_dir(d).join("meta.json").exists())
                        {
                            let _ = fs::remove_file(&path);
                            report.tags_removed += 1;
                        }
                    }
                }
            }
        }
        for d in self.image_digests()? {
            let size = self.image(&d).ok().flatten().map(|i| i.size).unwrap_or(0);
            if self.remove_if_unreferenced(&d)? {
                report.images_removed += 1;
                report.bytes_freed += size;
            }
        }
        // Indexes no tag entry names any more.
        let named: BTreeSet<Digest> = self
            .tag_entries()?
            .into_iter()
            .filter_map(|(_, e)| e.digest)
            .collect();
        if let Ok(entries) = fs::read_dir(self.dir.join("indexes/sha256")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                    continue;
                };
                if !named.contains(&d) && fs::remove_file(e.path()).is_ok() {
                    report.indexes_removed += 1;
                }
            }
        }
        let tmp = self.tmp_dir();
        if let Ok(entries) = fs::read_dir(&tmp) {
            let now = std::time::SystemTime::now();
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                if let Some(work) = name.strip_suffix(".lock") {
                    // A work dir's lock: free means its owner died.
                    if let Ok(Some(_held)) = Lock::try_acquire(&path) {
                        let _ = fs::remove_dir_all(tmp.join(work));
                        let _ = fs::remove_file(&path);
                        report.temps_removed += 1;
                    }
                } else if name.ends_with(".rm") {
                    let _ = fs::remove_dir_all(&path);
                    report.temps_removed += 1;
                } else if name.ends_with(".lock.new") {
                    // Between create and rename for a moment only.
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| now.duration_since(m).ok());
                    if old.is_some_and(|a| a.as_secs() > 60) {
                        let _ = fs::remove_file(&path);
                        report.temps_removed += 1;
                    }
                } else if e.file_type().is_ok_and(|t| t.is_dir())
                    && !tmp.join(format!("{name}.lock")).exists()
                    // Not already removed above through its lock file.
                    && fs::remove_dir_all(&path).is_ok()
                {
                    report.temps_removed += 1;
                }
            }
        }
        // Image and tag lock files a killed pull left (a flock dies with
        // its holder, its file stays). Each is removed only while held
        // here, and `Lock::acquire` retries when its file was removed
        // under it, so a live holder or waiter is never raced.
        if let Ok(entries) = fs::read_dir(self.dir.join("locks")) {
            for e in entries.flatten() {
                let path = e.path();
                if !e.file_name().to_string_lossy().ends_with(".lock") {
                    continue;
                }
                if let Ok(Some(held)) = Lock::try_acquire(&path) {
                    if fs::remove_file(&path).is_ok() {
                        report.locks_removed += 1;
                    }
                    drop(held);
                }
            }
        }
        Ok(report)
    }
}

/// What `gc` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub images_removed: usize,
    pub bytes_freed: u64,
    pub tags_removed: usize,
    pub temps_removed: usize,
    pub indexes_removed: usize,
    /// Lock files nobody held.
    pub locks_removed: usize,
}
