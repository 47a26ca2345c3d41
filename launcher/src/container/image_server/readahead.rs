//! Read-ahead: decompresses what the container's start will read before it
//! asks, on a second thread of the server at idle priority.
//!
//! Decompressing is most of a cold program start through FUSE: a 128 KiB
//! zstd block takes 150 to 300 us here, and `/bin/true` in a Debian image
//! touches a dozen of libc's alone. The launcher spends milliseconds
//! building the container (mounts, pivot_root) between handing the server
//! its image and exec'ing the command; meanwhile this thread, on another
//! CPU, reads:
//! 1. `/etc/passwd` and `/etc/group` (the launcher merges the user in);
//! 2. what the command's start loads: the program (found in `PATH` as
//!    execvp finds it), its ELF interpreter, `/etc/ld.so.cache`, and its
//!    libraries and theirs, found as ld.so finds them (RPATH and RUNPATH
//!    with `$ORIGIN`, `LD_LIBRARY_PATH`, the cache, the default
//!    directories).
//!
//! The files are found from a few blocks each (ELF header, program
//! headers, dynamic section); their blocks are then read in the order a
//! start needs them, at most [`BUDGET_BYTES`] in all. The answering thread
//! never waits on this one except for a block it is decompressing at that
//! moment (see [`squashfs::BlockCache`]), and idle priority yields the CPU
//! to anything else on the node.
//!
//! Everything here is a guess from untrusted bytes: a file that is not
//! there, not ELF, or malformed is skipped, never an error, and no path
//! leaves the image.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use super::squashfs::{Archive, FileInode, FileLayout, Kind};

// Little-endian fields of ELF64LSB, as the squashfs reader reads its own.
fn le16(b: &[u8], o: usize) -> Option<u16> {
    super::squashfs::le16(b, o).ok()
}
fn le32(b: &[u8], o: usize) -> Option<u32> {
    super::squashfs::le32(b, o).ok()
}
fn le64(b: &[u8], o: usize) -> Option<u64> {
    super::squashfs::le64(b, o).ok()
}

/// The most bytes read ahead: half the block cache, so read-ahead never
/// evicts what the command itself read.
const BUDGET_BYTES: u64 = 32 << 20;
/// The most files looked at (a program with hundreds of libraries gets its
/// first ones read ahead).
const MAX_FILES: usize = 64;
/// Symlinks followed in one path, as the kernel's limit.
const MAX_LINKS: usize = 40;

pub use crate::container::hints::Hints;

/// Lowers the calling thread to SCHED_IDLE: it runs only on a CPU nothing
/// else wants, and any other thread waking there takes the CPU at once.
fn idle_priority() {
    // Failing leaves the thread at normal priority, which is only slower
    // for others. The change alone does not reschedule: a thread started
    // at normal priority (this one) would keep the CPU for its whole
    // slice, and the launcher, woken on this CPU by the server's first
    // answer, waited milliseconds (seen in scheduler traces). The yield
    // hands it over.
    crate::container::sys::thread_idle_priority();
    std::thread::yield_now();
}

/// Reads ahead for `hints` (see the module documentation); returns when
/// done. Run on its own thread. Where the same command left a profile of
/// what it read ([`super::profile`]), that is replayed instead of the
/// guess, keeping pace with `demand`.
pub fn run(mut fs: Archive, hints: &Hints, demand: &AtomicUsize) {
    idle_priority();
    let mut budget = BUDGET_BYTES;
    let mut taken = HashSet::new();
    // The launcher's reads first: it wants them within a millisecond.
    for path in LAUNCHER_READS {
        if let Some(f) = Reader::new(&mut fs, &mut taken).take_path(Path::new(path)) {
            read_blocks(&mut fs, &f.layout, &mut budget);
        }
    }
    if let Some(path) = hints.profile_path() {
        let blocks = super::profile::load(path);
        if !blocks.is_empty() {
            super::profile::replay(&mut fs, &blocks, demand);
            return;
        }
    }
    for f in files(&mut fs, hints, &mut taken) {
        read_blocks(&mut fs, &f.layout, &mut budget);
    }
}

