//! The squashfs reader against real images made by `mksquashfs`
//! (squashfs-tools): every supported compressor and table layout read back
//! byte for byte against the source tree, the refusals the server relies on
//! to hand an image to squashfuse_ll, and mutated images that must give
//! errors, never a panic or a hang. Then read-ahead: the files a real
//! program's start loads, found as ld.so finds them, and blocks shared
//! between threads.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::readahead::{self, Hints};
use super::squashfs::{Archive, Error, FileLayout, Inode, Kind};

fn have_mksquashfs() -> bool {
    Command::new("mksquashfs").arg("-version").output().is_ok_and(|o| o.status.success())
}

macro_rules! require_mksquashfs {
    () => {
        if !have_mksquashfs() {
            eprintln!("skipped: mksquashfs (squashfs-tools) is not installed");
            return;
        }
    };
}

/// Deterministic pseudo-random numbers (splitmix64): the same tree and the
/// same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Incompressible bytes: mksquashfs stores their blocks uncompressed.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
    }

    /// Compressible but irregular bytes: their blocks are stored compressed.
    fn text(&mut self, n: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcdefgh \n";
        (0..n).map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize]).collect()
    }
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Devices made by `mksquashfs -p` (no privilege needed): path, kind
/// letter, mode, major, minor.
const DEVICES: &[(&str, &str, u32, u32, u32)] = &[("dev/null", "c", 0o666, 1, 3), ("dev/sda1", "b", 0o640, 8, 1), ("dev/big", "c", 0o600, 259, 300)];

/// Linux's `new_encode_dev`: how squashfs (and FUSE) store a device number.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The tree every fidelity image is made from.
fn build_tree(root: &Path) {
    let mut rng = Rng(0x5eed);
    fs::create_dir(root).expect("tree root");
    write(&root.join("empty"), b"");
    write(&root.join("one"), b"x");
    // Around both block sizes used, compressible so the blocks are stored
    // compressed.
    for n in [4095, 4096, 4097, 8191, 8193, 131071, 131072, 131073] {
        write(&root.join(format!("text{n}")), &rng.text(n));
    }
    write(&root.join("random600k"), &rng.bytes(600 << 10));
    write(&root.join("text600k"), &rng.text(600 << 10 | 123));
    // All zeros: every block stored sparse.
    File::create(root.join("zeros")).expect("zeros").set_len(600 << 10).expect("set_len");
    // Zero blocks between data blocks, for both block sizes.
    let mut holes = rng.text(128 << 10);
    holes.resize(384 << 10, 0);
    holes.extend(rng.text(100_000));
    write(&root.join("holes"), &holes);

    symlink("one", root.join("rel-link")).expect("symlink");
    symlink("/etc/passwd", root.join("abs-link")).expect("symlink");
    let long: String = (0..30).map(|i| format!("dir{i:06}/")).collect();
    symlink(&long, root.join("long-link")).expect("symlink");
    symlink("x".repeat(4000), root.join("longest-link")).expect("symlink");

    fs::create_dir(root.join("sub")).expect("sub");
    write(&root.join("hard1"), &rng.text(5000));
    fs::hard_link(root.join("hard1"), root.join("sub/hard2")).expect("hard link");

    // Names whose byte order differs from any locale's order.
    for name in [&b"B"[..], b"a", b"_x", b"a.b", b"aa", b"a0", b"Zeta", "\u{e9}t\u{e9}".as_bytes(), b"\xff-raw"] {
        write(&root.join(OsStr::from_bytes(name)), name);
    }

    // More than 256 entries (several directory headers) and a listing
    // larger than a metadata block (an extended directory inode).
    let big = root.join("bigdir");
    fs::create_dir(&big).expect("bigdir");
    for i in 0..600 {
        let name = format!("{}-{:04}-{}", if i % 3 == 0 { "Entry" } else { "entry" }, (i * 7919) % 600, "n".repeat(i % 40));
        let p = big.join(name);
        if i % 50 == 0 {
            fs::create_dir(&p).expect("bigdir subdir");
        } else if i % 7 == 0 {
            symlink("../one", &p).expect("symlink");
        } else {
            write(&p, &rng.text(i * 3));
        }
    }

    let deep = root.join("nest/b/c/d/e");
    fs::create_dir_all(&deep).expect("nested");
    write(&deep.join("deep.txt"), b"deep\n");
    fs::create_dir(root.join("emptydir")).expect("emptydir");

    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).expect("mkfifo");
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket"));
    fs::create_dir(root.join("dev")).expect("dev");

    for (path, mode) in [("private", 0o700), ("sticky", 0o1777), ("setgid", 0o2755)] {
        fs::create_dir(root.join(path)).expect("mode dir");
        chmod(&root.join(path), mode);
    }
    for (path, mode) in [("setuid", 0o4755), ("readonly", 0o444), ("owneronly", 0o600)] {
        write(&root.join(path), path.as_bytes());
        chmod(&root.join(path), mode);
    }
}

