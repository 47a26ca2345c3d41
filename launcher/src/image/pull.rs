//! `shoal pull`: registry -> verified layer blobs -> one squashfs -> the
//! store, as one call. The plan is simple enough to read top to bottom:
//!
//! 1. If the store already has the reference for this platform, one manifest
//!    request (HEAD) tells whether it moved; unchanged means done. A digest
//!    reference already in the store needs no request at all.
//! 2. Fetch the manifest. An image index is kept as the registry's bytes,
//!    and every entry a node of this site could choose (its os/architecture
//!    is one of `image.platforms`, or `--platform`) is pulled as an image of
//!    its own: which one runs is decided per node ([`crate::select`]).
//!    The site image policy ([`super::trust`]) decides on every image
//!    (each entry of an index), with its signatures fetched when the policy
//!    wants them: a refused image stops the pull here, before any layer is
//!    fetched. The signatures are kept in the store next to the image, for
//!    offline nodes.
//! 3. Take the image's lock (a second puller, on this node or another over a
//!    shared filesystem, waits here and then finds the image published).
//! 4. Download the config and the layers in parallel into a work dir, each
//!    blob hashed while it streams.
//! 5. Convert the layers into one squashfs ([`super::convert`]).
//! 6. Publish by rename and point the tag at it, still under the lock.
//!
//! It never leaves a visible partial image: everything before step 6 lives
//! in a uniquely named work dir that is removed on any error (and by `gc` if
//! the process is killed).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use super::convert::arrival::Arrival;
use super::convert::{self, ConvertError, Layer, LayerCompression, SquashOptions};
use super::manifest::{self, ConfigBlob, Document, ImageManifest, ManifestError};
use super::platform::Platform;
use super::registry::{ClientOptions, Registry, RegistryError};
use super::store::{ImageMeta, Scope, Store, StoreError, StoreRoot, StoredImage};
use super::trust::{self, Identity, Policy, PolicyError, Refusal};
use crate::config::{Config, RegistryConfig};
use crate::reference::{Digest, ImageRef};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Which platform's image to take from an index. Default: this machine's.
    pub platform: Platform,
    /// The platforms of the site's nodes: from an index, every entry of one
    /// of them is pulled. Empty: `platform` only.
    pub platforms: Vec<Platform>,
    /// Which store to write (`Site` needs write access to `store.site_dir`).
    pub scope: Scope,
    pub client: ClientOptions,
    pub squash: SquashOptions,
    /// Layers downloaded at once.
    pub parallel_downloads: usize,
}

impl PullOptions {
    pub fn new() -> PullOptions {
        PullOptions {
            platform: Platform::host(),
            platforms: Vec::new(),
            scope: Scope::User,
            client: ClientOptions::from_env(),
            squash: SquashOptions::default(),
            parallel_downloads: 4,
        }
    }
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions::new()
    }
}

/// What a pull reports as it goes, for a progress display.
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The manifest is known: this many layers and compressed bytes to fetch.
    Resolved {
        image: Digest,
        layers: usize,
        bytes: u64,
    },
    /// Another process is pulling the same image; waiting for it.
    Waiting,
    /// Compressed bytes downloaded so far, of `total`.
    Downloading { done: u64, total: u64 },
    /// Conversion progress.
    Converting(convert::Progress),
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image (for an index: the one `platform` would take from it, as
    /// an index-unaware runtime would; else its first pulled entry).
    pub image: StoredImage,
    /// False when the store already had it (no layer was downloaded).
    pub downloaded: bool,
    /// For an image index: its digest and every pulled entry (tag entry
    /// key `#POSITION OS/ARCH[/VARIANT]`, image).
    pub index: Option<(Digest, Vec<(String, StoredImage)>)>,
}

/// Why a pull failed; one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Policy(#[from] Refusal),
    #[error(transparent)]
    PolicyFile(#[from] PolicyError),
    #[error("{reference}: malformed manifest: {problem}; the registry served something Shoal cannot read, check that the image was pushed completely")]
    Manifest {
        reference: String,
        problem: ManifestError,
    },
    #[error("{reference}: no image for platform {want} (it has: {}); choose one with --platform", list(.available))]
    NoPlatform {
        reference: String,
        want: Platform,
        available: Vec<Platform>,
    },
}

