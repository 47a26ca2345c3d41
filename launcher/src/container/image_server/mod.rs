//! The built-in image server: answers the kernel's FUSE requests for a
//! squashfs image, read-only, on one thread (a second reads ahead), in the
//! process `fuse.rs` forks for the container (no exec, no library to load:
//! the launch's first request finds it ready).
//!
//! What makes it faster than squashfuse_ll on a launch, each measured with
//! `bench/launch-phases.sh` (see BENCHMARKS.md):
//! - every block a container touches is decompressed once ([`squashfs`]
//!   caches them; squashfuse keeps one data block);
//! - the kernel is told to keep what it learns: long entry and attribute
//!   timeouts (the image never changes), negative lookups cached (a
//!   program's library search and Python's imports miss often), symlink
//!   targets cached, no OPEN/RELEASE/OPENDIR round trips (page cache kept),
//!   and a directory listing answers the lookups of what it lists
//!   (READDIRPLUS);
//! - after an answer the server looks for the next request for a short
//!   while before it sleeps: a starting program sends requests a few
//!   microseconds apart, and waking a sleeping server on another CPU costs
//!   tens of microseconds each time (much more on a VM);
//! - a second thread, at idle priority, decompresses what the container's
//!   start will read while the launcher is still building the container
//!   ([`readahead`]): `/bin/true`'s start found every block it needed
//!   ready.
//!
//! Images it cannot serve faithfully (xz, lzma or lzo compression,
//! extended attributes) are refused by [`squashfs::Archive::open`] with
//! `Unsupported`, and `fuse.rs` execs squashfuse_ll for them instead.
//!
//! Must never: trust the image (a corrupt or crafted one is answered with
//! EIO, never a panic), or write anything (the mount is read-only).

mod abi;
mod cache;
pub mod profile;
pub mod readahead;
pub mod squashfs;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use super::sys;
use abi::*;
use squashfs::{Archive, FileLayout, Inode, Kind};

/// A line on the server's stderr, never a panic: that is a pipe to the
/// launcher, which is gone once the container runs (SIGPIPE is ignored,
/// so a write fails with EPIPE, and `eprintln!` would panic on it and end
/// the server: every later read of the image then fails with SIGBUS or
/// ENOTCONN instead of the one EIO).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}


/// How long the server keeps looking for the next request after an answer
/// before it sleeps (a poll costs about a microsecond; an idle server
/// after a program's start burns at most this once).
const SPIN_NS: u64 = 50_000;

/// How long the kernel may keep entries and attributes: the image is
/// read-only and outlives no container, so as long as it likes.
const VALID_SECS: u64 = 365 * 24 * 3600;

/// Largest request read (the kernel's minimum is 8 KiB; names are at most
/// 4 KiB).
const REQUEST_BUFFER: usize = 64 << 10;

/// File layouts kept by node id (READ carries no open file handle: opens
/// are not sent).
const LAYOUT_CACHE: usize = 4096;

struct Server {
    fs: Archive,
    layouts: HashMap<u64, Rc<FileLayout>>,
    /// What the command reads, for the next start's read-ahead
    /// ([`profile`]).
    recorder: Option<profile::Recorder>,
    /// Every file shown as owned by this uid and gid instead of the
    /// image's ids (see [`serve`]).
    owner: Option<(u32, u32)>,
}

