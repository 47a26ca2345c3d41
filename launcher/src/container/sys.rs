//! The one thin layer over kernel calls that `nix` does not wrap (openat2,
//! loop-device ioctls, per-thread credential switches, flock): every
//! `unsafe` block of the launcher is here, each with its reason.
//!
//! Nothing here decides anything; callers pass exactly what to do.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `/proc/self/fd/N`: lets path-taking calls (mount) act on exactly the
/// file an fd refers to, whatever happened to the path since.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens `path` as if `root` were `/`: absolute symlinks and `..` in the
/// image stay inside the image, magic links are refused.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 },
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` and `how` outlive the call; the kernel reads `size` bytes of `how`.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Plain `openat` (relative to `dir`, which may be AT_FDCWD via `None`).
pub fn openat(dir: Option<BorrowedFd<'_>>, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let d = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: `c` is a valid C string for the call's duration.
    let fd = cvt(unsafe { libc::openat(d, c.as_ptr(), flags | libc::O_CLOEXEC, mode) } as libc::c_long)?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &Path, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid C string for the call's duration.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) } as libc::c_long).map(drop)
}

/// mount(2) with C strings; `None` for NULL.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |o: Option<&CStr>| o.map(|c| c.as_ptr()).unwrap_or(std::ptr::null());
    // SAFETY: every pointer is NULL or a C string that lives across the call.
    cvt(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) } as libc::c_long)
        .map(drop)
}

/// Mount flags of the filesystem `fd` is on, as MS_* bits that a bind
/// remount must keep (the kernel locks them for mounts from a more
/// privileged namespace).
pub fn locked_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain old data; fstatvfs fills it.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a valid out-pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) } as libc::c_long)?;
    let mut out = 0;
    for (st, ms) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if s.f_flag & st != 0 {
            out |= ms;
        }
    }
    Ok(out)
}

pub fn pivot_root_here() -> io::Result<()> {
    let dot = c".";
    // SAFETY: two valid C strings; pivot_root(".", ".") stacks the old root
    // on top of the new one so it can be detached right after.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(drop)
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long).map(drop)
}

/// Switches only this thread's effective ids and groups (raw syscalls, not
/// glibc's process-wide wrappers), so root can open a path exactly as the
/// user would and switch back. Saved ids stay 0, which keeps the permitted
/// capabilities for the switch back.
pub fn thread_set_effective(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the groups slice lives across the call; integer arguments otherwise.
    unsafe {
        cvt(libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()))?;
        cvt(libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32))?;
        cvt(libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32))?;
    }
    Ok(())
}

/// Undoes [`thread_set_effective`].
pub fn thread_restore_root(groups: &[u32]) -> io::Result<()> {
    // SAFETY: as above.
    unsafe {
        cvt(libc::syscall(libc::SYS_setresuid, -1i32, 0, -1i32))?;
        cvt(libc::syscall(libc::SYS_setresgid, -1i32, 0, -1i32))?;
        cvt(libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()))?;
    }
    Ok(())
}

/// Blocking exclusive flock: released by the kernel when the holder dies.
pub fn flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: integer arguments only.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } as libc::c_long) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}


// Loop devices (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` to a free loop device, read-only and auto-clearing (it
/// detaches itself when its last mount goes), and returns the device open.
pub fn loop_attach(file: BorrowedFd<'_>) -> io::Result<(OwnedFd, String)> {
    let ctl = openat(None, Path::new("/dev/loop-control"), libc::O_RDWR, 0)?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) } as libc::c_long)?;
        let name = format!("/dev/loop{n}");
        let dev = openat(None, Path::new(&name), libc::O_RDONLY, 0)?;
        // SAFETY: all-zero is a valid LoopConfig.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        // SAFETY: `cfg` is a valid loop_config that outlives the call.
        match cvt(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) } as libc::c_long) {
            Ok(_) => return Ok((dev, name)),
            // Another process took this device between GET_FREE and CONFIGURE.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::WouldBlock, "no free loop device after 16 tries"))
}