/// Decompresses every block of a file into the shared cache, within `budget`.
fn read_blocks(fs: &mut Archive, layout: &FileLayout, budget: &mut u64) {
    let bs = u64::from(fs.block_size());
    let mut offset = 0;
    while offset < layout.size && *budget > 0 {
        // One byte from each block decompresses the block into the
        // shared cache; a file the image mangled is left to its reader.
        if fs.read(layout, offset, 1, &mut Vec::new()).is_err() {
            break;
        }
        offset += bs;
        *budget = budget.saturating_sub(bs);
    }
}

/// What the launcher reads from the image (it merges the user into them).
const LAUNCHER_READS: &[&str] = &["/etc/passwd", "/etc/group"];

/// The files the command's start reads, found as described in the module
/// documentation, in the order their blocks are read ahead: the
/// interpreter, the cache, the libraries breadth first, then the program
/// (a large program's blocks are needed after its libraries'). `taken`:
/// inodes already read ahead, left out.
pub fn files(fs: &mut Archive, hints: &Hints, taken: &mut HashSet<u64>) -> Vec<File> {
    let mut r = Reader::new(fs, taken);
    let mut out = Vec::new();
    let Some(program) = r.program(hints) else {
        return out;
    };
    let Some(elf) = r.elf(&program.layout) else {
        out.push(program);
        return out;
    };
    if let Some(interp) = elf.interp.clone() {
        out.extend(r.take_path(&interp));
    }
    out.extend(r.take_path(Path::new("/etc/ld.so.cache")));
    // Breadth first, as ld.so loads them; each object's own path for
    // its `$ORIGIN`.
    let mut queue = VecDeque::from([(program.path.clone(), elf)]);
    while let Some((object, elf)) = queue.pop_front() {
        for name in &elf.needed {
            let Some(lib) = r.library(name, &object, &elf, hints) else { continue };
            if let Some(lib_elf) = r.elf(&lib.layout) {
                queue.push_back((lib.path.clone(), lib_elf));
            }
            out.push(lib);
        }
    }
    out.push(program);
    out
}

/// A regular file of the image: where it really is (symlinks followed)
/// and its inode.
struct Found {
    path: PathBuf,
    inode_ref: u64,
    inode: FileInode,
}

/// A file to read ahead.
pub struct File {
    /// Where it is in the image, symlinks resolved.
    pub path: PathBuf,
    pub layout: FileLayout,
}

/// What ld.so needs of an ELF object to load what it depends on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Elf {
    interp: Option<PathBuf>,
    needed: Vec<PathBuf>,
    /// DT_RPATH and DT_RUNPATH, `:`-split, `$ORIGIN` not expanded.
    rpath: Vec<PathBuf>,
    runpath: Vec<PathBuf>,
}

struct Reader<'a> {
    fs: &'a mut Archive,
    /// Inodes already taken (hard links and symlinks to one file count once).
    taken: &'a mut HashSet<u64>,
    /// The image's ld.so.cache: file name -> first path, read when first needed.
    cache: Option<HashMap<OsString, PathBuf>>,
}

