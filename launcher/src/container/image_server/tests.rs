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

// Robustness: mutated images.

/// Entries visited and bytes read per mutated image at most: a crafted
/// directory cycle or a huge sparse file ends the walk, not the test.
const WALK_ENTRIES: usize = 10_000;
const WALK_BYTES: usize = 16 << 20;

/// Walks everything reachable, reading every file; errors are expected,
/// panics and hangs are the failures.
fn walk_untrusted(a: &mut Archive) {
    let mut entries = 0;
    let mut bytes = 0;
    let mut stack = vec![a.root()];
    let mut out = Vec::new();
    while let Some(r) = stack.pop() {
        let Ok(inode) = a.inode(r) else { continue };
        let _ = (inode.st_mode(), inode.size(), inode.rdev());
        match &inode.kind {
            Kind::Dir { .. } => {
                let Ok(list) = a.dir(r, &inode) else { continue };
                for e in list.iter() {
                    entries += 1;
                    if entries > WALK_ENTRIES {
                        return;
                    }
                    assert!(a.lookup(r, &inode, &e.name).is_ok_and(|f| f.is_some()), "a listed name is not found");
                    stack.push(e.inode_ref);
                }
                let _ = a.lookup(r, &inode, b"missing");
            }
            Kind::File(f) => {
                let Ok(l) = a.layout(f) else { continue };
                let mut off = 0u64;
                while off < l.size && bytes < WALK_BYTES {
                    out.clear();
                    let want = (64 << 10).min(WALK_BYTES - bytes);
                    if a.read(&l, off, want, &mut out).is_err() {
                        break;
                    }
                    // A read that succeeds is exactly as long as the file allows.
                    assert_eq!(out.len() as u64, (want as u64).min(l.size - off));
                    bytes += out.len();
                    off += out.len() as u64;
                }
                out.clear();
                let _ = a.read(&l, l.size.saturating_sub(3), 4096, &mut out);
            }
            _ => {}
        }
    }
}

/// Superblock fields: offset and width.
const FIELDS: &[(usize, usize)] = &[(4, 4), (12, 4), (16, 4), (20, 2), (22, 2), (24, 2), (26, 2), (32, 8), (40, 8), (48, 8), (56, 8), (64, 8), (72, 8), (80, 8), (88, 8)];

fn set_field(img: &mut [u8], (at, width): (usize, usize), value: u64) {
    img[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn get_field(img: &[u8], (at, width): (usize, usize)) -> u64 {
    let mut b = [0u8; 8];
    b[..width].copy_from_slice(&img[at..at + width]);
    u64::from_le_bytes(b)
}

/// One deterministic mutation of `valid`; returns it and what was done.
fn mutate(valid: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut img = valid.to_vec();
    let tables = get_field(valid, (64, 8)) as usize;
    let used = get_field(valid, (40, 8)) as usize;
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(2) {
        match rng.below(5) {
            0 => {
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    let at = rng.below(96) as usize;
                    let bit = 1u8 << rng.below(8);
                    img[at] ^= bit;
                    what.push(format!("superblock byte {at} ^= {bit:#x}"));
                }
            }
            1 => {
                let field = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                let old = get_field(&img, field);
                let max = u64::MAX >> (64 - 8 * field.1);
                let value = match rng.below(6) {
                    0 => 0,
                    1 => max,
                    2 => max - rng.below(1 << 16),
                    3 => old.wrapping_add(rng.below(64)).wrapping_sub(32) & max,
                    4 => rng.below(used as u64 + 1) & max,
                    _ => rng.next() & max,
                };
                set_field(&mut img, field, value);
                what.push(format!("superblock field at {} = {value:#x}", field.0));
            }
            2 | 3 => {
                // The inode, directory, fragment and id tables.
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    let at = tables + rng.below((used - tables) as u64) as usize;
                    let v = rng.next() as u8;
                    img[at] = v;
                    what.push(format!("byte {at} = {v:#x}"));
                }
            }
            _ => {
                let at = rng.below(img.len() as u64) as usize;
                let v = rng.next() as u8;
                img[at] = v;
                what.push(format!("byte {at} = {v:#x}"));
            }
        }
    }
    if rng.below(4) == 0 {
        let len = rng.below(img.len() as u64) as usize;
        img.truncate(len);
        // Half the time the superblock agrees, to get past its check.
        if len >= 96 && rng.below(2) == 0 {
            set_field(&mut img, (40, 8), len as u64);
            what.push(format!("truncated to {len}, bytes_used too"));
        } else {
            what.push(format!("truncated to {len}"));
        }
    }
    (img, what.join(", "))
}

