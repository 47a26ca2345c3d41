//! `shoal import`: local sources into the store, the same way a pull ends
//! (one squashfs, metadata, atomic publish, a tag):
//! - an OCI image layout directory (`oci-layout` + `index.json`, as umoci,
//!   skopeo `oci:` and buildah write it);
//! - a docker-archive tarball (`docker save`, skopeo `docker-archive:`);
//! - a plain directory (taken as the image's root filesystem);
//! - an existing squashfs file (checked, then copied in).
//!
//! It never follows a path named inside an archive or layout out of it:
//! layout blobs are found by digest only, and archive members are copied to
//! numbered files in the work dir, never to the names they carry.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use super::convert::{self, ConvertError, Layer, LayerCompression, SquashOptions};
use super::manifest::{self, ConfigBlob, Descriptor, Document, ImageConfig, ManifestError};
use super::platform::Platform;
use super::pull::{now, sniff};
use super::registry::sha256_digest;
use super::store::{io_err, ImageMeta, Scope, Store, StoreError, StoredImage};
use crate::reference::{Digest, ImageRef, ImageSpec};

/// What kind of thing is being imported, decided by looking at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    OciLayout(PathBuf),
    DockerArchive(PathBuf),
    Directory(PathBuf),
    Squashfs(PathBuf),
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The name to tag it with; default `localhost/<file name>:latest`.
    pub name: Option<ImageRef>,
    /// For a layout or archive holding several images: which one (the
    /// `org.opencontainers.image.ref.name` annotation, or a `RepoTags` entry).
    pub select: Option<String>,
    pub platform: Platform,
    pub scope: Scope,
    pub squash: SquashOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            select: None,
            platform: Platform::host(),
            scope: Scope::User,
            squash: SquashOptions::default(),
        }
    }
}

/// Why an import failed; names the source and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{}: {problem}", path.display())]
    Manifest {
        path: PathBuf,
        problem: ManifestError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

impl ImportSource {
    pub fn detect(path: &Path) -> Result<ImportSource, ImportError> {
        let meta = fs::metadata(path).map_err(|e| ImportError::Source {
            path: path.into(),
            reason: format!("{e}; give an OCI layout directory, a docker-archive .tar, a directory or a .sqfs file"),
        })?;
        if meta.is_dir() {
            return Ok(
                if path.join("oci-layout").is_file() && path.join("index.json").is_file() {
                    ImportSource::OciLayout(path.into())
                } else {
                    ImportSource::Directory(path.into())
                },
            );
        }
        let mut magic = [0u8; 4];
        let n = io::Read::read(&mut File::open(path).map_err(io_err(path))?, &mut magic)
            .map_err(io_err(path))?;
        if &magic[..n] == b"hsqs" {
            return Ok(ImportSource::Squashfs(path.into()));
        }
        if sniff(path).map_err(io_err(path))?.is_some() {
            return Err(ImportError::Source {
                path: path.into(),
                reason:
                    "a compressed file; decompress a docker-archive before importing (`gunzip`)"
                        .into(),
            });
        }
        Ok(ImportSource::DockerArchive(path.into()))
    }
}

/// Imports `source` into the store.
pub fn import(
    store: &Store,
    source: &Path,
    opts: &ImportOptions,
    progress: &dyn Fn(convert::Progress),
) -> Result<StoredImage, ImportError> {
    let root = store.root(opts.scope)?;
    let kind = ImportSource::detect(source)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(source, opts.select.as_deref())?,
    };
    let work = root.work_dir()?;
    let sqfs = work.path().join("image.sqfs");
    let (digest, summary, config) = match &kind {
        ImportSource::OciLayout(dir) => {
            let (digest, layers, config) = oci_layout(dir, opts)?;
            (
                Some(digest),
                convert::layers_to_squashfs(&layers, &sqfs, &opts.squash, progress)?,
                config,
            )
        }
        ImportSource::DockerArchive(file) => {
            let (digest, layers, config) = docker_archive(file, work.path(), opts)?;
            (
                Some(digest),
                convert::layers_to_squashfs(&layers, &sqfs, &opts.squash, progress)?,
                config,
            )
        }
        ImportSource::Directory(dir) => (
            None,
            convert::dir_to_squashfs(dir, &sqfs, &opts.squash, progress)?,
            ConfigBlob::default(),
        ),
        ImportSource::Squashfs(file) => {
            convert::check_squashfs(file)?;
            fs::copy(file, &sqfs).map_err(io_err(&sqfs))?;
            File::open(&sqfs)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&sqfs))?;
            // Hash the copy, not the source: the copy is what gets published.
            (None, convert::check_squashfs(&sqfs)?, ConfigBlob::default())
        }
    };
    let digest = match digest {
        Some(d) => d,
        None => format!("sha256:{}", summary.sha256)
            .parse()
            .expect("sha256 hex is a digest"),
    };
    let meta = ImageMeta {
        digest: digest.clone(),
        squashfs_sha256: summary.sha256,
        config: ImageConfig { ..config.config },
        source_ref: fs::canonicalize(source)
            .unwrap_or_else(|_| source.into())
            .display()
            .to_string(),
        platform: config.platform.or_else(|| Some(opts.platform.clone())),
        size: summary.size,
        created: config.created,
        stored_at: now(),
        verity_root: Some(summary.verity.root()),
    };
    let lock = root.lock_image(&digest)?;
    let image = root.publish(&work, &sqfs, &summary.verity, &meta, &lock)?;
    root.set_tag(&name, Some(&digest), &opts.platform, &digest)?;
    Ok(image)
}

