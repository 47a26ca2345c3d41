//! Reads a squashfs 4.0 image for the image server: inodes, directories,
//! symlinks and file contents, straight from the file, each piece
//! decompressed once and kept in bounded caches.
//!
//! Why not squashfuse's parser: it keeps one decompressed data block and
//! three fragment blocks, so a program start (ld.so and libc read in
//! interleaved, unaligned pieces) decompresses the same 128 KiB blocks again
//! and again; here every block a container touches is decompressed once.
//! And the image is untrusted input: this parser is memory-safe Rust.
//!
//! Must never: panic or loop on a crafted image (every offset and size is
//! checked, every error is [`Error::Corrupt`], which the server answers with
//! EIO), or allocate more than the caches' bounds plus one block per read.

use std::collections::HashMap;
use std::fs::File;
use std::rc::Rc;

pub use super::cache::{BlockCache, Cache};
use std::sync::Arc;

use crate::image::superblock::{self, ABSENT};
use crate::image::verity::Reader;

const METADATA_SIZE: usize = 8192;
/// Bit 15 of a metadata block header, bit 24 of a data block size: stored
/// without compression.
const META_UNCOMPRESSED: u16 = 0x8000;
const DATA_UNCOMPRESSED: u32 = 1 << 24;
const NO_FRAGMENT: u32 = 0xffff_ffff;
const FLAG_NO_XATTRS: u16 = 0x0200;

/// Decompressed data and fragment blocks kept (bytes): a program start
/// touches a few MiB; a Python start with NumPy some tens.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Decompressed metadata blocks kept (8 KiB each).
const METADATA_CACHE_BLOCKS: usize = 4096;
/// Parsed directories kept, counted in entries.
const DIR_CACHE_ENTRIES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("squashfs image: {0}")]
    Corrupt(String),
    #[error("squashfs image: {0} is not supported by the built-in server")]
    Unsupported(String),
    #[error("squashfs image: {0}")]
    Io(#[from] std::io::Error),
}

fn corrupt<T>(what: impl Into<String>) -> Result<T, Error> {
    Err(Error::Corrupt(what.into()))
}

pub(super) fn le16(b: &[u8], o: usize) -> Result<u16, Error> {
    b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| Error::Corrupt("short record".into()))
}
pub(super) fn le32(b: &[u8], o: usize) -> Result<u32, Error> {
    b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4"))).ok_or_else(|| Error::Corrupt("short record".into()))
}
pub(super) fn le64(b: &[u8], o: usize) -> Result<u64, Error> {
    b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8"))).ok_or_else(|| Error::Corrupt("short record".into()))
}

/// The compressors the built-in server decompresses: what Shoal writes
/// (zstd) and what other tools default to (gzip, lz4). xz, lzma and lzo
/// images are served by squashfuse_ll instead.
enum Codec {
    Gzip(flate2::Decompress),
    Zstd(zstd::bulk::Decompressor<'static>),
    Lz4,
}

impl Codec {
    fn new(id: u16) -> Result<Codec, Error> {
        Ok(match id {
            1 => Codec::Gzip(flate2::Decompress::new(true)),
            5 => Codec::Lz4,
            6 => Codec::Zstd(zstd::bulk::Decompressor::new()?),
            2 => return Err(Error::Unsupported("lzma compression".into())),
            3 => return Err(Error::Unsupported("lzo compression".into())),
            4 => return Err(Error::Unsupported("xz compression".into())),
            n => return corrupt(format!("unknown compressor id {n}")),
        })
    }