/// Makes `image` from `src` with extra mksquashfs options; mksquashfs's
/// message when it refuses them.
fn mksquashfs(src: &Path, image: &Path, opts: &[&str]) -> Result<(), String> {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(image)
        .args(["-noappend", "-quiet", "-no-progress", "-processors", "1"])
        .args(opts)
        .output()
        .expect("running mksquashfs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn open(image: &Path) -> Result<Archive, Error> {
    Archive::open(File::open(image).expect("image"))
}

fn read_all(a: &mut Archive, l: &FileLayout) -> Vec<u8> {
    let mut out = Vec::new();
    a.read(l, 0, usize::MAX, &mut out).expect("read whole file");
    out
}

/// Walks an image and its source tree side by side.
struct Check<'a> {
    a: &'a mut Archive,
    owner: (u32, u32),
    /// Source (device, inode) to image inode number: hard links agree.
    links: HashMap<(u64, u64), u32>,
    /// Image inode number to its source: distinct files stay distinct.
    numbers: HashMap<u32, (u64, u64)>,
    files: usize,
}

impl Check<'_> {
    fn dir(&mut self, dir_ref: u64, dir: &Inode, src: &Path, rel: &str) {
        let entries = self.a.dir(dir_ref, dir).unwrap_or_else(|e| panic!("listing /{rel}: {e}"));
        let mut want: Vec<Vec<u8>> = fs::read_dir(src).expect("read_dir").map(|e| e.expect("dirent").file_name().as_bytes().to_vec()).collect();
        if rel == "dev" {
            want.extend(DEVICES.iter().map(|d| d.0.as_bytes()["dev/".len()..].to_vec()));
        }
        want.sort();
        let got: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(got, want, "listing of /{rel}");

        for e in entries.iter() {
            let found = self.a.lookup(dir_ref, dir, &e.name).expect("lookup");
            assert_eq!(found.as_ref(), Some(e), "lookup of {:?} in /{rel}", OsStr::from_bytes(&e.name));
            let name = OsStr::from_bytes(&e.name);
            let rel = if rel.is_empty() { name.to_string_lossy().into_owned() } else { format!("{rel}/{}", name.to_string_lossy()) };
            let inode = self.a.inode(e.inode_ref).unwrap_or_else(|err| panic!("inode of /{rel}: {err}"));
            assert_eq!(inode.number, e.number, "/{rel}: entry and inode numbers");
            assert_eq!(u32::from(e.dtype), dtype(&inode.kind), "/{rel}: d_type");
            assert_eq!((inode.uid, inode.gid), self.owner, "/{rel}: owner");
            if let Some(&(_, kind, mode, major, minor)) = DEVICES.iter().find(|d| d.0 == rel) {
                let dev = encode_dev(major, minor);
                let want = if kind == "c" { Kind::CharDev(dev) } else { Kind::BlockDev(dev) };
                assert_eq!(inode.kind, want, "/{rel}");
                assert_eq!(u32::from(inode.mode) & 0o7777, mode, "/{rel}: mode");
                assert_eq!(inode.rdev(), dev, "/{rel}: rdev");
                continue;
            }
            self.entry(&src.join(name), &rel, e.inode_ref, &inode, dir.number);
        }
        for missing in [&b"missing"[..], b"", b"\xff\xff\xff", b"a.", b"entry-", b"one\0"] {
            assert_eq!(self.a.lookup(dir_ref, dir, missing).expect("lookup"), None, "lookup of {missing:?} in /{rel}");
        }
    }

    fn entry(&mut self, src: &Path, rel: &str, r: u64, inode: &Inode, parent: u32) {
        let meta = fs::symlink_metadata(src).expect("source metadata");
        assert_eq!(inode.st_mode(), meta.mode(), "/{rel}: st_mode");
        assert_eq!(inode.nlink, meta.nlink() as u32, "/{rel}: nlink");
        assert_eq!(inode.mtime, meta.mtime() as u32, "/{rel}: mtime");
        let key = (meta.dev(), meta.ino());
        assert_eq!(*self.links.entry(key).or_insert(inode.number), inode.number, "/{rel}: hard links share an inode number");
        assert_eq!(*self.numbers.entry(inode.number).or_insert(key), key, "/{rel}: inode number {} reused", inode.number);
        match &inode.kind {
            Kind::Dir { parent: p, .. } => {
                assert_eq!(*p, parent, "/{rel}: parent inode number");
                self.dir(r, inode, src, rel);
            }
            Kind::File(f) => {
                assert_eq!(inode.size(), meta.len(), "/{rel}: size");
                let data = fs::read(src).expect("source file");
                self.file(f, &data, rel);
            }
            Kind::Symlink(target) => {
                assert_eq!(target.as_slice(), fs::read_link(src).expect("readlink").as_os_str().as_bytes(), "/{rel}: target");
                assert_eq!(inode.size(), meta.len(), "/{rel}: size");
            }
            Kind::Fifo | Kind::Socket => assert_eq!(inode.rdev(), 0),
            Kind::BlockDev(_) | Kind::CharDev(_) => panic!("/{rel}: unexpected device"),
        }
    }

    fn file(&mut self, f: &super::squashfs::FileInode, data: &[u8], rel: &str) {
        self.files += 1;
        let l = self.a.layout(f).unwrap_or_else(|e| panic!("layout of /{rel}: {e}"));
        assert_eq!(l.size, data.len() as u64);
        assert!(read_all(self.a, &l) == data, "/{rel}: whole file differs");

        // Sequential reads of an odd size cross every block boundary.
        let mut seq = Vec::new();
        let mut off = 0;
        loop {
            let before = seq.len();
            self.a.read(&l, off, 4093, &mut seq).expect("read");
            if seq.len() == before {
                break;
            }
            off += (seq.len() - before) as u64;
        }
        assert!(seq == data, "/{rel}: sequential 4093-byte reads differ");

        let bs = u64::from(self.a.block_size());
        let size = data.len() as u64;
        let mut ranges = vec![(0, 1), (1, bs as usize), (bs - 1, 2), (bs - 3, bs as usize + 7), (2 * bs + 17, 3 * bs as usize), (size.saturating_sub(1), 5), (size, 10), (size + 100, 10), (u64::MAX - 5, 10)];
        let mut rng = Rng(size);
        for _ in 0..8 {
            ranges.push((rng.below(size + 2), rng.below(3 * bs) as usize));
        }
        for (offset, len) in ranges {
            // Appends after what is already there.
            let mut out = b"keep".to_vec();
            self.a.read(&l, offset, len, &mut out).unwrap_or_else(|e| panic!("/{rel}: read {len} at {offset}: {e}"));
            let start = offset.min(size) as usize;
            let end = offset.saturating_add(len as u64).min(size) as usize;
            assert_eq!(&out[..4], b"keep", "/{rel}: read overwrote the buffer");
            assert!(out[4..] == data[start..end], "/{rel}: read {len} at {offset} gave {} bytes, want {}", out.len() - 4, end - start);
        }
    }
}