/// `localhost/<name>:<tag>` from the source's file name (lowercased, other
/// characters turned into `-`), tag `latest` or the selected one.
fn default_name(source: &Path, select: Option<&str>) -> Result<ImageRef, ImportError> {
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    let stem = stem.trim_matches('-');
    let stem = if stem.is_empty() { "image" } else { stem };
    let tag = select
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or("latest");
    match format!("localhost/{stem}:{tag}").parse::<ImageSpec>() {
        Ok(ImageSpec::Registry(r)) => Ok(r),
        _ => Err(ImportError::Source {
            path: source.into(),
            reason: "cannot make an image name from the file name; give one with --name".into(),
        }),
    }
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(serde::Deserialize)]
struct LayoutIndex {
    manifests: Vec<LayoutEntry>,
}

#[derive(serde::Deserialize)]
struct LayoutEntry {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn oci_layout(
    dir: &Path,
    opts: &ImportOptions,
) -> Result<(Digest, Vec<Layer>, ConfigBlob), ImportError> {
    let bad = |reason: String| ImportError::Source {
        path: dir.into(),
        reason,
    };
    let index_path = dir.join("index.json");
    let index: LayoutIndex =
        serde_json::from_slice(&fs::read(&index_path).map_err(io_err(&index_path))?)
            .map_err(|e| bad(format!("index.json is not an OCI index ({e})")))?;
    let mut entries: Vec<&LayoutEntry> = index.manifests.iter().collect();
    if let Some(sel) = &opts.select {
        entries.retain(|e| {
            e.annotations
                .get(REF_NAME)
                .is_some_and(|r| r == sel || r.ends_with(&format!(":{sel}")))
        });
    }
    let names = || {
        index
            .manifests
            .iter()
            .filter_map(|e| e.annotations.get(REF_NAME).cloned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Descriptor = match entries.as_slice() {
        [] => {
            return Err(bad(format!(
                "no image named {:?} in the layout (it has: {})",
                opts.select.as_deref().unwrap_or(""),
                names()
            )))
        }
        [one] => one.descriptor.clone(),
        many if many.iter().all(|e| e.descriptor.platform.is_some()) => {
            let d: Vec<Descriptor> = many.iter().map(|e| e.descriptor.clone()).collect();
            manifest::select_platform(&d, &opts.platform)
                .map_err(|_| bad(format!("no image for {} in the layout", opts.platform)))?
                .clone()
        }
        _ => {
            return Err(bad(format!(
                "the layout holds several images; pick one with --ref NAME (it has: {})",
                names()
            )))
        }
    };
    let read_blob = |d: &str| -> Result<(Digest, Vec<u8>), ImportError> {
        let digest: Digest = d
            .parse()
            .map_err(|_| bad(format!("digest {d:?} is not sha256")))?;
        let path = dir.join("blobs/sha256").join(digest.hex());
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if sha256_digest(&bytes) != digest {
            return Err(bad(format!(
                "blob {digest} does not match its digest; the layout is corrupt"
            )));
        }
        Ok((digest, bytes))
    };
    let malformed = |problem| ImportError::Manifest {
        path: dir.into(),
        problem,
    };
    let (mut digest, body) = read_blob(&chosen.digest)?;
    let mut doc = Document::parse(&body, Some(&chosen.media_type)).map_err(malformed)?;
    if let Document::Index(list) = &doc {
        let e = manifest::select_platform(list, &opts.platform).map_err(|_| {
            bad(format!(
                "no image for {} in the layout's index",
                opts.platform
            ))
        })?;
        let (d, body) = read_blob(&e.digest)?;
        digest = d;
        doc = Document::parse(&body, Some(&e.media_type)).map_err(malformed)?;
    }
    let Document::Image(m) = doc else {
        return Err(bad(
            "nested indexes deeper than one level are not supported".into(),
        ));
    };
    let (_, config) = read_blob(&m.config.digest)?;
    let config = ConfigBlob::parse(&config).map_err(malformed)?;
    let layers = m
        .layers
        .iter()
        .map(|l| {
            let path = dir.join("blobs/sha256").join(l.digest.hex());
            let size = fs::metadata(&path).map_err(io_err(&path))?.len();
            if size != l.size {
                return Err(bad(format!(
                    "layer {} is {size} bytes, its manifest says {}",
                    l.digest, l.size
                )));
            }
            layer(path, &l.digest)
        })
        .collect::<Result<Vec<_>, ImportError>>()?;
    Ok((digest, layers, config))
}

fn layer(path: PathBuf, digest: &Digest) -> Result<Layer, ImportError> {
    let compression = sniff(&path)
        .map_err(io_err(&path))?
        .unwrap_or(LayerCompression::Uncompressed);
    Ok(Layer {
        path,
        compression,
        digest: digest.to_string(),
        arriving: None,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Copies the archive's members into `work/archive/N` (by number, never by
/// their names), then reads `manifest.json`.
fn docker_archive(
    file: &Path,
    work: &Path,
    opts: &ImportOptions,
) -> Result<(Digest, Vec<Layer>, ConfigBlob), ImportError> {
    let bad = |reason: String| ImportError::Source {
        path: file.into(),
        reason,
    };
    let out = work.join("archive");
    fs::create_dir_all(&out).map_err(io_err(&out))?;
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut archive = tar::Archive::new(File::open(file).map_err(io_err(file))?);
    let not_tar = |e: io::Error| bad(format!("not a docker-archive tarball ({e})"));
    for (n, entry) in archive.entries().map_err(not_tar)?.enumerate() {
        let mut entry = entry.map_err(not_tar)?;
        let name = normalize(&entry.path().map_err(not_tar)?);
        let Some(name) = name else { continue };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dest = out.join(n.to_string());
                let mut f = File::create(&dest).map_err(io_err(&dest))?;
                io::copy(&mut entry, &mut f).map_err(io_err(&dest))?;
                files.insert(name, dest);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = entry.link_name().map_err(not_tar)? {
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target)
                    } else {
                        target.into_owned()
                    };
                    if let Some(t) = normalize(&base) {
                        links.insert(name, t);
                    }
                }
            }
            _ => {}
        }
    }
    let find = |name: &str| -> Option<PathBuf> {
        let mut name = normalize(Path::new(name))?;
        for _ in 0..8 {
            if let Some(p) = files.get(&name) {
                return Some(p.clone());
            }
            name = links.get(&name)?.clone();
        }
        None
    };
    let manifest_path = find("manifest.json")
        .ok_or_else(|| bad("no manifest.json in it: not a docker-archive tarball".into()))?;
    let entries: Vec<ArchiveEntry> =
        serde_json::from_slice(&fs::read(&manifest_path).map_err(io_err(&manifest_path))?)
            .map_err(|e| bad(format!("manifest.json is malformed ({e})")))?;
    let entry = match (&opts.select, entries.as_slice()) {
        (None, [one]) => one,
        (None, []) => return Err(bad("manifest.json lists no image".into())),
        (sel, all) => {
            let tags = || {
                all.iter()
                    .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(sel) = sel else {
                return Err(bad(format!(
                    "the archive holds several images; pick one with --ref TAG (it has: {})",
                    tags()
                )));
            };
            all.iter()
                .find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| t == sel || t.ends_with(&format!(":{sel}")))
                })
                .ok_or_else(|| {
                    bad(format!(
                        "no image tagged {sel:?} in the archive (it has: {})",
                        tags()
                    ))
                })?
        }
    };
    let config_path = find(&entry.config)
        .ok_or_else(|| bad(format!("config {} missing from the archive", entry.config)))?;
    let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
    // Docker's image ID: the config's digest.
    let digest = sha256_digest(&config_bytes);
    let config = ConfigBlob::parse(&config_bytes).map_err(|problem| ImportError::Manifest {
        path: file.into(),
        problem,
    })?;
    let layers = entry
        .layers
        .iter()
        .map(|l| {
            let path = find(l).ok_or_else(|| bad(format!("layer {l} missing from the archive")))?;
            let d = sha256_digest(l.as_bytes()); // a label for messages only
            layer(path, &d).map(|mut layer| {
                layer.digest = l.clone();
                layer
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((digest, layers, config))
}

/// A member name as a relative path with no `..`, `.` or root; `None` if it
/// climbs out.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_never_climb_out() {
        assert_eq!(
            normalize(Path::new("./abc/layer.tar")).as_deref(),
            Some("abc/layer.tar")
        );
        assert_eq!(
            normalize(Path::new("/manifest.json")).as_deref(),
            Some("manifest.json")
        );
        assert_eq!(normalize(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(normalize(Path::new("../x")), None);
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_name(Path::new("/tmp/My Image.tar"), None)
                .unwrap()
                .to_string(),
            "localhost/my-image:latest"
        );
        assert_eq!(
            default_name(Path::new("/tmp/oci"), Some("v2"))
                .unwrap()
                .to_string(),
            "localhost/oci:v2"
        );
    }
}
