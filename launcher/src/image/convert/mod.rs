//! Conversion: the downloaded layer blobs of an OCI image (or a directory)
//! into ONE squashfs file, streaming, as an ordinary user.
//!
//! ```text
//! layers_to_squashfs(&[Layer], out, &SquashOptions, &progress) -> SquashSummary
//! dir_to_squashfs(dir, out, &SquashOptions, &progress)         -> SquashSummary  (`shoal import DIR`)
//! check_squashfs(file)                                          -> SquashSummary  (`shoal import X.sqfs`)
//! ```
//!
//! Each returns the image's size, sha256 (hex, of the whole file) and inode
//! count; the store records the hash so that nodes can verify their copies.
//! The hash is taken right after the writer finishes, from the page cache
//! (the writer rewrites the superblock at offset 0 last, so no running hash
//! of its output is possible): 0.2 s for a 109 MB image.
//! `out` is a new temporary file next to its final place: it is overwritten,
//! written in full, fsynced, and left for the caller to rename (or, on an
//! error, to delete).
//!
//! How: the layers are read top layer first, each decompressed once (gzip,
//! zstd or plain tar, told by the media type and checked by magic bytes),
//! judged entry by entry by the OCI layer rules (`flatten.rs`) and streamed as
//! one flattened tar into squashfs-tools-ng's `tar2sqfs`, which compresses on
//! every core while this process decompresses. The image is never unpacked
//! to disk; memory holds metadata only (one small record per path). The
//! writer was chosen by measurement (BENCHMARKS.md, `bench/convert.sh`): it
//! keeps hard links and xattrs, which `backhand` cannot, and compresses on
//! all cores.
//!
//! What reaches the image: regular files, directories, symlinks (targets
//! kept verbatim: they are resolved inside the container at run time), hard
//! links, fifos, with owners (numeric uid/gid from the tar headers), modes
//! including setuid/setgid/sticky (image mounts are nosuid) and `SCHILY.xattr`
//! extended attributes in the namespaces squashfs stores (`user.`,
//! `security.capability`; never overlayfs markers, see `tar_entry::keep_xattr`). Device nodes are
//! dropped (mounts are nodev). The root directory is always 0755 root:root,
//! and directories no layer lists get the same. The output is deterministic:
//! the same layers give the same bytes whatever their compression.
//!
//! `dir_to_squashfs` packs a directory as it is with `mksquashfs` (which
//! keeps hard links and xattrs; squashfs-tools-ng's `gensquashfs` does not
//! keep hard links).
//!
//! What this module must never do: write anything but `out` (no unpacking,
//! no following of any path from a layer on the host), or accept an entry
//! that resolves outside the image root. `..` above the root is refused,
//! absolute names are taken relative to the root, and an entry beneath a
//! path that some layer made a symlink (or a file) is refused; each refusal
//! names the layer digest and the entry.
//!
//! Not supported (refused with a clear error, never guessed): a path twice
//! in one layer unless both are directories; a hard link whose target a
//! higher layer replaces. squashfs-tools-ng has no uncompressed mode, so
//! [`Compression`] offers zstd, gzip and lz4 only.

pub(crate) mod flatten;
pub mod arrival;
mod decompress;
mod tar_entry;
mod writer;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use writer::{check_squashfs, dir_to_squashfs, layers_to_squashfs};
/// For `crate::save`'s layer of a container's changes.
pub(crate) use tar_entry::{append_pax_xattrs, keep_xattr};

/// How a layer blob is compressed (from its media type: `...tar+gzip`,
/// `...tar+zstd`, `...tar`). Magic bytes override a wrong media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    Zstd,
    Uncompressed,
}

impl LayerCompression {
    /// From an OCI or Docker layer media type; `None` for a non-layer type.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::Uncompressed),
            _ => None,
        }
    }
}

/// One layer blob.
#[derive(Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub compression: LayerCompression,
    /// The blob's digest (`sha256:...`), for error messages (and checked
    /// against what is read while it arrives).
    pub digest: String,
    /// Still downloading: `path` is read as it grows ([`arrival`]).
    pub arriving: Option<std::sync::Arc<arrival::Arrival>>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("path", &self.path)
            .field("compression", &self.compression)
            .field("digest", &self.digest)
            .field("arriving", &self.arriving.is_some())
            .finish()
    }
}