fn dtype(k: &Kind) -> u32 {
    u32::from(match k {
        Kind::Dir { .. } => libc::DT_DIR,
        Kind::File(_) => libc::DT_REG,
        Kind::Symlink(_) => libc::DT_LNK,
        Kind::BlockDev(_) => libc::DT_BLK,
        Kind::CharDev(_) => libc::DT_CHR,
        Kind::Fifo => libc::DT_FIFO,
        Kind::Socket => libc::DT_SOCK,
    })
}

/// Builds the tree, makes an image with `opts`, and checks every entry.
fn fidelity(opts: &[&str], block_size: u32, owner: (u32, u32)) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    build_tree(&src);
    let image = tmp.path().join("image.sqfs");
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.push("-no-xattrs".into());
    for &(path, kind, mode, major, minor) in DEVICES {
        args.push("-p".into());
        args.push(format!("{path} {kind} {mode:o} {} {} {major} {minor}", owner.0, owner.1));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mksquashfs(&src, &image, &args).unwrap_or_else(|e| panic!("mksquashfs {opts:?}: {e}"));

    let mut a = open(&image).unwrap_or_else(|e| panic!("opening the {opts:?} image: {e}"));
    assert_eq!(a.block_size(), block_size);
    let root_ref = a.root();
    let root = a.inode(root_ref).expect("root inode");
    let meta = fs::metadata(&src).expect("tree");
    assert_eq!(root.st_mode(), meta.mode(), "root st_mode");
    assert_eq!(root.nlink, meta.nlink() as u32, "root nlink");
    assert_eq!(root.mtime, meta.mtime() as u32, "root mtime");
    assert_eq!((root.uid, root.gid), owner);

    let mut check = Check { a: &mut a, owner, links: HashMap::new(), numbers: HashMap::new(), files: 0 };
    check.dir(root_ref, &root, &src, "");
    assert!(check.files > 500, "walked only {} files", check.files);
    let distinct = check.numbers.len() + 1 + DEVICES.len();

    // The hard link pair, by name.
    let sub = a.lookup(root_ref, &root, b"sub").expect("lookup").expect("sub");
    let sub_inode = a.inode(sub.inode_ref).expect("sub inode");
    let h1 = a.lookup(root_ref, &root, b"hard1").expect("lookup").expect("hard1");
    let h2 = a.lookup(sub.inode_ref, &sub_inode, b"hard2").expect("lookup").expect("hard2");
    assert_eq!(h1.number, h2.number);
    let (i1, i2) = (a.inode(h1.inode_ref).expect("inode"), a.inode(h2.inode_ref).expect("inode"));
    assert!(i1.nlink >= 2 && i1 == i2, "hard links: {i1:?} {i2:?}");

    let (bytes_used, inodes) = a.usage();
    let len = fs::metadata(&image).expect("image").len();
    assert!(bytes_used <= len && len - bytes_used < 4096, "bytes used {bytes_used} of {len}");
    assert_eq!(inodes as usize, distinct, "inode count");
}