// The new mount API (not in nix): a FUSE superblock made in the server's
// process and handed over as a detached mount.
const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;
pub const MOUNT_ATTR_RDONLY: u32 = 0x1;
pub const MOUNT_ATTR_NOSUID: u32 = 0x2;
pub const MOUNT_ATTR_NODEV: u32 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string; integer flags.
    cvt(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) }).map(owned)
}

/// `fsconfig(SET_STRING key=value)`, or `SET_FLAG key` when `value` is None.
pub fn fsconfig(fs: BorrowedFd<'_>, key: &CStr, value: Option<&CStr>) -> io::Result<()> {
    let (cmd, v) = match value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: valid C strings (or NULL for a flag) across the call.
    cvt(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key.as_ptr(), v, 0) }).map(drop)
}

pub fn fsconfig_create(fs: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: integer arguments and NULLs.
    cvt(unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<libc::c_char>(), std::ptr::null::<libc::c_void>(), 0)
    })
    .map(drop)
}

/// A detached mount of the configured filesystem.
pub fn fsmount(fs: BorrowedFd<'_>, attrs: u32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) }).map(owned)
}

/// Attaches the detached mount `mnt` at `target`.
pub fn move_mount_to(mnt: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C strings for the call's duration.
    cvt(unsafe {
        libc::syscall(libc::SYS_move_mount, mnt.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, t.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    })
    .map(drop)
}

// Processes: the forks of the FUSE server and the doctor's probe, and the
// calls a forked child makes before it execs or exits. Each is a single
// async-signal-safe syscall with no allocation, so it may run in the child
// of a multi-threaded process (slurmstepd's).

/// What a [`double_fork`] returns in each process that goes on.
pub enum Forked {
    /// The caller, with the short-lived middle process to reap.
    Parent { middle: nix::unistd::Pid },
    /// The grandchild: reparented away from the caller (to init or the
    /// nearest subreaper) as soon as the middle process exits.
    Grandchild,
}

/// Forks twice: the middle process forks again and exits at once (`_exit`,
/// also when its fork fails), so the grandchild is nobody's child.
///
/// # Safety
/// As `fork(2)`: in a multi-threaded caller, the grandchild may only make
/// async-signal-safe calls (the functions below) until it execs or exits;
/// anything more (allocating, taking a lock) needs a caller that is
/// single-threaded and was not forked from a multi-threaded process.
pub unsafe fn double_fork() -> io::Result<Forked> {
    // SAFETY: the caller's obligations above cover the child; the child
    // only forks and exits here.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { middle: child }),
        nix::unistd::ForkResult::Child => {
            // SAFETY: fork and _exit are async-signal-safe; the middle
            // process ends here whatever fork returned.
            unsafe {
                if libc::fork() != 0 {
                    libc::_exit(0);
                }
            }
            Ok(Forked::Grandchild)
        }
    }
}

/// Whether a child process may `unshare(flags)`: forks one that tries and
/// exits with the answer (the caller is left as it was).
pub fn child_can_unshare(flags: libc::c_int) -> io::Result<bool> {
    // SAFETY: the child makes two async-signal-safe syscalls (unshare,
    // _exit) and touches no memory, whatever threads the caller has.
    let pid = cvt(unsafe { libc::fork() } as libc::c_long)?;
    if pid == 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(if libc::unshare(flags) == 0 { 0 } else { 1 }) }
    }
    let pid = nix::unistd::Pid::from_raw(pid as libc::pid_t);
    Ok(matches!(nix::sys::wait::waitpid(pid, None), Ok(nix::sys::wait::WaitStatus::Exited(_, 0))))
}

/// Ends this process at once: no atexit handlers, no stdio flush (a
/// forked child's buffers are its parent's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code) }
}