/// How the squashfs is compressed. Default: zstd level 3 (fast; the
/// writers' own zstd default, 15 or more, is many times slower). Written
/// and read (also in the site config, `[image] compression`) as `zstd:3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Compression {
    /// Level 1..=22.
    Zstd {
        level: i32,
    },
    /// Level 1..=9.
    Gzip {
        level: u32,
    },
    Lz4,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Lz4 => f.write_str("lz4"),
        }
    }
}

/// Parses `zstd`, `zstd:N` (1-22), `gzip`, `gzip:N` (1-9), `lz4`.
impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let bad = || format!("bad compression {s:?}: use zstd:N (1-22), gzip:N (1-9) or lz4");
        let level_in = |lo: i64, hi: i64, dflt: i64| -> Result<i64, String> {
            match level {
                None => Ok(dflt),
                Some(l) => l
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(bad),
            }
        };
        match name {
            "zstd" => Ok(Compression::Zstd {
                level: level_in(1, 22, 3)? as i32,
            }),
            "gzip" => Ok(Compression::Gzip {
                level: level_in(1, 9, 6)? as u32,
            }),
            "lz4" if level.is_none() => Ok(Compression::Lz4),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Compression {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// How to write the squashfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashOptions {
    pub compression: Compression,
    /// Bytes, a power of two from 4 KiB to 1 MiB. Default 128 KiB.
    pub block_size: u32,
}

impl Default for SquashOptions {
    fn default() -> Self {
        SquashOptions {
            compression: Compression::default(),
            block_size: 128 * 1024,
        }
    }
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashSummary {
    /// Bytes of the squashfs file.
    pub size: u64,
    /// sha256 of the whole file, lowercase hex (no `sha256:` prefix).
    pub sha256: String,
    /// Inodes in the image (files, directories, links; hard links count once).
    pub entries: u64,
    /// The file's hash tree (made in the same pass as `sha256`), kept in
    /// the store for nodes that read the image where it lies.
    pub verity: crate::image::verity::Tree,
}

/// Progress reports, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Compressed layer bytes read so far, of `total` (all layers together).
    /// Layers are read top layer first.
    Reading { done: u64, total: u64 },
    /// All input read; the writer is finishing the image and it is hashed.
    Finishing,
}

/// Why a conversion failed. Each message names the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("layer {digest} ({}): {source}; the blob is unreadable or corrupt: delete it and pull again", path.display())]
    LayerRead {
        digest: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {digest}: entry `{entry}`: {reason}; this image cannot be converted safely")]
    BadEntry {
        digest: String,
        entry: String,
        reason: String,
    },
    #[error("{tool} not found on PATH: install squashfs-tools-ng (Debian/Ubuntu package `squashfs-tools-ng`)")]
    ToolMissing { tool: &'static str },
    #[error("no space left in {}: {}{free_mb} MB are free; free some space or point the store elsewhere", dir.display(), needs(.needed_mb))]
    DiskFull {
        dir: PathBuf,
        /// A rough size of the image, when known (the compressed layers'
        /// size: a zstd squashfs comes out about as big).
        needed_mb: Option<u64>,
        free_mb: u64,
    },
    #[error("{tool} failed writing {}: {message}", out.display())]
    Writer {
        tool: &'static str,
        out: PathBuf,
        message: String,
    },
    #[error("{}: not a usable squashfs image: {reason}", path.display())]
    NotSquashfs { path: PathBuf, reason: String },
    #[error("invalid option: {0}")]
    Options(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn needs(mb: &Option<u64>) -> String {
    mb.map(|n| format!("the image needs about {n} MB, "))
        .unwrap_or_default()
}

impl ConvertError {
    fn io(path: &Path, source: io::Error) -> Self {
        ConvertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses_and_prints() {
        for s in ["zstd:3", "zstd:19", "gzip:9", "lz4"] {
            assert_eq!(s.parse::<Compression>().unwrap().to_string(), s);
        }
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 3 }
        );
        assert_eq!(
            "gzip".parse::<Compression>().unwrap(),
            Compression::Gzip { level: 6 }
        );
        for bad in ["zstd:0", "zstd:23", "gzip:10", "lz4:1", "xz", "zstd:x", ""] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
        assert_eq!(SquashOptions::default().compression.to_string(), "zstd:3");
    }

    #[test]
    fn layer_compression_from_media_type() {
        assert_eq!(
            LayerCompression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(LayerCompression::Zstd)
        );
        assert_eq!(
            LayerCompression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(LayerCompression::Gzip)
        );
        assert_eq!(LayerCompression::from_media_type("application/json"), None);
    }
}
