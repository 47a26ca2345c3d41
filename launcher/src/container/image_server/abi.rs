//! The kernel's FUSE protocol, as much as a read-only server needs: the
//! request header, the opcodes, and the answers' layouts (linux/fuse.h,
//! protocol 7.31; all little-endian on the machines Shoal runs on, native
//! byte order in fact).

pub const FUSE_ROOT_ID: u64 = 1;
/// The protocol minor version answered (at most): 7.31 has every field
/// used here.
pub const FUSE_KERNEL_MINOR: u32 = 31;

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_READ: u32 = 15;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_BATCH_FORGET: u32 = 42;
pub const FUSE_READDIRPLUS: u32 = 44;

pub const FUSE_ASYNC_READ: u32 = 1 << 0;
pub const FUSE_DO_READDIRPLUS: u32 = 1 << 13;
pub const FUSE_READDIRPLUS_AUTO: u32 = 1 << 14;
pub const FUSE_NO_OPEN_SUPPORT: u32 = 1 << 17;
pub const FUSE_MAX_PAGES: u32 = 1 << 22;
pub const FUSE_CACHE_SYMLINKS: u32 = 1 << 23;
pub const FUSE_NO_OPENDIR_SUPPORT: u32 = 1 << 24;

/// Pages per request when FUSE_MAX_PAGES is granted (the kernel's limit).
const MAX_PAGES: u16 = 256;

/// `struct fuse_in_header` and what follows it.
pub struct Request<'a> {
    pub opcode: u32,
    pub unique: u64,
    pub node: u64,
    pub body: &'a [u8],
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

impl<'a> Request<'a> {
    /// The header is 40 bytes: len, opcode, unique, nodeid, uid, gid, pid,
    /// and padding.
    pub fn parse(b: &'a [u8]) -> Option<Request<'a>> {
        let len = u32_at(b, 0)? as usize;
        if len < 40 || len > b.len() {
            return None;
        }
        Some(Request { opcode: u32_at(b, 4)?, unique: u64_at(b, 8)?, node: u64_at(b, 16)?, body: &b[40..len] })
    }
}

/// `struct fuse_init_in`: major, minor, max_readahead, flags.
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
}

impl InitIn {
    pub fn parse(b: &[u8]) -> Option<InitIn> {
        Some(InitIn { major: u32_at(b, 0)?, minor: u32_at(b, 4)?, max_readahead: u32_at(b, 8)?, flags: u32_at(b, 12)? })
    }
}

/// `struct fuse_read_in` (READ and READDIR): offset and size.
pub fn read_in(b: &[u8]) -> Option<(u64, u32)> {
    Some((u64_at(b, 8)?, u32_at(b, 16)?))
}

