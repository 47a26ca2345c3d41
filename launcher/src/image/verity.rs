//! A hash tree over an image file, so a node can mount a store image where
//! it lies (`node.staging = "in-place"`) and still serve only the bytes
//! that were written at pull time, checked as they are read rather than by
//! reading the whole file before the first task starts.
//!
//! The file is cut into chunks of [`CHUNK`] bytes (the last one shorter);
//! each chunk's sha256 is a leaf. `image.verity`, beside `image.sqfs` in the
//! store, holds
//!
//! ```text
//! "SHOALVT1" | chunk size: u32 LE | 0: u32 | file length: u64 LE | leaves (32 bytes each)
//! ```
//!
//! and the tree's root is the sha256 of those bytes, recorded in the
//! image's `meta.json` when it is published (`verity_root`). A reader loads
//! the leaf file, refuses it unless it hashes to the root it was given,
//! then checks every chunk it reads against its leaf ([`Reader`]): a
//! changed byte anywhere fails the read that meets it with `EIO`. Two
//! levels (root over all leaves) rather than a deeper tree: the leaves are
//! 1/2048 of the image (55 KB for a 109 MB image), read once per server.
//!
//! Must never: serve a byte that was not checked against its leaf in the
//! same read (a file changed under the server after a chunk was checked is
//! caught on the next read: nothing is remembered as "good" except the
//! checked copies the reader itself keeps), or accept a leaf file larger
//! than its header says.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// Bytes per leaf: a squashfs data block (128 KiB here) spans two or three.
pub const CHUNK: u32 = 64 * 1024;

const MAGIC: &[u8; 8] = b"SHOALVT1";
const HEADER: usize = 24;
/// The file name beside `image.sqfs` in a store image's directory.
pub const FILE_NAME: &str = "image.verity";

/// Why a tree or a chunk was refused. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("hash tree {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("hash tree {path} does not hash to the root recorded when the image was pulled ({root}): the store entry was changed or damaged; remove the image and pull it again")]
    Root { path: PathBuf, root: String },
    #[error("hash tree {path} is malformed ({why}); remove the image and pull it again")]
    Malformed { path: PathBuf, why: String },
    #[error("hash tree {path} is for a file of {tree} bytes, but the image file has {file}: the image was changed; remove it and pull it again")]
    Length { path: PathBuf, tree: u64, file: u64 },
}

/// A tree's root and where its leaves are: what a pin or a staged image
/// carries (the leaves are read by whoever serves the image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub file: PathBuf,
    /// Lowercase hex sha256 of the leaf file.
    pub root: String,
}

/// The leaves of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    chunk: u32,
    len: u64,
    leaves: Vec<[u8; 32]>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Tree {
    /// The leaf file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 32 * self.leaves.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        for l in &self.leaves {
            out.extend_from_slice(l);
        }
        out
    }

    /// The root: sha256 of [`Tree::encode`], lowercase hex.
    pub fn root(&self) -> String {
        hex(&Sha256::digest(self.encode()))
    }

    /// Parses leaf-file bytes that must hash to `root` (checked first: no
    /// byte of a file that does not is interpreted).
    pub fn decode(bytes: &[u8], root: &str, path: &Path) -> Result<Tree, VerityError> {
        if hex(&Sha256::digest(bytes)) != root.to_ascii_lowercase() {
            return Err(VerityError::Root { path: path.into(), root: root.into() });
        }
        let bad = |why: &str| VerityError::Malformed { path: path.into(), why: why.into() };
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad("no SHOALVT1 header"));
        }
        let chunk = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
        let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8"));
        if !(4096..=1 << 20).contains(&chunk) || !chunk.is_power_of_two() {
            return Err(bad("bad chunk size"));
        }
        let body = &bytes[HEADER..];
        if !body.len().is_multiple_of(32) || (body.len() / 32) as u64 != len.div_ceil(u64::from(chunk)) {
            return Err(bad("leaf count does not match the file length"));
        }
        let leaves = body.chunks_exact(32).map(|c| c.try_into().expect("32")).collect();
        Ok(Tree { chunk, len, leaves })
    }

    /// Reads and checks the leaf file at `pinned.file` (with the caller's
    /// credentials) for an image file of `image_len` bytes: no more than a
    /// tree for that length can hold is read, and a tree for another
    /// length is refused.
    pub fn load(pinned: &Pinned, image_len: u64) -> Result<Tree, VerityError> {
        let path = &pinned.file;
        let io_err = |source| VerityError::Io { path: path.clone(), source };
        let file = crate::image::file::open_image_file(path, crate::image::file::Links::Follow).map_err(io_err)?;
        // The smallest chunk a tree may have is 4 KiB.
        let cap = HEADER as u64 + 32 * image_len.div_ceil(4096);
        let mut bytes = Vec::new();
        file.take(cap + 1).read_to_end(&mut bytes).map_err(io_err)?;
        if bytes.len() as u64 > cap {
            return Err(VerityError::Malformed { path: path.clone(), why: "larger than any tree for the image".into() });
        }
        let tree = Tree::decode(&bytes, &pinned.root, path)?;
        if tree.len != image_len {
            return Err(VerityError::Length { path: path.clone(), tree: tree.len, file: image_len });
        }
        Ok(tree)
    }

    fn chunk_span(&self, i: u64) -> (u64, usize) {
        let start = i * u64::from(self.chunk);
        (start, (self.len - start).min(u64::from(self.chunk)) as usize)
    }

    fn check(&self, i: u64, data: &[u8]) -> bool {
        self.leaves.get(i as usize).is_some_and(|leaf| Sha256::digest(data).as_slice() == leaf)
    }
}