/// Serves `fs` on the mounted FUSE connection `dev` until the kernel ends
/// it (the container's last process exited); returns the exit status.
/// With `hints`, a second thread reads ahead what the container's start
/// will read ([`readahead`]). With `owner`, every file is shown owned by
/// that uid and gid (the user's, for `--container-remap-root`: inside a
/// user namespace mapping the user to 0 the image's files are then root's,
/// as in an image the user unpacked, and dpkg can replace them); the kernel
/// still checks modes (`default_permissions`) and the mount stays
/// read-only, nosuid and nodev, so the user gains only what reading the
/// image file gives.
pub fn serve(dev: OwnedFd, fs: Archive, hints: Option<readahead::Hints>, owner: Option<(u32, u32)>) -> i32 {
    tune_malloc();
    let demand = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let recorder = hints.as_ref().and_then(|h| h.profile_path()).map(|p| profile::Recorder::new(p.into(), demand.clone()));
    let readahead = hints.and_then(|hints| start_readahead(&fs, hints, demand));
    let fd = dev.as_raw_fd();
    if let Err(e) = sys::set_nonblocking(fd) {
        note!("image server: cannot make /dev/fuse non-blocking: {e}");
        return 1;
    }
    let mut server = Server { fs, layouts: HashMap::new(), recorder, owner };
    let mut buf = vec![0u8; REQUEST_BUFFER];
    let mut reply = Vec::with_capacity(1 << 20);
    let mut idle_since = now_ns();
    loop {
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    let spinning = now_ns().saturating_sub(idle_since) < SPIN_NS;
                    if spinning && readahead.as_ref().is_some_and(|t| !t.is_finished()) {
                        // No yield while the read-ahead thread runs: it
                        // would take the CPU for its whole slice, and the
                        // next request would find this thread runnable but
                        // not running (seen: 1.7 ms).
                        std::hint::spin_loop();
                        continue;
                    }
                    if spinning {
                        // Lets a requester woken on this CPU run first
                        // (sched_yield).
                        std::thread::yield_now();
                    } else {
                        let _ = sys::poll_readable(fd, -1);
                        idle_since = now_ns();
                    }
                    continue;
                }
                // Interrupted, or a request the kernel took back.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                // The connection ended: the container is gone.
                Some(libc::ENODEV) => {
                    if let Some(r) = &server.recorder {
                        r.save();
                    }
                    return 0;
                }
                _ => {
                    note!("image server: reading /dev/fuse: {e}");
                    return 1;
                }
            },
        };
        let Some(req) = Request::parse(&buf[..n]) else {
            note!("image server: malformed request from the kernel");
            return 1;
        };
        reply.clear();
        let answer = server.handle(&req, &mut reply);
        if let Some(status) = answer {
            send(fd, req.unique, status, &reply);
        }
        idle_since = now_ns();
    }
}

/// Decompressed blocks are 128 KiB, glibc's default mmap threshold: each
/// would be a fresh mapping, faulted in page by page and unmapped when
/// evicted. From the heap, evicted blocks' memory is reused.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    sys::malloc_thresholds(4 << 20, 128 << 20);
}