/// `struct fuse_out_header`: len, error (a negative errno), unique.
pub fn out_header(unique: u64, error: i32, body: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((16 + body) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_init_out` (64 bytes).
pub fn init_out(out: &mut Vec<u8>, minor: u32, max_readahead: u32, flags: u32) {
    put32(out, 7);
    put32(out, minor);
    put32(out, max_readahead);
    put32(out, flags);
    out.extend_from_slice(&0u16.to_ne_bytes()); // max_background: default
    out.extend_from_slice(&0u16.to_ne_bytes()); // congestion_threshold
    put32(out, 4096); // max_write: nothing is written
    put32(out, 1); // time_gran: nanoseconds
    out.extend_from_slice(&MAX_PAGES.to_ne_bytes());
    out.resize(64, 0);
}

/// The attributes of one inode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub mtime: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// `struct fuse_attr` (88 bytes): atime, mtime and ctime are all the image's mtime.
fn attr(out: &mut Vec<u8>, a: &Attr) {
    put64(out, a.ino);
    put64(out, a.size);
    put64(out, a.blocks);
    for _ in 0..3 {
        put64(out, a.mtime);
    }
    for _ in 0..3 {
        put32(out, 0);
    }
    put32(out, a.mode);
    put32(out, a.nlink);
    put32(out, a.uid);
    put32(out, a.gid);
    put32(out, a.rdev);
    put32(out, a.blksize);
    put32(out, 0); // flags
}

/// `struct fuse_entry_out` (128 bytes); node 0 is a negative entry.
pub fn entry_out(out: &mut Vec<u8>, node: u64, valid_secs: u64, a: &Attr) {
    put64(out, node);
    put64(out, 0); // generation
    put64(out, valid_secs); // entry_valid
    put64(out, valid_secs); // attr_valid
    put32(out, 0);
    put32(out, 0);
    attr(out, a);
}

/// `struct fuse_attr_out` (104 bytes).
pub fn attr_out(out: &mut Vec<u8>, valid_secs: u64, a: &Attr) {
    put64(out, valid_secs);
    put32(out, 0);
    put32(out, 0);
    attr(out, a);
}

/// `struct fuse_statfs_out` (80 bytes): a full, read-only file system.
pub fn statfs_out(out: &mut Vec<u8>, bytes: u64, block_size: u32, inodes: u32) {
    put64(out, bytes.div_ceil(u64::from(block_size)));
    put64(out, 0);
    put64(out, 0);
    put64(out, u64::from(inodes));
    put64(out, 0);
    put32(out, block_size);
    put32(out, 255); // namelen
    put32(out, block_size); // frsize
    out.resize(out.len() + 4 + 24, 0); // padding, spare
}

/// Appends one `struct fuse_dirent` (padded to 8 bytes) if it fits in
/// `limit` bytes in all; returns whether it did.
pub fn dirent(out: &mut Vec<u8>, limit: usize, ino: u64, next: u64, dtype: u8, name: &[u8]) -> bool {
    let len = (24 + name.len()).next_multiple_of(8);
    if out.len() + len > limit {
        return false;
    }
    put64(out, ino);
    put64(out, next);
    put32(out, name.len() as u32);
    put32(out, u32::from(dtype));
    out.extend_from_slice(name);
    out.resize(out.len() + (len - 24 - name.len()), 0);
    true
}

/// Appends one `struct fuse_direntplus` (the entry's `fuse_entry_out`,
/// then its `fuse_dirent`, padded to 8 bytes) if it fits in `limit` bytes
/// in all; returns whether it did. Node 0 (for `.` and `..`): no entry is
/// made for it.
pub fn direntplus(out: &mut Vec<u8>, limit: usize, entry: (u64, u64, &Attr), next: u64, dtype: u8, name: &[u8]) -> bool {
    let len = 128 + (24 + name.len()).next_multiple_of(8);
    if out.len() + len > limit {
        return false;
    }
    let (node, valid_secs, a) = entry;
    entry_out(out, node, valid_secs, a);
    let fits = dirent(out, usize::MAX, a.ino, next, dtype, name);
    debug_assert!(fits);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_kernels_sizes() {
        let mut v = Vec::new();
        init_out(&mut v, 31, 131072, FUSE_ASYNC_READ);
        assert_eq!(v.len(), 64);
        v.clear();
        entry_out(&mut v, 5, 1, &Attr::default());
        assert_eq!(v.len(), 128);
        v.clear();
        attr_out(&mut v, 1, &Attr::default());
        assert_eq!(v.len(), 104);
        v.clear();
        statfs_out(&mut v, 1 << 20, 4096, 10);
        assert_eq!(v.len(), 80);
        v.clear();
        assert!(dirent(&mut v, 4096, 1, 1, 4, b"abc"));
        assert_eq!(v.len(), 32);
        assert!(!dirent(&mut v, 40, 1, 2, 4, b"abcdefghijk"));
        assert_eq!(v.len(), 32);
        v.clear();
        let a = Attr { ino: 9, ..Attr::default() };
        assert!(direntplus(&mut v, 4096, (5, 1, &a), 3, 8, b"abc"));
        assert_eq!(v.len(), 160);
        assert_eq!(u64::from_ne_bytes(v[0..8].try_into().unwrap()), 5, "the entry's node first");
        assert_eq!(u64::from_ne_bytes(v[128..136].try_into().unwrap()), 9, "then the dirent's ino");
        assert!(!direntplus(&mut v, 300, (5, 1, &a), 4, 8, b"abc"));
        assert_eq!(v.len(), 160);
    }

    #[test]
    fn requests_are_parsed_within_their_length() {
        let mut b = vec![0u8; 48];
        b[0..4].copy_from_slice(&44u32.to_ne_bytes());
        b[4..8].copy_from_slice(&FUSE_LOOKUP.to_ne_bytes());
        b[8..16].copy_from_slice(&7u64.to_ne_bytes());
        b[16..24].copy_from_slice(&1u64.to_ne_bytes());
        b[40..44].copy_from_slice(b"bin\0");
        let r = Request::parse(&b).unwrap();
        assert_eq!((r.opcode, r.unique, r.node, r.body), (FUSE_LOOKUP, 7, 1, &b"bin\0"[..]));
        b[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert!(Request::parse(&b).is_none());
        assert!(Request::parse(&b[..20]).is_none());
    }
}