#[test]
fn gzip_small_blocks() {
    require_mksquashfs!();
    fidelity(&["-comp", "gzip", "-b", "4096", "-all-root"], 4096, (0, 0));
}

#[test]
fn lz4_default_blocks() {
    require_mksquashfs!();
    fidelity(&["-comp", "lz4", "-all-root"], 128 << 10, (0, 0));
}

#[test]
fn zstd_default_blocks_forced_owner() {
    require_mksquashfs!();
    fidelity(&["-comp", "zstd", "-force-uid", "1234", "-force-gid", "5678"], 128 << 10, (1234, 5678));
}

#[test]
fn zstd_large_blocks() {
    require_mksquashfs!();
    fidelity(&["-comp", "zstd", "-b", "1M", "-all-root"], 1 << 20, (0, 0));
}

#[test]
fn uncompressed_tables_and_data() {
    require_mksquashfs!();
    fidelity(&["-comp", "zstd", "-b", "4096", "-noI", "-noD", "-noF", "-all-root"], 4096, (0, 0));
}

#[test]
fn gzip_no_fragments() {
    require_mksquashfs!();
    fidelity(&["-comp", "gzip", "-b", "4096", "-no-fragments", "-all-root"], 4096, (0, 0));
}

#[test]
fn zstd_always_fragments() {
    require_mksquashfs!();
    fidelity(&["-comp", "zstd", "-always-use-fragments", "-all-root"], 128 << 10, (0, 0));
}