/// Starts the read-ahead thread on a second view of the image sharing its
/// block cache. Failing to is only slower.
/// `demand`: the distinct blocks the command has asked for, which a
/// profile's replay keeps pace with.
fn start_readahead(fs: &Archive, hints: readahead::Hints, demand: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Option<std::thread::JoinHandle<()>> {
    let shared = fs.share().ok()?;
    let spawned = std::thread::Builder::new().name("shoal-readahead".into()).spawn(move || {
        if let Ok(fs) = shared.open() {
            readahead::run(fs, &hints, &demand);
        }
    });
    spawned.ok()
}

fn now_ns() -> u64 {
    sys::monotonic_ns()
}

/// Writes one answer: the header, then `body` when `status` is 0.
fn send(fd: i32, unique: u64, status: i32, body: &[u8]) {
    let body = if status == 0 { body } else { &[] };
    let head = out_header(unique, status, body.len());
    // A failed write (the request was interrupted, ENOENT) needs nothing done.
    sys::write_two(fd, &head, body);
}

/// A node id for an inode reference: the root is 1 (FUSE's), others are
/// shifted past it (references are unique per inode).
fn node_id(fs: &Archive, inode_ref: u64) -> u64 {
    if inode_ref == fs.root() {
        FUSE_ROOT_ID
    } else {
        inode_ref + 2
    }
}

fn inode_ref(fs: &Archive, node: u64) -> u64 {
    if node == FUSE_ROOT_ID {
        fs.root()
    } else {
        node.wrapping_sub(2)
    }
}

impl Server {
    /// Answers one request into `reply`; `None` for requests that get no
    /// answer (FORGET, INTERRUPT), else the errno (0: `reply` is the body).
    fn handle(&mut self, req: &Request<'_>, reply: &mut Vec<u8>) -> Option<i32> {
        let r = match req.opcode {
            FUSE_INIT => self.init(req.body, reply),
            FUSE_LOOKUP => self.lookup(req.node, req.body, reply),
            FUSE_GETATTR => self.getattr(req.node, reply),
            FUSE_READLINK => self.readlink(req.node, reply),
            FUSE_READ => self.read(req.node, req.body, reply),
            FUSE_READDIR => self.readdir(req.node, req.body, false, reply),
            FUSE_READDIRPLUS => self.readdir(req.node, req.body, true, reply),
            FUSE_STATFS => {
                let (bytes, inodes) = self.fs.usage();
                statfs_out(reply, bytes, self.fs.block_size(), inodes);
                Ok(())
            }
            // Nothing kept per open file or per lookup.
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => return None,
            FUSE_DESTROY => Ok(()),
            // ENOSYS to OPEN and OPENDIR (negotiated with
            // FUSE_NO_OPEN_SUPPORT): the kernel stops sending them and
            // RELEASE, and keeps the page cache. ENOSYS to FLUSH, ACCESS
            // (the kernel checks modes itself), and the xattr calls (the
            // image has none, squashfs::Archive::open checked): the
            // kernel stops asking.
            _ => Err(libc::ENOSYS),
        };
        Some(match r {
            Ok(()) => 0,
            Err(e) => {
                reply.clear();
                -e
            }
        })
    }

    fn init(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), i32> {
        let init = InitIn::parse(body).ok_or(libc::EINVAL)?;
        if init.major < 7 {
            return Err(libc::EPROTO);
        }
        // READDIRPLUS: a listing also answers the lookups that follow it
        // (Python's importer lists a directory, then stats and opens what
        // it found there: one request per file saved). AUTO: the kernel
        // asks for it only while lookups follow listings.
        let want = FUSE_ASYNC_READ
            | FUSE_MAX_PAGES
            | FUSE_CACHE_SYMLINKS
            | FUSE_NO_OPEN_SUPPORT
            | FUSE_NO_OPENDIR_SUPPORT
            | FUSE_DO_READDIRPLUS
            | FUSE_READDIRPLUS_AUTO;
        init_out(reply, init.minor.min(FUSE_KERNEL_MINOR), init.max_readahead, init.flags & want);
        Ok(())
    }

    fn inode(&mut self, node: u64) -> Result<Inode, i32> {
        let r = inode_ref(&self.fs, node);
        self.fs.inode(r).map_err(|e| self.io_error(e))
    }

    /// Logs what went wrong with the image (the launcher shows the
    /// server's stderr when the container fails) and answers EIO.
    fn io_error(&self, e: squashfs::Error) -> i32 {
        note!("image server: {e}");
        libc::EIO
    }

    fn lookup(&mut self, node: u64, body: &[u8], reply: &mut Vec<u8>) -> Result<(), i32> {
        let name = body.split(|b| *b == 0).next().unwrap_or_default();
        let dir_ref = inode_ref(&self.fs, node);
        let dir = self.inode(node)?;
        if !matches!(dir.kind, Kind::Dir { .. }) {
            return Err(libc::ENOTDIR);
        }
        match self.fs.lookup(dir_ref, &dir, name).map_err(|e| self.io_error(e))? {
            Some(e) => {
                let (node, attr) = self.entry(e.inode_ref)?;
                entry_out(reply, node, VALID_SECS, &attr);
            }
            // A negative entry the kernel keeps: the same miss is not asked again.
            None => entry_out(reply, 0, VALID_SECS, &Attr::default()),
        }
        Ok(())
    }

    /// The node id and attributes of the inode at `r`, as LOOKUP and
    /// READDIRPLUS answer them.
    fn entry(&mut self, r: u64) -> Result<(u64, Attr), i32> {
        let inode = self.fs.inode(r).map_err(|e| self.io_error(e))?;
        Ok((node_id(&self.fs, r), self.attr(&inode)))
    }

    fn attr(&self, i: &Inode) -> Attr {
        Attr {
            ino: u64::from(i.number),
            size: i.size(),
            blocks: i.size().div_ceil(512),
            mtime: u64::from(i.mtime),
            mode: i.st_mode(),
            nlink: i.nlink.max(1),
            uid: self.owner.map_or(i.uid, |o| o.0),
            gid: self.owner.map_or(i.gid, |o| o.1),
            rdev: i.rdev(),
            blksize: self.fs.block_size(),
        }
    }

    fn getattr(&mut self, node: u64, reply: &mut Vec<u8>) -> Result<(), i32> {
        let inode = self.inode(node)?;
        attr_out(reply, VALID_SECS, &self.attr(&inode));
        Ok(())
    }

    fn readlink(&mut self, node: u64, reply: &mut Vec<u8>) -> Result<(), i32> {
        match self.inode(node)?.kind {
            Kind::Symlink(t) => {
                reply.extend_from_slice(&t);
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn layout(&mut self, node: u64) -> Result<Rc<FileLayout>, i32> {
        if let Some(l) = self.layouts.get(&node) {
            return Ok(l.clone());
        }
        let Kind::File(f) = self.inode(node)?.kind else {
            return Err(libc::EISDIR);
        };
        let l = Rc::new(self.fs.layout(&f).map_err(|e| self.io_error(e))?);
        if self.layouts.len() >= LAYOUT_CACHE {
            self.layouts.clear();
        }
        self.layouts.insert(node, l.clone());
        Ok(l)
    }

    fn read(&mut self, node: u64, body: &[u8], reply: &mut Vec<u8>) -> Result<(), i32> {
        let (offset, size) = read_in(body).ok_or(libc::EINVAL)?;
        let l = self.layout(node)?;
        if let Some(r) = &mut self.recorder {
            r.note(inode_ref(&self.fs, node), l.size, self.fs.block_size(), offset, size);
        }
        self.fs.read(&l, offset, size as usize, reply).map_err(|e| self.io_error(e))
    }

    /// READDIR, or READDIRPLUS (`plus`: each entry with its node and
    /// attributes, as LOOKUP answers them).
    fn readdir(&mut self, node: u64, body: &[u8], plus: bool, reply: &mut Vec<u8>) -> Result<(), i32> {
        let (offset, size) = read_in(body).ok_or(libc::EINVAL)?;
        let dir_ref = inode_ref(&self.fs, node);
        let dir = self.inode(node)?;
        let Kind::Dir { parent, .. } = dir.kind else {
            return Err(libc::ENOTDIR);
        };
        let entries = self.fs.dir(dir_ref, &dir).map_err(|e| self.io_error(e))?;
        let limit = size as usize;
        // Offsets: 1 after ".", 2 after "..", then 3 + the entry's index.
        let mut next = offset;
        while next < 2 + entries.len() as u64 {
            let (name, ino, dtype, target): (&[u8], u64, u8, Option<u64>) = match next {
                0 => (b".", u64::from(dir.number), libc::DT_DIR, None),
                1 => (b"..", u64::from(parent), libc::DT_DIR, None),
                n => {
                    let e = &entries[(n - 2) as usize];
                    (&e.name, u64::from(e.number), e.dtype, Some(e.inode_ref))
                }
            };
            let fits = if plus {
                // `.` and `..` go with node 0: the kernel makes no entry.
                let (entry_node, attr) = match target {
                    Some(r) => self.entry(r)?,
                    None => (0, Attr { ino, ..Attr::default() }),
                };
                direntplus(reply, limit, (entry_node, VALID_SECS, &attr), next + 1, dtype, name)
            } else {
                dirent(reply, limit, ino, next + 1, dtype, name)
            };
            if !fits {
                break;
            }
            next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