    /// Decompresses `src` into `dst` (its length is the most expected);
    /// returns the length produced.
    fn decompress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, Error> {
        let bad = |e: String| Error::Corrupt(format!("a block does not decompress ({e})"));
        match self {
            Codec::Gzip(z) => {
                z.reset(true);
                match z.decompress(src, dst, flate2::FlushDecompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => Ok(z.total_out() as usize),
                    Ok(_) => Err(bad("more data than a block".into())),
                    Err(e) => Err(bad(e.to_string())),
                }
            }
            Codec::Zstd(z) => z.decompress_to_buffer(src, dst).map_err(|e| bad(e.to_string())),
            Codec::Lz4 => lz4_flex::block::decompress_into(src, dst).map_err(|e| bad(e.to_string())),
        }
    }
}

/// What kind of inode, with what its kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir { start_block: u32, offset: u16, size: u32, parent: u32 },
    File(FileInode),
    Symlink(Vec<u8>),
    BlockDev(u32),
    CharDev(u32),
    Fifo,
    Socket,
}

/// A regular file as its inode describes it; its block list is read by
/// [`Archive::layout`] only when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInode {
    pub size: u64,
    blocks_start: u64,
    /// Where the block size list is: metadata block, offset, count.
    list: (u64, usize, usize),
    fragment: Option<(u32, u32)>,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    pub size: u64,
    /// Position in the image of each block, and its on-disk size word.
    blocks: Vec<(u64, u32)>,
    fragment: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub number: u32,
    /// Permission bits only; the type is `kind`.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub nlink: u32,
    pub kind: Kind,
}

