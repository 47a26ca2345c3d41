//! Start profiles: which of the image's blocks a command read, in the order
//! it first read them, kept by the server (as the user) in the user's cache
//! when the container ends ([`Recorder`]), and decompressed in that order,
//! a little ahead of the command, by the read-ahead thread the next time
//! the same command starts from the same image file ([`replay`]).
//!
//! The hint-based read-ahead finds a program and its libraries; an
//! interpreter's start (Python's imports: thousands of modules and
//! extensions) is only known by running it. Measured on the pystack image
//! (BENCHMARKS.md), decompression is about a fifth of a cold
//! `import numpy` through FUSE; replayed, it runs on the other CPU while
//! the command runs.
//!
//! A profile names blocks by file (inode reference) and block index, never
//! by position in the image: the replay reaches each block through the
//! image's own inode and block list, as a request does. A stale or forged
//! profile can only make the server decompress other blocks early, never
//! serve other bytes; a malformed one is read as far as it is well formed.
//! The launcher names a profile only for a launch by the user themself
//! (`hints::start_profile`).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::squashfs::{Archive, FileLayout, Kind};

/// A block of a file: the file's inode reference and the block's index in
/// it (the index past its full blocks is its fragment).
pub type BlockOf = (u64, u32);

const MAGIC: &[u8; 8] = b"SHOALSP1";
/// The most blocks a profile keeps (each is at most one block-size read).
const MAX_ENTRIES: usize = 1 << 16;
/// How far the replay runs ahead of the command, in blocks: a quarter of
/// the block cache at the default 128 KiB, so what it decompressed is
/// still there when asked for.
const AHEAD: usize = 128;
/// The replay's wait for the command to catch up.
const WAIT: Duration = Duration::from_micros(500);

/// What the command reads, block by block, in order, for the profile
/// written when the server ends. `demand` counts the distinct blocks asked
/// for so far, for the replay to keep pace with.
pub struct Recorder {
    path: PathBuf,
    seen: HashSet<BlockOf>,
    order: Vec<BlockOf>,
    demand: std::sync::Arc<AtomicUsize>,
}

impl Recorder {
    pub fn new(path: PathBuf, demand: std::sync::Arc<AtomicUsize>) -> Recorder {
        Recorder { path, seen: HashSet::new(), order: Vec::new(), demand }
    }

    /// A read of `len` bytes at `offset` of the file `inode_ref`, `size`
    /// bytes long (`block_size`: its image's).
    pub fn note(&mut self, inode_ref: u64, size: u64, block_size: u32, offset: u64, len: u32) {
        let end = size.min(offset.saturating_add(u64::from(len)));
        if end <= offset || self.order.len() >= MAX_ENTRIES {
            return;
        }
        let bs = u64::from(block_size.max(1));
        for k in offset / bs..=(end - 1) / bs {
            let Ok(k) = u32::try_from(k) else { return };
            if self.seen.insert((inode_ref, k)) {
                self.order.push((inode_ref, k));
                self.demand.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes the profile (atomically: a file of this process renamed
    /// over it). Failing is only slower next time.
    pub fn save(&self) {
        if self.order.is_empty() {
            return;
        }
        let Some(dir) = self.path.parent() else { return };
        if std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{}.{}", self.path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&encode(&self.order)));
        if written.is_err() || std::fs::rename(&tmp, &self.path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// A profile's bytes: the magic, then each block's inode reference and
/// index, little-endian.
pub fn encode(order: &[BlockOf]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + order.len() * 12);
    out.extend_from_slice(MAGIC);
    for (r, k) in order {
        out.extend_from_slice(&r.to_le_bytes());
        out.extend_from_slice(&k.to_le_bytes());
    }
    out
}

/// The blocks of a profile, as far as it is well formed (none without the
/// magic; a torn last entry is left out).
pub fn parse(bytes: &[u8]) -> Vec<BlockOf> {
    let Some(body) = bytes.strip_prefix(MAGIC) else { return Vec::new() };
    body.chunks_exact(12)
        .take(MAX_ENTRIES)
        .map(|c| (u64::from_le_bytes(c[..8].try_into().expect("8")), u32::from_le_bytes(c[8..].try_into().expect("4"))))
        .collect()
}

/// The profile at `path`, if there is one (never a FIFO or device: opened
/// non-blocking, only a regular file read).
pub fn load(path: &Path) -> Vec<BlockOf> {
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path);
    let Ok(f) = opened else { return Vec::new() };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    let cap = (MAGIC.len() + MAX_ENTRIES * 12) as u64;
    if f.take(cap).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    parse(&bytes)
}

/// Decompresses the profile's blocks into the shared cache, in order,
/// never more than [`AHEAD`] blocks beyond what the command has asked for
/// (`demand`). Blocks that are not there (another image, a forged entry)
/// are skipped.
pub fn replay(fs: &mut Archive, blocks: &[BlockOf], demand: &AtomicUsize) {
    let bs = u64::from(fs.block_size());
    let mut layouts: HashMap<u64, Option<FileLayout>> = HashMap::new();
    let mut scratch = Vec::new();
    for (i, &(r, k)) in blocks.iter().enumerate() {
        while i >= demand.load(Ordering::Relaxed) + AHEAD {
            std::thread::sleep(WAIT);
        }
        if layouts.len() > 4096 {
            layouts.clear();
        }
        let layout = layouts.entry(r).or_insert_with(|| match fs.inode(r) {
            Ok(inode) => match inode.kind {
                Kind::File(f) => fs.layout(&f).ok(),
                _ => None,
            },
            Err(_) => None,
        });
        let Some(layout) = layout.as_ref() else { continue };
        let offset = u64::from(k) * bs;
        if offset < layout.size {
            scratch.clear();
            // One byte decompresses the block; a mangled file is left to
            // its reader.
            let _ = fs.read(layout, offset, 1, &mut scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_reads_back_as_far_as_it_is_well_formed() {
        let order = vec![(7u64, 0u32), (7, 1), (1 << 40, u32::MAX)];
        let bytes = encode(&order);
        assert_eq!(parse(&bytes), order);
        assert_eq!(parse(&bytes[..bytes.len() - 3]), order[..2]);
        assert!(parse(b"SHOALSP2............").is_empty());
        assert!(parse(b"").is_empty());
    }

    #[test]
    fn the_recorder_keeps_each_block_once_in_first_read_order() {
        let demand = std::sync::Arc::new(AtomicUsize::new(0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/profile");
        let mut r = Recorder::new(path.clone(), demand.clone());
        let size = 300_000;
        r.note(5, size, 131072, 0, 4096);
        r.note(5, size, 131072, 130_000, 10_000); // blocks 0 and 1
        r.note(5, size, 131072, 299_999, 65536); // the tail: block 2
        r.note(5, size, 131072, 400_000, 10); // past the end: nothing
        r.note(9, size, 131072, 0, 1);
        assert_eq!(demand.load(Ordering::Relaxed), 4);
        r.save();
        assert_eq!(load(&path), [(5, 0), (5, 1), (5, 2), (9, 0)]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }
}