/// A tree small enough to walk thousands of times, with every kind of
/// inode, fragments, multi-block and sparse files, and a directory that
/// spans metadata blocks.
fn fuzz_tree(root: &Path) {
    let mut rng = Rng(7);
    fs::create_dir(root).expect("fuzz tree");
    write(&root.join("small"), &rng.text(100));
    write(&root.join("blocks"), &rng.text(3 * 4096 + 1000));
    write(&root.join("random"), &rng.bytes(2 * 4096 + 10));
    let mut holes = rng.text(4096);
    holes.resize(3 * 4096, 0);
    write(&root.join("holes"), &holes);
    symlink("small", root.join("link")).expect("symlink");
    fs::hard_link(root.join("small"), root.join("hard")).expect("hard link");
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let dir = root.join("d/e");
    fs::create_dir_all(&dir).expect("dirs");
    for i in 0..150 {
        write(&dir.join(format!("{i:03}-{}", "n".repeat(50))), &rng.text(i));
    }
}

/// Mutates the image made with `opts` `cases` times and walks each.
fn fuzz(opts: &[&str], cases: usize, seed: u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    fuzz_tree(&src);
    let image = tmp.path().join("image.sqfs");
    let mut args = vec!["-b", "4096", "-all-root", "-no-xattrs", "-p", "dev c 600 0 0 1 3"];
    args.extend_from_slice(opts);
    mksquashfs(&src, &image, &args).expect("mksquashfs");
    let valid = fs::read(&image).expect("image");
    walk_untrusted(&mut Archive::open(File::open(&image).expect("image")).expect("the valid image opens"));

    // The cases run on a thread so that one that loops fails the test with
    // its mutation instead of hanging it.
    let current = Arc::new(Mutex::new(String::new()));
    let (done, finished) = mpsc::channel();
    let now = current.clone();
    let opts_text = format!("{opts:?}");
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let scratch = tempfile::tempfile().expect("scratch file");
        // Table positions near the end of the address space.
        let mut cases_list: Vec<(Vec<u8>, String)> = [48usize, 64, 72, 80]
            .iter()
            .map(|&at| {
                let mut img = valid.clone();
                set_field(&mut img, (at, 8), u64::MAX - 1);
                (img, format!("superblock field at {at} = u64::MAX - 1"))
            })
            .collect();
        cases_list.reverse();
        for i in 0..cases + cases_list.len() {
            let (img, what) = cases_list.pop().unwrap_or_else(|| mutate(&valid, &mut rng));
            *now.lock().expect("lock") = format!("{opts_text} case {i}: {what}");
            scratch.set_len(0).expect("truncate");
            scratch.write_all_at(&img, 0).expect("write");
            let Ok(mut a) = Archive::open(scratch.try_clone().expect("dup")) else { continue };
            walk_untrusted(&mut a);
        }
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(300)) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still walking after 300 s: {}", current.lock().expect("lock")),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("panicked on {}", current.lock().unwrap_or_else(|e| e.into_inner())),
    }
}

#[test]
fn mutated_zstd_images_give_errors() {
    require_mksquashfs!();
    fuzz(&["-comp", "zstd"], 1500, 1);
}

#[test]
fn mutated_gzip_images_give_errors() {
    require_mksquashfs!();
    fuzz(&["-comp", "gzip"], 1500, 2);
}

/// Uncompressed tables: every mutation reaches the parser instead of
/// failing decompression.
#[test]
fn mutated_uncompressed_images_give_errors() {
    require_mksquashfs!();
    fuzz(&["-comp", "gzip", "-noI", "-noD", "-noF"], 1500, 3);
}

/// Address space the crafted-size walk gets (`ulimit -v`, KiB): far less
/// than the 4 GiB directory size it is given, far more than the image.
const CRAFTED_AS_KIB: u64 = 1 << 20;