impl Inode {
    /// `st_mode` with the file type.
    pub fn st_mode(&self) -> u32 {
        let t = match self.kind {
            Kind::Dir { .. } => libc::S_IFDIR,
            Kind::File(_) => libc::S_IFREG,
            Kind::Symlink(_) => libc::S_IFLNK,
            Kind::BlockDev(_) => libc::S_IFBLK,
            Kind::CharDev(_) => libc::S_IFCHR,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        };
        t | u32::from(self.mode & 0o7777)
    }

    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::Dir { size, .. } => u64::from(*size),
            Kind::File(f) => f.size,
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }

    pub fn rdev(&self) -> u32 {
        match self.kind {
            Kind::BlockDev(d) | Kind::CharDev(d) => d,
            _ => 0,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    /// Where the inode is (see [`Archive::inode`]).
    pub inode_ref: u64,
    pub number: u32,
    /// The `d_type` (DT_*) of the entry.
    pub dtype: u8,
}

/// A decompressed metadata block and the position of the next one.
struct Meta {
    data: Vec<u8>,
    next: u64,
}

/// What two archives of one image share.
struct Caches {
    blocks: BlockCache,
    meta: Cache<Meta>,
}

/// An image to open in another thread ([`Archive::share`]).
pub struct Shared {
    file: Reader,
    caches: Arc<Caches>,
}

impl Shared {
    pub fn open(self) -> Result<Archive, Error> {
        Archive::open_with(self.file, Some(self.caches))
    }
}

/// An open squashfs image.
pub struct Archive {
    /// Every byte of the image is read through it (checked against the
    /// image's hash tree when it has one).
    file: Reader,
    bytes_used: u64,
    block_size: u32,
    inode_table: u64,
    dir_table: u64,
    fragment_table: u64,
    fragments: u32,
    inodes: u32,
    root: u64,
    ids: Vec<u32>,
    codec: Codec,
    caches: Arc<Caches>,
    dirs: HashMap<u64, Rc<Vec<Entry>>>,
    dir_entries: usize,
    fragment_entries: HashMap<u32, (u64, u32)>,
}

impl Archive {
    /// Reads the superblock and the id table; refuses what the server
    /// cannot serve faithfully ([`Error::Unsupported`]: another server
    /// should take the image).
    pub fn open(file: File) -> Result<Archive, Error> {
        Archive::open_with(Reader::new(file, None)?, None)
    }

    /// The same, every byte checked against the image's hash tree as it
    /// is read (`node.staging = "in-place"`).
    pub fn open_verified(file: File, tree: crate::image::verity::Tree) -> Result<Archive, Error> {
        Archive::open_with(Reader::new(file, Some(Arc::new(tree)))?, None)
    }

    /// The image again, for another thread: an [`Archive`] opened from it
    /// has caches of its own but shares this one's decompressed blocks.
    pub fn share(&self) -> Result<Shared, Error> {
        Ok(Shared { file: self.file.try_clone()?, caches: self.caches.clone() })
    }

    /// The decompressed data blocks.
    #[cfg(test)]
    pub fn blocks(&self) -> &BlockCache {
        &self.caches.blocks
    }

    fn open_with(file: Reader, caches: Option<Arc<Caches>>) -> Result<Archive, Error> {
        let mut raw = [0u8; superblock::SIZE];
        file.read_exact_at(&mut raw, 0)?;
        let Ok(sb) = superblock::read(&raw) else {
            return corrupt("no squashfs magic");
        };
        if (sb.major, sb.minor) != (4, 0) {
            return Err(Error::Unsupported("a squashfs version other than 4.0".into()));
        }
        let block_size = sb.block_size;
        if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
            return corrupt(format!("bad block size {block_size}"));
        }
        let len = file.len()?;
        let bytes_used = sb.bytes_used;
        if bytes_used > len {
            return corrupt("truncated file");
        }
        if sb.flags & FLAG_NO_XATTRS == 0 && sb.xattr_table != ABSENT {
            // The xattr id table starts with (table start, count).
            let mut head = [0u8; 16];
            file.read_exact_at(&mut head, sb.xattr_table)?;
            if le32(&head, 8)? != 0 {
                return Err(Error::Unsupported("extended attributes".into()));
            }
        }
        let mut a = Archive {
            codec: Codec::new(sb.compressor)?,
            file,
            bytes_used,
            block_size,
            inode_table: sb.inode_table,
            dir_table: sb.directory_table,
            fragment_table: sb.fragment_table,
            fragments: sb.fragments,
            inodes: sb.inodes,
            root: sb.root_inode,
            ids: Vec::new(),
            caches: caches.unwrap_or_else(|| {
                Arc::new(Caches {
                    blocks: Cache::new((BLOCK_CACHE_BYTES / block_size as usize).max(8)),
                    meta: Cache::new(METADATA_CACHE_BLOCKS),
                })
            }),
            dirs: HashMap::new(),
            dir_entries: 0,
            fragment_entries: HashMap::new(),
        };
        let id_count = sb.id_count as usize;
        a.ids = a.read_table(sb.id_table, id_count, 4)?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect();
        Ok(a)
    }

    /// The root directory's inode reference.
    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>, Error> {
        if pos.checked_add(len as u64).is_none_or(|end| end > self.bytes_used) {
            return corrupt(format!("a read of {len} bytes at {pos} goes past the image's end"));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// The metadata block at `pos`, decompressed.
    fn meta_block(&mut self, pos: u64) -> Result<Arc<Meta>, Error> {
        let caches = self.caches.clone();
        caches.meta.get_or_load(pos, || {
            let head = self.read_at(pos, 2)?;
            let word = u16::from_le_bytes([head[0], head[1]]);
            let size = usize::from(word & !META_UNCOMPRESSED);
            if size == 0 || size > METADATA_SIZE {
                return corrupt(format!("metadata block at {pos} has size {size}"));
            }
            let raw = self.read_at(pos + 2, size)?;
            let data = if word & META_UNCOMPRESSED != 0 {
                raw
            } else {
                let mut out = vec![0u8; METADATA_SIZE];
                let n = self.codec.decompress(&raw, &mut out)?;
                out.truncate(n);
                out
            };
            Ok(Meta { data, next: pos + 2 + size as u64 })
        })
    }

    /// `len` bytes of metadata starting at `offset` in the block at `pos`,
    /// following on into the next blocks.
    fn meta_bytes(&mut self, mut pos: u64, offset: usize, len: usize) -> Result<(Vec<u8>, u64, usize), Error> {
        // `len` comes from the image (a directory may claim 4 GiB): grow
        // with the blocks actually there.
        let mut out = Vec::with_capacity(len.min(METADATA_SIZE));
        let mut off = offset;
        loop {
            let m = self.meta_block(pos)?;
            if off > m.data.len() {
                return corrupt("metadata offset past its block");
            }
            let take = (len - out.len()).min(m.data.len() - off);
            out.extend_from_slice(&m.data[off..off + take]);
            off += take;
            if out.len() == len {
                return Ok((out, pos, off));
            }
            pos = m.next;
            off = 0;
        }
    }

    /// A table of `count` fixed-size records stored in metadata blocks whose
    /// positions are listed at `start` (the id and fragment tables).
    fn read_table(&mut self, start: u64, count: usize, record: usize) -> Result<Vec<u8>, Error> {
        let bytes = count * record;
        let blocks = bytes.div_ceil(METADATA_SIZE);
        let index = self.read_at(start, blocks * 8)?;
        let mut out = Vec::with_capacity(bytes);
        for i in 0..blocks {
            let pos = le64(&index, i * 8)?;
            let want = (bytes - out.len()).min(METADATA_SIZE);
            let (b, _, _) = self.meta_bytes(pos, 0, want)?;
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn id(&self, index: u16) -> Result<u32, Error> {
        self.ids.get(usize::from(index)).copied().ok_or_else(|| Error::Corrupt(format!("id index {index} out of range")))
    }

    /// The inode at reference `r` (metadata block position relative to
    /// the inode table, shifted left 16, plus the offset in that block).
    pub fn inode(&mut self, r: u64) -> Result<Inode, Error> {
        let pos = self.inode_table.checked_add(r >> 16).ok_or_else(|| Error::Corrupt("inode reference".into()))?;
        let off = (r & 0xffff) as usize;
        let (h, pos, off) = self.meta_bytes(pos, off, 16)?;
        let kind = le16(&h, 0)?;
        let (mode, uid, gid, mtime, number) = (le16(&h, 2)?, self.id(le16(&h, 4)?)?, self.id(le16(&h, 6)?)?, le32(&h, 8)?, le32(&h, 12)?);
        // The type-specific part after the common header.
        let mut rest = |n: usize| self.meta_bytes(pos, off, n).map(|(b, _, _)| b);
        let (nlink, kind) = match kind {
            1 => {
                let b = rest(16)?;
                (le32(&b, 4)?, Kind::Dir { start_block: le32(&b, 0)?, size: u32::from(le16(&b, 8)?), offset: le16(&b, 10)?, parent: le32(&b, 12)? })
            }
            8 => {
                let b = rest(24)?;
                (le32(&b, 0)?, Kind::Dir { size: le32(&b, 4)?, start_block: le32(&b, 8)?, parent: le32(&b, 12)?, offset: le16(&b, 18)? })
            }
            2 | 9 => {
                let (head, blocks_start, size, frag, frag_off, nlink) = if kind == 2 {
                    let b = rest(16)?;
                    (16, u64::from(le32(&b, 0)?), u64::from(le32(&b, 12)?), le32(&b, 4)?, le32(&b, 8)?, 1)
                } else {
                    let b = rest(40)?;
                    (40, le64(&b, 0)?, le64(&b, 8)?, le32(&b, 28)?, le32(&b, 32)?, le32(&b, 24)?)
                };
                let bs = u64::from(self.block_size);
                let count = if frag == NO_FRAGMENT { size.div_ceil(bs) } else { size / bs };
                // Each block has a 4-byte size word in the image: a count
                // larger than the image can hold is a crafted inode.
                if count > self.bytes_used / 4 {
                    return corrupt("file inode with more blocks than the image holds");
                }
                // The list follows the inode's fixed part.
                let (_, list_pos, list_off) = self.meta_bytes(pos, off, head)?;
                let fragment = (frag != NO_FRAGMENT).then_some((frag, frag_off));
                (nlink, Kind::File(FileInode { size, blocks_start, list: (list_pos, list_off, count as usize), fragment }))
            }
            3 | 10 => {
                let b = rest(8)?;
                let len = le32(&b, 4)? as usize;
                if len > 65536 {
                    return corrupt("symlink target longer than 64 KiB");
                }
                let (t, _, _) = self.meta_bytes(pos, off, 8 + len)?;
                (le32(&b, 0)?, Kind::Symlink(t[8..].to_vec()))
            }
            4 | 5 | 11 | 12 => {
                let b = rest(8)?;
                let dev = le32(&b, 4)?;
                (le32(&b, 0)?, if kind % 7 == 4 { Kind::BlockDev(dev) } else { Kind::CharDev(dev) })
            }
            6 | 7 | 13 | 14 => {
                let b = rest(4)?;
                (le32(&b, 0)?, if kind % 7 == 6 { Kind::Fifo } else { Kind::Socket })
            }
            n => return corrupt(format!("unknown inode type {n}")),
        };
        Ok(Inode { number, mode, uid, gid, mtime, nlink, kind })
    }

    /// The entries of a directory inode, sorted by name as squashfs stores
    /// them (without `.` and `..`).
    pub fn dir(&mut self, dir_ref: u64, inode: &Inode) -> Result<Rc<Vec<Entry>>, Error> {
        if let Some(d) = self.dirs.get(&dir_ref) {
            return Ok(d.clone());
        }
        let Kind::Dir { start_block, offset, size, .. } = inode.kind else {
            return corrupt("not a directory");
        };
        // The size counts 3 bytes for `.` and `..`, which are not stored.
        let len = (size as usize).saturating_sub(3);
        let mut entries = Vec::new();
        if len > 0 {
            let pos = self.dir_table.checked_add(u64::from(start_block)).ok_or_else(|| Error::Corrupt("directory position".into()))?;
            let (b, _, _) = self.meta_bytes(pos, usize::from(offset), len)?;
            let mut i = 0;
            while i + 12 <= b.len() {
                let count = le32(&b, i)? as usize + 1;
                let start = u64::from(le32(&b, i + 4)?);
                let base = le32(&b, i + 8)?;
                i += 12;
                if count > 256 {
                    return corrupt("directory header with more than 256 entries");
                }
                for _ in 0..count {
                    let offset = u64::from(le16(&b, i)?);
                    let delta = le16(&b, i + 2)? as i16;
                    let kind = le16(&b, i + 4)?;
                    let name_len = usize::from(le16(&b, i + 6)?) + 1;
                    let name = b.get(i + 8..i + 8 + name_len).ok_or_else(|| Error::Corrupt("directory entry past its listing".into()))?;
                    if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                        return corrupt("directory entry with an impossible name");
                    }
                    i += 8 + name_len;
                    let dtype = match kind {
                        1 | 8 => libc::DT_DIR,
                        2 | 9 => libc::DT_REG,
                        3 | 10 => libc::DT_LNK,
                        4 | 11 => libc::DT_BLK,
                        5 | 12 => libc::DT_CHR,
                        6 | 13 => libc::DT_FIFO,
                        7 | 14 => libc::DT_SOCK,
                        n => return corrupt(format!("directory entry of unknown type {n}")),
                    };
                    entries.push(Entry {
                        name: name.to_vec(),
                        inode_ref: (start << 16) | offset,
                        number: base.wrapping_add_signed(i32::from(delta)),
                        dtype,
                    });
                }
            }
        }
        // Stored sorted; a crafted image may not be, and lookups bisect.
        if !entries.windows(2).all(|w| w[0].name < w[1].name) {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
        }
        let d = Rc::new(entries);
        if self.dir_entries + d.len() > DIR_CACHE_ENTRIES {
            self.dirs.clear();
            self.dir_entries = 0;
        }
        self.dir_entries += d.len();
        self.dirs.insert(dir_ref, d.clone());
        Ok(d)
    }

    /// The entry `name` in a directory.
    pub fn lookup(&mut self, dir_ref: u64, inode: &Inode, name: &[u8]) -> Result<Option<Entry>, Error> {
        let d = self.dir(dir_ref, inode)?;
        Ok(d.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| d[i].clone()))
    }

    /// A data or fragment block, decompressed, through the cache. `word`
    /// is its on-disk size word; `full` the size it decompresses to at most.
    fn block(&mut self, pos: u64, word: u32, full: usize) -> Result<Arc<Vec<u8>>, Error> {
        let size = (word & !DATA_UNCOMPRESSED) as usize;
        if size > self.block_size as usize {
            return corrupt(format!("block at {pos} larger than the block size"));
        }
        let caches = self.caches.clone();
        caches.blocks.get_or_load(pos, || {
            let raw = self.read_at(pos, size)?;
            if word & DATA_UNCOMPRESSED != 0 {
                return Ok(raw);
            }
            let mut out = vec![0u8; full];
            let n = self.codec.decompress(&raw, &mut out)?;
            out.truncate(n);
            Ok(out)
        })
    }

    /// Fragment `index`'s block position and size word.
    fn fragment(&mut self, index: u32) -> Result<(u64, u32), Error> {
        if index >= self.fragments {
            return corrupt(format!("fragment {index} out of range"));
        }
        if let Some(f) = self.fragment_entries.get(&index) {
            return Ok(*f);
        }
        // 512 entries of 16 bytes per metadata block.
        let block = u64::from(index / 512);
        let at = self.fragment_table.checked_add(block * 8).ok_or_else(|| Error::Corrupt("fragment table position".into()))?;
        let ptr = self.read_at(at, 8)?;
        let pos = le64(&ptr, 0)?;
        let (e, _, _) = self.meta_bytes(pos, (index % 512) as usize * 16, 16)?;
        let f = (le64(&e, 0)?, le32(&e, 8)?);
        self.fragment_entries.insert(index, f);
        Ok(f)
    }

    /// Reads a file's block list: where each block is.
    pub fn layout(&mut self, f: &FileInode) -> Result<FileLayout, Error> {
        let (pos, off, count) = f.list;
        let (b, _, _) = self.meta_bytes(pos, off, count * 4)?;
        let mut disk = f.blocks_start;
        let mut blocks = Vec::with_capacity(count);
        for c in b.chunks_exact(4) {
            let w = u32::from_le_bytes(c.try_into().expect("4"));
            blocks.push((disk, w));
            disk = disk.checked_add(u64::from(w & !DATA_UNCOMPRESSED)).ok_or_else(|| Error::Corrupt("block list overflows".into()))?;
        }
        Ok(FileLayout { size: f.size, blocks, fragment: f.fragment })
    }

    /// Appends up to `len` bytes of a file from `offset` to `out`.
    pub fn read(&mut self, f: &FileLayout, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let bs = u64::from(self.block_size);
        let end = f.size.min(offset.saturating_add(len as u64));
        let mut pos = offset;
        let mut k = (pos / bs) as usize;
        while pos < end {
            let in_block = (pos % bs) as usize;
            let block_len = (f.size - (k as u64) * bs).min(bs) as usize;
            let want = ((end - pos) as usize).min(block_len - in_block);
            match f.blocks.get(k) {
                // A sparse block: zeros.
                Some((_, 0)) => out.resize(out.len() + want, 0),
                Some(&(disk, w)) => {
                    let b = self.block(disk, w, bs as usize)?;
                    let s = b.get(in_block..in_block + want).ok_or_else(|| Error::Corrupt("data block shorter than its file says".into()))?;
                    out.extend_from_slice(s);
                }
                None => {
                    let Some((index, frag_off)) = f.fragment else {
                        return corrupt("file shorter than its size");
                    };
                    let (fpos, w) = self.fragment(index)?;
                    let b = self.block(fpos, w, bs as usize)?;
                    let start = frag_off as usize + in_block;
                    let s = b.get(start..start + want).ok_or_else(|| Error::Corrupt("fragment shorter than its file says".into()))?;
                    out.extend_from_slice(s);
                }
            }
            pos += want as u64;
            k += 1;
        }
        Ok(())
    }

    /// What `statfs` reports: bytes used and the inode count.
    pub fn usage(&self) -> (u64, u32) {
        (self.bytes_used, self.inodes)
    }
}