/// Builds a [`Tree`] from a file's bytes in order (the store hashes the
/// whole file anyway when it records its sha256: one pass for both).
pub struct Builder {
    current: Sha256,
    in_chunk: u32,
    len: u64,
    leaves: Vec<[u8; 32]>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder { current: Sha256::new(), in_chunk: 0, len: 0, leaves: Vec::new() }
    }
}

impl Builder {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = data.len().min((CHUNK - self.in_chunk) as usize);
            self.current.update(&data[..take]);
            self.in_chunk += take as u32;
            data = &data[take..];
            if self.in_chunk == CHUNK {
                self.leaves.push(std::mem::take(&mut self.current).finalize().into());
                self.in_chunk = 0;
            }
        }
    }

    pub fn finish(mut self) -> Tree {
        if self.in_chunk > 0 {
            self.leaves.push(self.current.finalize().into());
        }
        Tree { chunk: CHUNK, len: self.len, leaves: self.leaves }
    }
}

/// Checked chunks a reader keeps, so the small reads of one metadata block
/// (its two-byte header, then its body) hash their chunk once.
const RECENT: usize = 8;

/// An image file read through `pread`, checked against its tree when it
/// has one (a plain file otherwise).
pub struct Reader {
    file: File,
    tree: Option<Arc<Tree>>,
    recent: RefCell<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl Reader {
    /// A reader of `file`; with a tree, the file must be as long as the
    /// file the tree was made for.
    pub fn new(file: File, tree: Option<Arc<Tree>>) -> io::Result<Reader> {
        if let Some(t) = &tree {
            let len = file.metadata()?.len();
            if len != t.len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the image file has {len} bytes, its hash tree is for {}: the image was changed; remove it and pull it again", t.len),
                ));
            }
        }
        Ok(Reader { file, tree, recent: RefCell::default() })
    }

    /// Another reader of the same file and tree (for another thread).
    pub fn try_clone(&self) -> io::Result<Reader> {
        Ok(Reader { file: self.file.try_clone()?, tree: self.tree.clone(), recent: RefCell::default() })
    }

    pub fn verified(&self) -> bool {
        self.tree.is_some()
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Fills `buf` from `pos`; with a tree, only from chunks that match
    /// their leaves (else `InvalidData`, which the server answers `EIO`).
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let Some(tree) = &self.tree else {
            return self.file.read_exact_at(buf, pos);
        };
        let end = pos.checked_add(buf.len() as u64).filter(|e| *e <= tree.len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "a read past the end of the image")
        })?;
        let chunk = u64::from(tree.chunk);
        let mut at = pos;
        while at < end {
            let i = at / chunk;
            let data = self.chunk(tree, i)?;
            let from = (at - i * chunk) as usize;
            let n = (data.len() - from).min((end - at) as usize);
            let o = (at - pos) as usize;
            buf[o..o + n].copy_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    fn chunk(&self, tree: &Tree, i: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some((_, d)) = self.recent.borrow().iter().find(|(k, _)| *k == i) {
            return Ok(d.clone());
        }
        let (start, len) = tree.chunk_span(i);
        let mut data = vec![0u8; len];
        self.file.read_exact_at(&mut data, start)?;
        if !tree.check(i, &data) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bytes {start} to {} of the image do not match the hash tree recorded at pull time: the image file was changed or is damaged", start + len as u64),
            ));
        }
        let data = Arc::new(data);
        let mut recent = self.recent.borrow_mut();
        if recent.len() == RECENT {
            recent.pop_back();
        }
        recent.push_front((i, data.clone()));
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn tree_of(data: &[u8], pieces: usize) -> Tree {
        let mut b = Builder::default();
        for p in data.chunks(pieces.max(1)) {
            b.update(p);
        }
        b.finish()
    }

    #[test]
    fn leaves_do_not_depend_on_how_the_bytes_arrive() {
        let data = bytes(3 * CHUNK as usize + 1000);
        let t = tree_of(&data, 1 << 20);
        assert_eq!(t.leaves.len(), 4);
        assert_eq!(t, tree_of(&data, 4097));
        assert_eq!(t, tree_of(&data, 1));
        assert_eq!(tree_of(&[], 1).leaves.len(), 0);
    }

    #[test]
    fn the_leaf_file_round_trips_only_with_its_root() {
        let t = tree_of(&bytes(200_000), 999);
        let enc = t.encode();
        let p = Path::new("x.verity");
        assert_eq!(Tree::decode(&enc, &t.root(), p).unwrap(), t);
        assert!(matches!(Tree::decode(&enc, &"0".repeat(64), p), Err(VerityError::Root { .. })));
        let mut cut = enc.clone();
        cut.truncate(enc.len() - 32);
        let root = hex(&Sha256::digest(&cut));
        let e = Tree::decode(&cut, &root, p).unwrap_err().to_string();
        assert!(e.contains("leaf count"), "{e}");
    }

    #[test]
    fn a_tree_for_another_length_is_refused_at_load() {
        let d = tempfile::tempdir().unwrap();
        let t = tree_of(&bytes(100_000), 4096);
        let file = d.path().join("image.verity");
        std::fs::write(&file, t.encode()).unwrap();
        let pinned = Pinned { file, root: t.root() };
        assert_eq!(Tree::load(&pinned, 100_000).unwrap(), t);
        assert!(matches!(Tree::load(&pinned, 100_001), Err(VerityError::Length { .. })));
    }

    fn file_with(data: &[u8]) -> (tempfile::TempDir, File) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, data).unwrap();
        (d, File::open(&p).unwrap())
    }

    #[test]
    fn reads_across_chunks_return_the_files_bytes() {
        let data = bytes(2 * CHUNK as usize + 5000);
        let (_d, f) = file_with(&data);
        let r = Reader::new(f, Some(Arc::new(tree_of(&data, 777)))).unwrap();
        for (pos, len) in [(0usize, 2usize), (CHUNK as usize - 3, 10), (5, 2 * CHUNK as usize), (data.len() - 1, 1), (100, 0)] {
            let mut buf = vec![0u8; len];
            r.read_exact_at(&mut buf, pos as u64).unwrap();
            assert_eq!(buf, data[pos..pos + len], "{pos} {len}");
        }
        let mut buf = [0u8; 2];
        assert!(r.read_exact_at(&mut buf, data.len() as u64 - 1).is_err(), "past the end");
    }

    #[test]
    fn a_changed_byte_fails_the_reads_of_its_chunk_only() {
        let data = bytes(3 * CHUNK as usize);
        let tree = Arc::new(tree_of(&data, 4096));
        let mut bad = data.clone();
        bad[CHUNK as usize + 17] ^= 1;
        let (_d, f) = file_with(&bad);
        let r = Reader::new(f, Some(tree.clone())).unwrap();
        let mut buf = vec![0u8; 100];
        r.read_exact_at(&mut buf, 0).unwrap();
        r.read_exact_at(&mut buf, 2 * u64::from(CHUNK)).unwrap();
        let e = r.read_exact_at(&mut buf, u64::from(CHUNK) + 50).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("do not match the hash tree"), "{e}");
        // A read that only starts before the bad chunk fails too.
        assert!(r.read_exact_at(&mut vec![0u8; 200], u64::from(CHUNK) - 100).is_err());
        // A file of another length is refused at once.
        let (_d2, short) = file_with(&data[..1000]);
        assert!(Reader::new(short, Some(tree)).is_err());
    }

    #[test]
    fn a_chunk_changed_after_it_was_checked_is_caught_once_it_leaves_the_recent_set() {
        let data = bytes((RECENT + 2) * CHUNK as usize);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, &data).unwrap();
        let r = Reader::new(File::open(&p).unwrap(), Some(Arc::new(tree_of(&data, 65536)))).unwrap();
        let mut buf = [0u8; 8];
        r.read_exact_at(&mut buf, 0).unwrap();
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"X", 3).unwrap();
        // Still the checked copy (the bytes served are the checked ones).
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data[..8]);
        for i in 1..=RECENT as u64 {
            r.read_exact_at(&mut buf, i * u64::from(CHUNK)).unwrap();
        }
        assert!(r.read_exact_at(&mut buf, 0).is_err());
    }
}