impl<'a> Reader<'a> {
    fn new(fs: &'a mut Archive, taken: &'a mut HashSet<u64>) -> Reader<'a> {
        Reader { fs, taken, cache: None }
    }

    /// The regular file at `path` (absolute, in the image).
    fn find(&mut self, path: &Path) -> Option<Found> {
        let (inode_ref, path) = self.resolve(path)?;
        match self.fs.inode(inode_ref).ok()?.kind {
            Kind::File(inode) => Some(Found { path, inode_ref, inode }),
            _ => None,
        }
    }

    /// `found` with its blocks, unless taken already or too many files were.
    fn take(&mut self, found: Found) -> Option<File> {
        if self.taken.len() >= MAX_FILES || !self.taken.insert(found.inode_ref) {
            return None;
        }
        Some(File { layout: self.fs.layout(&found.inode).ok()?, path: found.path })
    }

    fn take_path(&mut self, path: &Path) -> Option<File> {
        let found = self.find(path)?;
        self.take(found)
    }

    /// Follows `path` from the image's root, symlinks included (absolute
    /// ones from the image's root: nothing leaves the image); the inode and
    /// the path with every link replaced.
    fn resolve(&mut self, path: &Path) -> Option<(u64, PathBuf)> {
        let names = crate::inject::image::components;
        let mut todo: VecDeque<OsString> = names(path).into();
        let mut walked: Vec<(u64, OsString)> = Vec::new(); // (inode, name) from the root
        let mut links = 0;
        let root = self.fs.root();
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                walked.pop();
                continue;
            }
            let dir = walked.last().map_or(root, |(r, _)| *r);
            let inode = self.fs.inode(dir).ok()?;
            let entry = self.fs.lookup(dir, &inode, name.as_bytes()).ok()??;
            if let Kind::Symlink(target) = self.fs.inode(entry.inode_ref).ok()?.kind {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = Path::new(OsStr::from_bytes(&target));
                if target.has_root() {
                    walked.clear();
                }
                for (i, c) in names(target).into_iter().enumerate() {
                    todo.insert(i, c);
                }
                continue;
            }
            walked.push((entry.inode_ref, name));
        }
        let real = walked.iter().fold(PathBuf::from("/"), |p, (_, n)| p.join(n));
        Some((walked.last().map_or(root, |(r, _)| *r), real))
    }

    /// The program as execvp finds it: a path with a slash as it is
    /// (absolute only: the container's working directory is not the
    /// image's), a name in the first `PATH` entry holding it.
    fn program(&mut self, hints: &Hints) -> Option<File> {
        let name = OsStr::from_bytes(&hints.program);
        if name.is_empty() {
            return None;
        }
        if hints.program.contains(&b'/') {
            let path = Path::new(name);
            return if path.has_root() { self.take_path(path) } else { None };
        }
        let found = hints
            .path
            .split(|b| *b == b':')
            .map(|d| Path::new(OsStr::from_bytes(d)))
            .filter(|d| d.has_root())
            .find_map(|d| self.find(&d.join(name)))?;
        self.take(found)
    }

    /// A library `name` that `object` needs, where ld.so looks for it
    /// (the first file found there, taken or not, ends the search).
    fn library(&mut self, name: &Path, object: &Path, elf: &Elf, hints: &Hints) -> Option<File> {
        if name.components().count() > 1 {
            return self.take_path(name);
        }
        let origin = object.parent().unwrap_or(Path::new("/"));
        let expand = |d: &PathBuf| crate::inject::elf::expand_origin(d, origin);
        // RPATH only counts when there is no RUNPATH.
        let rpath: Vec<PathBuf> = if elf.runpath.is_empty() { elf.rpath.iter().map(expand).collect() } else { Vec::new() };
        let env: Vec<PathBuf> = hints.library_path.split(|b| *b == b':').map(|d| PathBuf::from(OsStr::from_bytes(d))).collect();
        let runpath: Vec<PathBuf> = elf.runpath.iter().map(expand).collect();
        for dir in rpath.iter().chain(&env).chain(&runpath).filter(|d| d.has_root()) {
            if let Some(found) = self.find(&dir.join(name)) {
                return self.take(found);
            }
        }
        if let Some(path) = self.ld_so_cache().get(name.as_os_str()).cloned() {
            if let Some(found) = self.find(&path) {
                return self.take(found);
            }
        }
        let found = DEFAULT_DIRS.iter().find_map(|dir| self.find(&Path::new(dir).join(name)))?;
        self.take(found)
    }

    /// The image's ld.so.cache by file name (the first entry for a name
    /// wins, as the cache lists the preferred one first).
    fn ld_so_cache(&mut self) -> &HashMap<OsString, PathBuf> {
        if self.cache.is_none() {
            let mut map = HashMap::new();
            if let Some(found) = self.find(Path::new("/etc/ld.so.cache")) {
                if let Some(bytes) = self.whole(&found.inode, 1 << 20) {
                    for path in crate::inject::discover::ld_so_cache_paths(&bytes) {
                        let path = PathBuf::from(path);
                        if let Some(name) = path.file_name() {
                            map.entry(name.to_os_string()).or_insert_with(|| path.clone());
                        }
                    }
                }
            }
            self.cache = Some(map);
        }
        self.cache.as_ref().expect("just set")
    }

    /// A regular file's contents, when at most `max` bytes.
    fn whole(&mut self, f: &FileInode, max: u64) -> Option<Vec<u8>> {
        if f.size > max {
            return None;
        }
        let layout = self.fs.layout(f).ok()?;
        self.bytes(&layout, 0, f.size as usize)
    }

    fn bytes(&mut self, layout: &FileLayout, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.fs.read(layout, offset, len, &mut out).ok()?;
        (out.len() == len).then_some(out)
    }

    /// The dynamic-linking facts of a 64-bit little-endian ELF file (what
    /// x86-64, aarch64, ppc64le and riscv64 run), read from the few ranges
    /// that hold them: goblin, which the ABI check uses, parses a whole
    /// file held in memory, and here most of the file is not decompressed
    /// yet. Anything else, or anything malformed: `None`.
    fn elf(&mut self, layout: &FileLayout) -> Option<Elf> {
        const PT_LOAD: u32 = 1;
        const PT_DYNAMIC: u32 = 2;
        const PT_INTERP: u32 = 3;
        const DT_NEEDED: u64 = 1;
        const DT_STRTAB: u64 = 5;
        const DT_STRSZ: u64 = 10;
        const DT_RPATH: u64 = 15;
        const DT_RUNPATH: u64 = 29;
        let h = self.bytes(layout, 0, 64)?;
        // Magic, ELFCLASS64, ELFDATA2LSB.
        if h[0..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
            return None;
        }
        let (phoff, phentsize, phnum) = (le64(&h, 32)?, le16(&h, 54)?, le16(&h, 56)?);
        if phentsize != 56 || phnum > 512 {
            return None;
        }
        let ph = self.bytes(layout, phoff, 56 * usize::from(phnum))?;
        let mut loads = Vec::new();
        let (mut interp, mut dynamic) = (None, None);
        for p in ph.chunks_exact(56) {
            let (kind, offset, vaddr, filesz) = (le32(p, 0)?, le64(p, 8)?, le64(p, 16)?, le64(p, 32)?);
            match kind {
                PT_LOAD => loads.push((vaddr, offset, filesz)),
                PT_INTERP => interp = Some((offset, filesz.min(4096) as usize)),
                PT_DYNAMIC => dynamic = Some((offset, filesz.min(64 << 10) as usize)),
                _ => {}
            }
        }
        let mut elf = Elf::default();
        if let Some((offset, len)) = interp {
            let path = self.bytes(layout, offset, len)?;
            elf.interp = Some(path_from(path.split(|b| *b == 0).next().unwrap_or_default()));
        }
        let Some((offset, len)) = dynamic else {
            return Some(elf);
        };
        let d = self.bytes(layout, offset, len - len % 16)?;
        let mut strtab = None;
        let mut strsz = 0;
        let mut names = Vec::new(); // (tag, string offset)
        for e in d.chunks_exact(16) {
            let (tag, val) = (le64(e, 0)?, le64(e, 8)?);
            match tag {
                0 => break,
                DT_STRTAB => strtab = Some(val),
                DT_STRSZ => strsz = val.min(1 << 20) as usize,
                DT_NEEDED | DT_RPATH | DT_RUNPATH => names.push((tag, val as usize)),
                _ => {}
            }
        }
        // DT_STRTAB is an address: the file offset is in the load
        // segment that maps it.
        let addr = strtab?;
        let (vaddr, offset, _) = loads.iter().find(|(v, _, sz)| addr >= *v && addr - v < *sz)?;
        let strings = self.bytes(layout, offset + (addr - vaddr), strsz)?;
        for (tag, at) in names {
            let s = strings.get(at..)?.split(|b| *b == 0).next()?;
            match tag {
                DT_NEEDED => elf.needed.push(path_from(s)),
                DT_RPATH => elf.rpath.extend(s.split(|b| *b == b':').map(path_from)),
                _ => elf.runpath.extend(s.split(|b| *b == b':').map(path_from)),
            }
        }
        Some(elf)
    }
}

/// Where ld.so looks last (glibc's default search list on Debian and
/// Fedora-like images; multiarch first).
#[cfg(target_arch = "x86_64")]
const DEFAULT_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
#[cfg(target_arch = "aarch64")]
const DEFAULT_DIRS: &[&str] = &["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const DEFAULT_DIRS: &[&str] = &["/lib64", "/usr/lib64", "/lib", "/usr/lib"];

fn path_from(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