#[test]
fn lz4_always_fragments_small_blocks() {
    require_mksquashfs!();
    fidelity(&["-comp", "lz4", "-b", "4096", "-always-use-fragments", "-all-root"], 4096, (0, 0));
}

/// A one-file tree for the refusal tests.
fn small_tree(tmp: &Path) -> PathBuf {
    let src = tmp.join("small");
    fs::create_dir(&src).expect("small tree");
    write(&src.join("f"), &Rng(1).text(10_000));
    src
}

#[test]
fn other_compressors_are_unsupported() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = small_tree(tmp.path());
    for comp in ["xz", "lzo", "lzma"] {
        let image = tmp.path().join(format!("{comp}.sqfs"));
        if let Err(e) = mksquashfs(&src, &image, &["-comp", comp, "-no-xattrs"]) {
            eprintln!("skipped -comp {comp}: this mksquashfs cannot make it: {}", e.trim());
            continue;
        }
        match open(&image) {
            Err(Error::Unsupported(_)) => {}
            Err(e) => panic!("-comp {comp}: {e}, want Unsupported"),
            Ok(_) => panic!("-comp {comp}: opened, want Unsupported"),
        }
    }
}

/// Whether `path` (not following a symlink) has extended attributes.
fn has_xattrs(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path and a null buffer of size 0 (asks the size).
    unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

#[test]
fn extended_attributes_are_unsupported() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = small_tree(tmp.path());
    let file = src.join("f");

    // Without any xattr in the tree, an image built without -no-xattrs opens.
    if has_xattrs(&file) || has_xattrs(&src) {
        eprintln!("skipped the no-xattr control: {} already carries extended attributes", tmp.path().display());
    } else {
        let image = tmp.path().join("plain.sqfs");
        mksquashfs(&src, &image, &["-comp", "zstd"]).expect("mksquashfs");
        let mut a = open(&image).expect("an image without xattrs opens");
        let root = a.inode(a.root()).expect("root");
        assert!(a.lookup(a.root(), &root, b"f").expect("lookup").is_some());
    }

    let c = std::ffi::CString::new(file.as_os_str().as_bytes()).expect("path");
    // SAFETY: NUL-terminated name, path and a 1-byte value that outlive the call.
    let set = unsafe { libc::setxattr(c.as_ptr(), c"user.x".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if set != 0 {
        eprintln!("skipped: {} does not take user xattrs: {}", tmp.path().display(), std::io::Error::last_os_error());
        return;
    }
    let image = tmp.path().join("xattr.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd"]).expect("mksquashfs");
    match open(&image) {
        Err(Error::Unsupported(_)) => {}
        Err(e) => panic!("image with xattrs: {e}, want Unsupported"),
        Ok(_) => panic!("image with xattrs: opened, want Unsupported"),
    }
    // The same tree with its xattrs left out is served.
    let image = tmp.path().join("no-xattr.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("-no-xattrs image opens");
    let root = a.inode(a.root()).expect("root");
    let e = a.lookup(a.root(), &root, b"f").expect("lookup").expect("f");
    let Kind::File(f) = a.inode(e.inode_ref).expect("inode").kind else { panic!("f is not a file") };
    let l = a.layout(&f).expect("layout");
    assert!(read_all(&mut a, &l) == fs::read(&file).expect("source"));
}

mod readahead_files;
mod robustness;