/// Sets these signals to be ignored (an ignored disposition survives exec).
pub fn ignore_signals(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: SIG_IGN installs no handler; integer arguments only.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// `setpgid(0, 0)`: a process group of its own.
pub fn own_process_group() {
    // SAFETY: integer arguments only.
    unsafe { libc::setpgid(0, 0) };
}

/// `setsid()`: a session (and process group) of its own.
pub fn own_session() {
    // SAFETY: no arguments.
    unsafe { libc::setsid() };
}

/// `chdir("/")`: pins no directory of the caller's.
pub fn chdir_root() {
    // SAFETY: a static C string.
    unsafe { libc::chdir(c"/".as_ptr()) };
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; the kernel returns a new descriptor that
    // nothing else owns.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as libc::c_long)?;
    Ok(owned(new))
}

/// Places a duplicate of `old` at number `new` (closing what was there):
/// inherited across exec, unless `cloexec`.
pub fn dup_onto(old: RawFd, new: RawFd, cloexec: bool) -> io::Result<()> {
    // SAFETY: integer arguments only; which numbers to use is the caller's
    // decision (a forked child arranging its descriptors).
    let r = unsafe {
        if cloexec {
            libc::dup3(old, new, libc::O_CLOEXEC)
        } else {
            libc::dup2(old, new)
        }
    };
    cvt(r as libc::c_long).map(drop)
}

/// Closes descriptor number `fd` (one this process holds by number, not
/// through an `OwnedFd`).
#[cfg(feature = "image-server")]
pub fn close_number(fd: RawFd) {
    // SAFETY: integer argument only.
    unsafe { libc::close(fd) };
}

/// Closes every descriptor numbered `first` and above.
pub fn close_from(first: RawFd) {
    // SAFETY: integer arguments only.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// The name `ps` shows for this thread (15 bytes at most).
pub fn set_name(name: &CStr) {
    // SAFETY: a valid C string; the kernel copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Becomes the user for good (real, effective and saved ids, groups).
pub fn drop_to(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the slice lives across the call; integer arguments otherwise.
    unsafe {
        cvt(libc::setgroups(groups.len(), groups.as_ptr()) as libc::c_long)?;
        cvt(libc::setresgid(gid, gid, gid) as libc::c_long)?;
        cvt(libc::setresuid(uid, uid, uid) as libc::c_long)?;
    }
    Ok(())
}

/// A program, its arguments and its whole environment, ready for
/// `execve` before a fork (so the child allocates nothing).
pub struct Exec {
    prog: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The strings `argv` points into when they are not 'static (moving a
    /// CString does not move its bytes).
    _owned: Vec<CString>,
}

impl Exec {
    pub fn new(prog: CString, args: &[&'static CStr], env: &[&'static CStr]) -> Exec {
        let ptrs = |v: &[&'static CStr]| v.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        Exec { prog, argv: ptrs(args), envp: ptrs(env), _owned: Vec::new() }
    }

    /// As [`Exec::new`], with arguments made at run time.
    pub fn with_args(prog: CString, args: Vec<CString>, env: &[&'static CStr]) -> Exec {
        let argv = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let envp = env.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        Exec { prog, argv, envp, _owned: args }
    }

    /// Execs the program; exits 127 when that fails.
    pub fn run(&self) -> ! {
        // SAFETY: `prog` is a C string, and `argv` and `envp` are
        // NULL-terminated arrays of 'static C strings, all owned by `self`.
        unsafe {
            libc::execve(self.prog.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            libc::_exit(127)
        }
    }
}

/// Waits up to `timeout_ms` for `fd` to be readable (-1: no limit):
/// whether it is (false: the time ran out).
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut p, 1, timeout_ms) } as libc::c_long)?;
    Ok(n > 0)
}

// The calls of `isolate`'s child, which takes the user's credentials.

/// SIGKILL this process when its parent dies.
pub fn die_with_parent() {
    // SAFETY: integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Closes every descriptor above stdio except those in `keep`; only in a
/// child about to run code that owns none of the closed ones.
pub fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&fd| fd > 2).map(|&fd| fd as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            // SAFETY: integer arguments only.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: integer arguments only.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// Takes the user's groups, gid and uid (real, effective and saved) and
/// `no_new_privs`, with raw syscalls: for the calling thread alone, which
/// in a forked child is the whole process (glibc's wrappers would signal
/// threads that are not there). On failure, which call failed and its
/// errno.
///
/// slurmstepd may call with only its effective ids dropped (a task's setup
/// runs with the user's euid and saved uid 0), where setgroups needs
/// CAP_SETGID: uid 0 is taken back first (harmless where the saved uid is
/// not 0), then everything is dropped.
pub fn become_user_raw(uid: u32, gid: u32, groups: &[u32]) -> Result<(), (&'static str, i32)> {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: integer arguments, and the groups slice, which lives across
    // the calls and which the kernel only reads.
    unsafe {
        libc::syscall(libc::SYS_setresuid, -1i32, 0, -1i32);
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(("setgroups", errno()));
        }
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            return Err(("setresgid", errno()));
        }
        if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            return Err(("setresuid", errno()));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(("no_new_privs", errno()));
        }
    }
    Ok(())
}