/// A directory whose inode claims 4 GiB of listing must not make the
/// reader allocate that much (the module's contract: caches plus a block).
/// The walk runs in a child test process under an address-space limit,
/// where such an allocation aborts it.
#[test]
fn crafted_sizes_do_not_allocate_their_size() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    fuzz_tree(&src);
    let image = tmp.path().join("image.sqfs");
    // Uncompressed inodes: the field can be patched in place.
    mksquashfs(&src, &image, &["-b", "4096", "-noI", "-all-root", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("image");
    let root = a.inode(a.root()).expect("root");
    let d = a.lookup(a.root(), &root, b"d").expect("lookup").expect("d");
    let d_inode = a.inode(d.inode_ref).expect("d");
    let e = a.lookup(d.inode_ref, &d_inode, b"e").expect("lookup").expect("e");

    // The byte at `at` of the inode's record, past metadata block headers.
    let mut img = fs::read(&image).expect("image");
    let mut block = get_field(&img, (64, 8)) as usize + (e.inode_ref >> 16) as usize;
    let locate = |block: &mut usize, mut at: usize| {
        while at >= 8192 {
            *block += 2 + 8192;
            at -= 8192;
        }
        *block + 2 + at
    };
    let start = (e.inode_ref & 0xffff) as usize;
    let kind = locate(&mut block.clone(), start);
    assert_eq!(get_field(&img, (kind, 2)), 8, "d/e is not an extended directory inode");
    let size = locate(&mut block, start + 20);
    set_field(&mut img, (size, 4), 0xffff_fff0);
    let crafted = tmp.path().join("crafted.sqfs");
    write(&crafted, &img);

    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CRAFTED_AS_KIB} && exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", "container::image_server::tests::walk_crafted_image", "--ignored", "--test-threads=1"])
        .env("SHOAL_CRAFTED_IMAGE", &crafted)
        .output()
        .expect("running the walk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "walk under a {CRAFTED_AS_KIB} KiB address space: {:?}\n{text}", out.status);
}

#[test]
#[ignore = "run by crafted_sizes_do_not_allocate_their_size, under an address-space limit"]
fn walk_crafted_image() {
    let Some(image) = std::env::var_os("SHOAL_CRAFTED_IMAGE") else {
        eprintln!("skipped: only crafted_sizes_do_not_allocate_their_size runs this, with SHOAL_CRAFTED_IMAGE set");
        return;
    };
    walk_untrusted(&mut open(Path::new(&image)).expect("the crafted image opens"));
}

/// A merged-/usr tree like Debian's holding the host's `/usr/bin/true`, its
/// loader and libc (the test host is Debian 12, as CI is), with libc at
/// `libc_dir`. `None` where the host has no such files.
fn program_tree(root: &Path, libc_dir: &str) -> Option<()> {
    const HOST_LIBS: &str = "/usr/lib/x86_64-linux-gnu";
    let files = [("/usr/bin/true", "usr/bin/true"), (&*format!("{HOST_LIBS}/ld-linux-x86-64.so.2"), "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")];
    for (host, _) in &files {
        if !Path::new(host).is_file() {
            return None;
        }
    }
    for (host, inside) in files {
        let to = root.join(inside);
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        fs::copy(host, &to).expect("copy");
    }
    let libc = root.join(libc_dir.trim_start_matches('/')).join("libc.so.6");
    fs::create_dir_all(libc.parent().expect("parent")).expect("mkdir");
    fs::copy(format!("{HOST_LIBS}/libc.so.6"), &libc).ok()?;
    fs::create_dir_all(root.join("usr/lib64")).expect("mkdir");
    symlink("usr/bin", root.join("bin")).expect("symlink");
    symlink("usr/lib", root.join("lib")).expect("symlink");
    symlink("usr/lib64", root.join("lib64")).expect("symlink");
    symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root.join("usr/lib64/ld-linux-x86-64.so.2")).expect("symlink");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    write(&root.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n");
    write(&root.join("etc/group"), b"root:x:0:\n");
    Some(())
}

fn hints(program: &str, path: &str, library_path: &str) -> Hints {
    Hints { program: program.into(), path: path.into(), library_path: library_path.into() }
}

fn readahead_paths(a: &mut Archive, h: &Hints) -> Vec<String> {
    readahead::files(a, h, &mut Default::default()).iter().map(|f| f.path.display().to_string()).collect()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn readahead_finds_what_a_program_start_loads() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    if program_tree(&src, "/usr/lib/x86_64-linux-gnu").is_none() {
        eprintln!("skipped: the host has no Debian x86-64 /usr/bin/true, loader and libc");
        return;
    }
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    // Found in PATH through the /bin symlink; the loader through /lib64's
    // two links; libc in the default directories; the program last.
    let want = ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/true"];
    assert_eq!(readahead_paths(&mut a, &hints("true", "/nowhere:/bin", "")), want);
    assert_eq!(readahead_paths(&mut a, &hints("/bin/true", "", "")), want);
    // Not in the image, or relative (the cwd is not the image's): nothing.
    assert!(readahead_paths(&mut a, &hints("false", "/bin", "")).is_empty());
    assert!(readahead_paths(&mut a, &hints("bin/true", "/", "")).is_empty());

    // Everything read ahead is in the shared cache afterwards: a reader
    // on the first archive decompresses nothing more.
    readahead::run(a.share().expect("share").open().expect("open shared"), &hints("true", "/bin", ""));
    let cached = a.blocks().len();
    for f in readahead::files(&mut a, &hints("true", "/bin", ""), &mut Default::default()) {
        let inside = f.path.strip_prefix("/").expect("absolute");
        assert_eq!(read_all(&mut a, &f.layout), fs::read(src.join(inside)).expect("source"), "{}", f.path.display());
    }
    assert_eq!(a.blocks().len(), cached, "reading what was read ahead decompressed blocks again");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn readahead_follows_ld_library_path() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    if program_tree(&src, "/opt/site/lib").is_none() {
        eprintln!("skipped: the host has no Debian x86-64 /usr/bin/true, loader and libc");
        return;
    }
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "gzip", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    let found = readahead_paths(&mut a, &hints("true", "/bin", "/elsewhere::/opt/site/lib"));
    assert_eq!(found, ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/opt/site/lib/libc.so.6", "/usr/bin/true"]);
    // Where ld.so would not look, neither does read-ahead.
    let found = readahead_paths(&mut a, &hints("true", "/bin", ""));
    assert_eq!(found, ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/bin/true"]);
}

#[test]
fn readahead_skips_loops_escapes_and_malformed_programs() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("bin")).expect("mkdir");
    symlink("loop2", src.join("bin/loop1")).expect("symlink");
    symlink("loop1", src.join("bin/loop2")).expect("symlink");
    // Resolved inside the image: /etc/passwd of the image, not the host's.
    symlink("../../../../../../etc/passwd", src.join("bin/escape")).expect("symlink");
    fs::create_dir_all(src.join("etc")).expect("mkdir");
    write(&src.join("etc/passwd"), b"image's own\n");
    // ELF headers claiming what is not there.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(64, 0);
    elf[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // phoff
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&512u16.to_le_bytes());
    write(&src.join("bin/badphoff"), &elf);
    write(&src.join("bin/short"), b"\x7fELF\x02\x01");
    write(&src.join("bin/script"), b"#!/bin/sh\nexit 0\n");
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    assert!(readahead_paths(&mut a, &hints("loop1", "/bin", "")).is_empty());
    assert_eq!(readahead_paths(&mut a, &hints("escape", "/bin", "")), ["/etc/passwd"]);
    for name in ["badphoff", "short", "script"] {
        assert_eq!(readahead_paths(&mut a, &hints(name, "/bin", "")), [format!("/bin/{name}")], "{name}");
    }
    readahead::run(a.share().expect("share").open().expect("open shared"), &hints("badphoff", "/bin", "/x"));
}

#[test]
fn readahead_hints_survive_the_socket_encoding() {
    let h = hints("python3", "/usr/bin:/bin", "/opt/lib");
    assert_eq!(Hints::decode(&h.encode()), h);
    let empty = Hints::default();
    assert_eq!(Hints::decode(&empty.encode()), empty);
}

/// Threads reading one image through archives that share their blocks get
/// every file right, whoever decompressed a block, also while another
/// thread is decompressing it.
#[test]
fn shared_blocks_serve_concurrent_readers() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    build_tree(&src);
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-b", "4096", "-no-xattrs"]).expect("mksquashfs");
    let a = open(&image).expect("open");
    let mut paths = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                paths.push(e.path().strip_prefix(&src).expect("inside").to_path_buf());
            }
        }
    }
    let paths = Arc::new(paths);
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let shared = a.share().expect("share");
            let (paths, src) = (paths.clone(), src.clone());
            std::thread::spawn(move || {
                let mut b = shared.open().expect("open shared");
                // Each thread in its own order, so they meet on blocks.
                for k in 0..paths.len() {
                    let rel = &paths[(k * (i + 1) + i) % paths.len()];
                    let mut r = b.root();
                    for c in rel.components() {
                        let dir = b.inode(r).expect("dir");
                        r = b.lookup(r, &dir, c.as_os_str().as_bytes()).expect("lookup").expect("entry").inode_ref;
                    }
                    let Kind::File(f) = b.inode(r).expect("inode").kind else { panic!("{} is not a file", rel.display()) };
                    let l = b.layout(&f).expect("layout");
                    assert_eq!(read_all(&mut b, &l), fs::read(src.join(rel)).expect("source"), "{}", rel.display());
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader thread");
    }
    assert!(a.blocks().len() <= a.blocks().capacity());
}