fn list(p: &[Platform]) -> String {
    if p.is_empty() {
        return "none with a platform".into();
    }
    p.iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl PullError {
    /// A full disk, wherever it was noticed, reads the same.
    fn normalize(self) -> PullError {
        match self {
            PullError::Registry(RegistryError::Write { path, error })
                if error.raw_os_error() == Some(libc::ENOSPC)
                    || error.raw_os_error() == Some(libc::EDQUOT) =>
            {
                PullError::Store(StoreError::DiskFull { path })
            }
            PullError::Convert(ConvertError::Io { path, source })
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                PullError::Store(StoreError::DiskFull { path })
            }
            e => e,
        }
    }
}

/// Pulls `r` into `store` (the scope `opts.scope` names).
pub fn pull(
    config: &Config,
    store: &Store,
    r: &ImageRef,
    opts: &PullOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<PullOutcome, PullError> {
    pull_inner(config, store, r, opts, progress).map_err(PullError::normalize)
}

fn pull_inner(
    config: &Config,
    store: &Store,
    r: &ImageRef,
    opts: &PullOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<PullOutcome, PullError> {
    let root = store.root(opts.scope)?;
    let policy = trust::site_policy(config)?;
    // A scope that rejects needs no request to say so.
    if let Some(p) = &policy {
        if trust::requirements(p, Identity::Registry(r)).1.contains(&trust::Requirement::Reject) {
            trust::check(p, Identity::Registry(r), r.digest().unwrap_or(&empty_digest()), None)?;
        }
    }
    let platform = &opts.platform;
    let reference = r.to_string();
    let known = root.tag_entry(r)?;
    let known_image = match known
        .as_ref()
        .and_then(|e| e.images.get(&platform.to_string()))
    {
        Some(d) => root.image(d)?,
        None => None,
    };

    // A digest reference names fixed content: no request needed, also when
    // the digest is that of an image already here under another name.
    // With a policy, a stored image counts only when its stored signatures
    // still satisfy it; otherwise the registry is asked again below.
    let digest_stored_ok = r.digest().is_some_and(|d| {
        stored_ok(policy.as_ref(), root, r, known_image.as_ref().map_or(d, |i| &i.digest))
    });
    if let Some(d) = r.digest().filter(|_| digest_stored_ok) {
        if let Some(image) = known_image {
            return Ok(PullOutcome {
                image,
                downloaded: false,
                index: None,
            });
        }
        if let Some(image) = root.image(d)? {
            let _lock = root.lock_image(d)?;
            root.set_tag(r, Some(d), platform, d)?;
            return Ok(PullOutcome {
                image,
                downloaded: false,
                index: None,
            });
        }
    }
    let registry_cfg = config
        .registries
        .get(r.registry())
        .cloned()
        .unwrap_or_else(RegistryConfig::default);
    let registry = Registry::new(r.registry(), &registry_cfg, &opts.client)?;
    let wanted = match r.digest() {
        Some(d) => d.to_string(),
        None => r.tag().unwrap_or("latest").to_string(),
    };
    if let (Some(image), Some(entry)) = (known_image, &known) {
        if entry.digest.is_some()
            && stored_ok(policy.as_ref(), root, r, &image.digest)
            && registry.head_manifest(r.repository(), &wanted)? == entry.digest
        {
            return Ok(PullOutcome {
                image,
                downloaded: false,
                index: None,
            });
        }
    }

    // An index already here under the same digest, pulled for every wanted
    // platform: nothing moved.
    let wants: Vec<Platform> =
        if opts.platforms.is_empty() { vec![opts.platform.clone()] } else { opts.platforms.clone() };
    let covers = |e: &super::store::TagEntry| wants.iter().all(|w| e.images.contains_key(&w.to_string()));
    if let Some(entry) = known.as_ref().filter(|e| !e.variants.is_empty() && covers(e)) {
        if let Some(idx) = entry.digest.as_ref() {
            let current = match r.digest() {
                Some(d) => Some(d.clone()),
                None => registry.head_manifest(r.repository(), &wanted)?,
            };
            let still_allowed = entry.variants.values().all(|d| stored_ok(policy.as_ref(), root, r, d));
            if current.as_ref() == Some(idx) && still_allowed {
                if let Some(outcome) = stored_index_outcome(root, entry, platform)? {
                    return Ok(outcome);
                }
            }
        }
    }

    let top = registry.manifest(r.repository(), &wanted)?;
    let malformed = |problem| PullError::Manifest {
        reference: reference.clone(),
        problem,
    };
    match Document::parse(&top.body, top.content_type.as_deref()).map_err(malformed)? {
        Document::Image(m) => {
            if let Some(policy) = &policy {
                admit(policy, &registry, root, r, &top, &top.digest)?;
            }
            let (image, downloaded) = fetch_image(root, &registry, r, &top.digest, m, opts, progress)?;
            root.set_tag(r, Some(&top.digest), platform, &image.digest)?;
            Ok(PullOutcome { image, downloaded, index: None })
        }
        Document::Index(descriptors) => {
            pull_index(root, &registry, policy.as_ref(), r, &top, &descriptors, opts, progress)
        }
    }
}

/// The outcome of an index pull the store already holds whole.
fn stored_index_outcome(
    root: &StoreRoot,
    entry: &super::store::TagEntry,
    platform: &Platform,
) -> Result<Option<PullOutcome>, PullError> {
    let Some(idx) = entry.digest.clone() else { return Ok(None) };
    if root.index_bytes(&idx)?.is_none() {
        return Ok(None);
    }
    let mut variants = Vec::new();
    for (key, d) in &entry.variants {
        match root.image(d)? {
            Some(img) => variants.push((key.clone(), img)),
            None => return Ok(None),
        }
    }
    let image = match entry.images.get(&platform.to_string()) {
        Some(d) => root.image(d)?,
        None => None,
    }
    .or_else(|| variants.first().map(|(_, i)| i.clone()));
    Ok(image.map(|image| PullOutcome { image, downloaded: false, index: Some((idx, variants)) }))
}

/// An image index: keeps its bytes, pulls every entry one of the wanted
/// platforms could run, and tags them all.
#[allow(clippy::too_many_arguments)]
fn pull_index(
    root: &StoreRoot,
    registry: &Registry,
    policy: Option<&Policy>,
    r: &ImageRef,
    top: &super::registry::FetchedManifest,
    descriptors: &[manifest::Descriptor],
    opts: &PullOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<PullOutcome, PullError> {
    let reference = r.to_string();
    let malformed = |problem| PullError::Manifest {
        reference: reference.clone(),
        problem,
    };
    let wants: Vec<Platform> =
        if opts.platforms.is_empty() { vec![opts.platform.clone()] } else { opts.platforms.clone() };
    let entries = crate::select::index::entries(&top.body)
        .map_err(|e| malformed(ManifestError(e.to_string())))?;
    // Every wanted entry's manifest, each admitted by the site policy,
    // before any layer of any of them is fetched.
    let mut chosen = Vec::new();
    for e in &entries {
        let is_image = (e.media_type == manifest::OCI_MANIFEST || e.media_type == manifest::DOCKER_MANIFEST)
            && !e.annotations.contains_key("vnd.docker.reference.type");
        let (Some(os), Some(architecture)) = (e.os.clone(), e.architecture.clone()) else { continue };
        let p = Platform { os, architecture, variant: e.variant.clone() };
        // A wanted variant narrows (`--platform linux/arm/v7`); the site's
        // plain `linux/amd64` takes every amd64 level.
        if !is_image || p.os == "unknown" || !wants.iter().any(|w| w.accepts(&p)) {
            continue;
        }
        let m = registry.manifest(r.repository(), &e.digest)?;
        let im = match Document::parse(&m.body, m.content_type.as_deref()).map_err(malformed)? {
            Document::Image(im) => im,
            Document::Index(_) => {
                return Err(malformed(ManifestError(format!("index entry {} is itself an index", e.digest))))
            }
        };
        if let Some(policy) = policy {
            admit(policy, registry, root, r, top, &m.digest)?;
        }
        chosen.push((format!("#{} {p}", e.position), m.digest, im));
    }
    let mut pulled: Vec<(String, StoredImage)> = Vec::new();
    let mut downloaded = false;
    for (key, digest, im) in chosen {
        let (image, fresh) = fetch_image(root, registry, r, &digest, im, opts, progress)?;
        downloaded |= fresh;
        pulled.push((key, image));
    }
    if pulled.is_empty() {
        let want = wants[0].clone();
        return Err(PullError::NoPlatform {
            reference,
            want,
            available: descriptors.iter().filter_map(|d| d.platform.clone()).filter(|p| p.os != "unknown").collect(),
        });
    }
    let index = root.put_index(&top.body)?;
    debug_assert_eq!(index, top.digest);
    // What an index-unaware lookup per platform takes (`inspect --platform`).
    let mut per_platform = BTreeMap::new();
    for w in &wants {
        if let Ok(chosen) = manifest::select_platform(descriptors, w) {
            if let Some((_, img)) = pulled.iter().find(|(_, i)| i.digest.as_str() == chosen.digest) {
                per_platform.insert(w.to_string(), img.digest.clone());
            }
        }
    }
    let variants = pulled.iter().map(|(k, i)| (k.clone(), i.digest.clone())).collect();
    root.set_index_tag(r, &index, variants, per_platform.clone())?;
    let image = per_platform
        .get(&opts.platform.to_string())
        .and_then(|d| pulled.iter().find(|(_, i)| &i.digest == d))
        .unwrap_or(&pulled[0])
        .1
        .clone();
    Ok(PullOutcome { image, downloaded, index: Some((index, pulled)) })
}

/// One image manifest to a published image (or the one already there).
/// Returns whether anything was downloaded.
fn fetch_image(
    root: &StoreRoot,
    registry: &Registry,
    r: &ImageRef,
    image_digest: &Digest,
    manifest: ImageManifest,
    opts: &PullOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<(StoredImage, bool), PullError> {
    let reference = r.to_string();
    let malformed = |problem| PullError::Manifest {
        reference: reference.clone(),
        problem,
    };
    // Another name (or a moved tag) for an image we already have.
    if let Some(image) = root.image(image_digest)? {
        return Ok((image, false));
    }

    let bytes = manifest.layers.iter().map(|l| l.size).sum();
    progress(PullEvent::Resolved {
        image: image_digest.clone(),
        layers: manifest.layers.len(),
        bytes,
    });
    let lock = match super::store::Lock::try_acquire(&lock_path(root, image_digest)) {
        Ok(Some(l)) => l,
        Ok(None) => {
            progress(PullEvent::Waiting);
            root.lock_image(image_digest)?
        }
        // No lock file yet: nobody is pulling it.
        Err(_) => root.lock_image(image_digest)?,
    };
    // The process we waited for may have published it.
    if let Some(image) = root.image(image_digest)? {
        return Ok((image, false));
    }

    let work = root.work_dir()?;
    let config_blob = registry.blob_bytes(
        r.repository(),
        &digest_of(&manifest.config.digest, &reference)?,
    )?;
    let config_blob = ConfigBlob::parse(&config_blob).map_err(malformed)?;
    // Converted as they arrive: the converter reads each blob while it
    // downloads (top layer first, the order both go in), checking what it
    // read against the digest itself (`convert::arrival`).
    let blobs = work.path().join("blobs");
    std::fs::create_dir_all(&blobs).map_err(super::store::io_err(&blobs))?;
    let arrivals: BTreeMap<Digest, std::sync::Arc<Arrival>> =
        manifest.layers.iter().map(|l| (l.digest.clone(), Arrival::new(l.size))).collect();
    let layers: Vec<Layer> = manifest
        .layers
        .iter()
        .map(|l| Layer {
            path: blobs.join(l.digest.hex()),
            // Informational: the converter reads the compression from the bytes.
            compression: LayerCompression::from_media_type(&l.media_type).unwrap_or(LayerCompression::Uncompressed),
            digest: l.digest.to_string(),
            arriving: Some(arrivals[&l.digest].clone()),
        })
        .collect();
    let sqfs = work.path().join("image.sqfs");
    let (downloaded, converted) = std::thread::scope(|s| {
        let downloads =
            s.spawn(|| download_layers(registry, r.repository(), &manifest, &blobs, &arrivals, opts.parallel_downloads, progress));
        let converted = convert::layers_to_squashfs(&layers, &sqfs, &opts.squash, &|p| progress(PullEvent::Converting(p)));
        (downloads.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), converted)
    });
    // A failed download explains the conversion's failure better.
    downloaded?;
    let summary = converted?;
    // Free the blobs' space before the image lands.
    let _ = std::fs::remove_dir_all(work.path().join("blobs"));
    let meta = ImageMeta {
        digest: image_digest.clone(),
        squashfs_sha256: summary.sha256,
        config: config_blob.config,
        source_ref: r.pinned(image_digest.clone()).to_string(),
        platform: config_blob.platform.or_else(|| Some(opts.platform.clone())),
        size: summary.size,
        created: config_blob.created,
        stored_at: now(),
        verity_root: Some(summary.verity.root()),
    };
    let image = root.publish(&work, &sqfs, &summary.verity, &meta, &lock)?;
    drop(lock);
    Ok((image, true))
}

/// A placeholder digest for a decision that needs none (a `reject`).
fn empty_digest() -> Digest {
    super::registry::sha256_digest(b"")
}

/// Whether `image`, stored for `r`, passes the policy on the signatures
/// stored with it (no policy: always).
fn stored_ok(policy: Option<&Policy>, root: &StoreRoot, r: &ImageRef, image: &Digest) -> bool {
    policy.is_none_or(|p| {
        trust::check(p, Identity::Registry(r), image, trust::load_signatures(root, image).as_ref()).is_ok()
    })
}

/// The policy's decision on a resolved image, with its signatures fetched
/// (and stored) when the scope requires them. `top` is what the registry
/// served for `r`: the image's manifest, or the index it was chosen from.
fn admit(
    policy: &Policy,
    registry: &Registry,
    root: &StoreRoot,
    r: &ImageRef,
    top: &super::registry::FetchedManifest,
    image: &Digest,
) -> Result<(), PullError> {
    let (_, reqs) = trust::requirements(policy, Identity::Registry(r));
    let signatures = if trust::needs_signatures(reqs) {
        let index = (&top.digest != image).then_some((&top.digest, top.body.as_slice()));
        Some(trust::fetch::fetch(registry, r.repository(), image, index)?)
    } else {
        None
    };
    trust::check(policy, Identity::Registry(r), image, signatures.as_ref())?;
    if let Some(set) = &signatures {
        let path = trust::signatures_path(root, image);
        trust::save_signatures(root, image, set).map_err(super::store::io_err(&path))?;
    }
    Ok(())
}

fn lock_path(root: &StoreRoot, d: &Digest) -> PathBuf {
    let locks = root.dir().join("locks");
    let _ = std::fs::create_dir_all(&locks);
    locks.join(format!("{}.lock", d.hex()))
}

fn digest_of(s: &str, reference: &str) -> Result<Digest, PullError> {
    s.parse().map_err(|_| PullError::Manifest {
        reference: reference.to_string(),
        problem: ManifestError(format!("digest {s:?} is not sha256")),
    })
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Downloads every distinct layer into `blobs` with up to `parallel`
/// threads, top layer first (the converter's order), telling each
/// layer's [`Arrival`] what is written and how its download ended; a layer
/// never started (an earlier one failed) ends failed too, so no reader
/// waits for it.
fn download_layers(
    registry: &Registry,
    repository: &str,
    manifest: &ImageManifest,
    blobs: &Path,
    arrivals: &BTreeMap<Digest, std::sync::Arc<Arrival>>,
    parallel: usize,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<(), PullError> {
    // A layer listed twice is fetched once; popped from the end: top first.
    let mut order: Vec<(Digest, u64)> = Vec::new();
    for l in &manifest.layers {
        if !order.iter().any(|(d, _)| *d == l.digest) {
            order.push((l.digest.clone(), l.size));
        }
    }
    let total: u64 = order.iter().map(|(_, n)| n).sum();
    let done = AtomicI64::new(0);
    let queue = Mutex::new(order);
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                if first_error.lock().unwrap().is_some() {
                    return;
                }
                let Some((digest, size)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let arrival = &arrivals[&digest];
                let on_bytes = |n: i64| {
                    arrival.grew(n);
                    let d = done.fetch_add(n, Ordering::Relaxed) + n;
                    progress(PullEvent::Downloading { done: d.max(0) as u64, total });
                };
                let dest = blobs.join(digest.hex());
                match registry.blob_to_file(repository, &digest, size, &dest, &on_bytes) {
                    Ok(()) => arrival.finish(Ok(())),
                    Err(e) => {
                        arrival.finish(Err(e.to_string()));
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    for a in arrivals.values() {
        a.finish(Err("not downloaded (another layer's download failed)".into()));
    }
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Compression told by the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`);
/// `None` for anything else (a plain tar).
pub fn sniff(path: &Path) -> std::io::Result<Option<LayerCompression>> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < 4 {
        match f.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Some(LayerCompression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd] => Some(LayerCompression::Zstd),
        _ => None,
    })
}