/// Sets O_NONBLOCK on `fd`'s open file.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl as libc::c_int | libc::O_NONBLOCK) } as libc::c_long).map(drop)
}

// The built-in image server's calls (`image_server`).

/// read(2) into `buf`.
#[cfg(feature = "image-server")]
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long).map(|n| n as usize)
}

/// writev(2) of `head` then `body`, in one write; a failure is ignored
/// (the caller has nothing to do about it).
#[cfg(feature = "image-server")]
pub fn write_two(fd: RawFd, head: &[u8], body: &[u8]) {
    let iov = [
        libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: head.len() },
        libc::iovec { iov_base: body.as_ptr() as *mut _, iov_len: body.len() },
    ];
    // SAFETY: two iovecs over live buffers, which the kernel only reads.
    unsafe { libc::writev(fd, iov.as_ptr(), 2) };
}

/// CLOCK_MONOTONIC in nanoseconds.
#[cfg(feature = "image-server")]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// glibc's malloc thresholds: allocations below `mmap` bytes come from
/// the heap, which is trimmed past `trim` bytes free.
#[cfg(all(feature = "image-server", target_env = "gnu"))]
pub fn malloc_thresholds(mmap: i32, trim: i32) {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
    }
}

/// Lowers the calling thread to SCHED_IDLE (failing leaves it as it was).
#[cfg(feature = "image-server")]
pub fn thread_idle_priority() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) };
}

/// `fstatat` of `name` in `dir`, never following a final link.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &Path) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid C string and a buffer of the right size.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) } as libc::c_long)?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// The target of the link `name` in `dir`.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<std::path::PathBuf> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid C string; the buffer's length is passed.
    let n = cvt(unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long)?;
    buf.truncate(n as usize);
    Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&buf)))
}

/// One xattr's value of an open file (at most 64 KiB, the kernel's
/// limit), if set and readable.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: a valid name; the buffer's length is passed.
    let n = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// The xattr names of an open file that its reader may see (none on a
/// filesystem without xattrs).
pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: the buffer's length is passed.
    let n = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(Vec::new()) } else { Err(e) };
    }
    Ok(buf[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
}

/// A directory's entries (name, d_type), without `.` and `..`.
pub fn dir_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(std::ffi::OsString, u8)>> {
    let fd = openat(Some(dir), Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: fdopendir takes the descriptor over on success.
    let d = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(fd);
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR*; the entry is read before the next call.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: as above; d_name is NUL-terminated.
        let (name, kind) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec(), (*e).d_type) };
        if name != b"." && name != b".." {
            out.push((std::ffi::OsStr::from_bytes(&name).to_os_string(), kind));
        }
    }
    // SAFETY: closes the DIR* and its descriptor.
    unsafe { libc::closedir(d) };
    Ok(out)
}
