//! The image server without an exec: libsquashfuse_ll's FUSE operations over
//! libfuse 3's low-level session, both loaded with dlopen in the forked
//! server process (Debian: libsquashfuse0, libfuse3-3).
//!
//! Why: exec'ing `squashfuse_ll` puts its exec, dynamic linking and start on
//! the launch's critical path (the overlay mount waits for the server's
//! first answer). Loading the libraries in the forked child instead keeps
//! them out of the launcher (and out of `libspank_shoal.so`, which must load
//! in slurmd without them) and overlaps the loading with the launcher's own
//! work.
//!
//! Must never: run in a process forked from a multi-threaded one (dlopen
//! and libfuse after such a fork can deadlock on a lock another thread
//! held); [`super::fuse`] uses it only when the binary opted in with
//! [`super::serve_fuse_in_process`]. Never runs before the server dropped
//! to the user: the squashfs parser is loaded and run unprivileged.

use std::ffi::{c_char, c_int, c_void, CStr};

/// squashfuse allocates two block-sized (128 KiB, mksquashfs's default)
/// buffers per read, right at glibc's default mmap threshold: each became a
/// fresh mmap (page faults, zeroing) and a munmap. From the heap instead, a
/// FUSE read of the debian-mpich image took 215 us (median) instead of 312.
const MMAP_THRESHOLD: i32 = 4 << 20;
const TRIM_THRESHOLD: i32 = 16 << 20;
/// The same for an exec'd squashfuse_ll (glibc tunables; the numbers are
/// MMAP_THRESHOLD and TRIM_THRESHOLD).
pub const MALLOC_TUNING: &CStr = c"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=16777216";

/// Why the libraries could not be used; the caller falls back to exec'ing
/// `squashfuse_ll`.
#[derive(Debug)]
pub struct LoadError(pub String);

type Op = Option<unsafe extern "C" fn()>;

/// `struct fuse_lowlevel_ops` of libfuse 3, up to `create`, the last member
/// squashfuse fills. libfuse copies only the size it is given and zeroes
/// the rest, so a prefix is a valid table.
#[repr(C)]
#[derive(Default)]
struct LowlevelOps {
    init: Op,
    destroy: Op,
    lookup: Op,
    forget: Op,
    getattr: Op,
    setattr: Op,
    readlink: Op,
    mknod: Op,
    mkdir: Op,
    unlink: Op,
    rmdir: Op,
    symlink: Op,
    rename: Op,
    link: Op,
    open: Op,
    read: Op,
    write: Op,
    flush: Op,
    release: Op,
    fsync: Op,
    opendir: Op,
    readdir: Op,
    releasedir: Op,
    fsyncdir: Op,
    statfs: Op,
    setxattr: Op,
    getxattr: Op,
    listxattr: Op,
    removexattr: Op,
    access: Op,
    create: Op,
}

/// `struct fuse_args` of libfuse 3.
#[repr(C)]
struct FuseArgs {
    argc: c_int,
    argv: *mut *mut c_char,
    allocated: c_int,
}

type SqfsLlOpen = unsafe extern "C" fn(path: *const c_char, offset: usize) -> *mut c_void;
type SessionNew = unsafe extern "C" fn(args: *mut FuseArgs, ops: *const LowlevelOps, size: usize, userdata: *mut c_void) -> *mut c_void;
type SessionMount = unsafe extern "C" fn(se: *mut c_void, mountpoint: *const c_char) -> c_int;
type SessionLoop = unsafe extern "C" fn(se: *mut c_void) -> c_int;

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated, read before any other dl call.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// A dlopen handle, never closed: the server uses the library until it exits.
struct Lib(*mut c_void);

impl Lib {
    fn open(name: &CStr) -> Result<Lib, LoadError> {
        // SAFETY: a valid C string; the handle is never closed (the process
        // serves until it exits).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(LoadError(format!("{}: {}", name.to_string_lossy(), dlerror())));
        }
        Ok(Lib(h))
    }

    /// A function of the library or of its dependencies (libfuse3).
    fn sym(&self, name: &CStr) -> Result<*mut c_void, LoadError> {
        // SAFETY: a live handle and a valid C string.
        let p = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        if p.is_null() {
            return Err(LoadError(format!("{}: {}", name.to_string_lossy(), dlerror())));
        }
        Ok(p)
    }

    fn op(&self, name: &CStr) -> Result<Op, LoadError> {
        // SAFETY: every name passed is a FUSE low-level operation of
        // libsquashfuse_ll, called by libfuse with that operation's C
        // signature; the table stores it type-erased, as libfuse does.
        Ok(Some(unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(self.sym(name)?) }))
    }
}

/// The libraries, loaded: everything the server needs before the image.
pub struct Loaded {
    ops: LowlevelOps,
    ll_open: SqfsLlOpen,
    session_new: SessionNew,
    session_mount: SessionMount,
    session_loop: SessionLoop,
}

/// Loads libsquashfuse_ll (and with it libfuse3 and the decompressors).
/// `Err`: the libraries are missing; the caller may exec `squashfuse_ll`.
pub fn load() -> Result<Loaded, LoadError> {
    let lib = Lib::open(c"libsquashfuse_ll.so.0")?;
    let ops = LowlevelOps {
        lookup: lib.op(c"sqfs_ll_op_lookup")?,
        forget: lib.op(c"sqfs_ll_op_forget")?,
        getattr: lib.op(c"sqfs_ll_op_getattr")?,
        readlink: lib.op(c"sqfs_ll_op_readlink")?,
        open: lib.op(c"sqfs_ll_op_open")?,
        read: lib.op(c"sqfs_ll_op_read")?,
        release: lib.op(c"sqfs_ll_op_release")?,
        opendir: lib.op(c"sqfs_ll_op_opendir")?,
        readdir: lib.op(c"sqfs_ll_op_readdir")?,
        releasedir: lib.op(c"sqfs_ll_op_releasedir")?,
        statfs: lib.op(c"stfs_ll_op_statfs")?,
        getxattr: lib.op(c"sqfs_ll_op_getxattr")?,
        listxattr: lib.op(c"sqfs_ll_op_listxattr")?,
        create: lib.op(c"sqfs_ll_op_create")?,
        ..Default::default()
    };
    // SAFETY (these four): each symbol has exactly the C signature of the
    // type it is cast to (libsquashfuse_ll 0.1.10x, libfuse 3.x ABI).
    unsafe {
        Ok(Loaded {
            ops,
            ll_open: std::mem::transmute::<*mut c_void, SqfsLlOpen>(lib.sym(c"sqfs_ll_open")?),
            session_new: std::mem::transmute::<*mut c_void, SessionNew>(lib.sym(c"fuse_session_new")?),
            session_mount: std::mem::transmute::<*mut c_void, SessionMount>(lib.sym(c"fuse_session_mount")?),
            session_loop: std::mem::transmute::<*mut c_void, SessionLoop>(lib.sym(c"fuse_session_loop")?),
        })
    }
}

impl Loaded {
    /// Serves the squashfs image at `image` (a `/dev/fd/N` path) on the
    /// already mounted FUSE descriptor `dev` (`/dev/fd/M`) until the kernel
    /// ends the connection, on one thread; returns the server's exit
    /// status. Errors (a corrupt image) are printed on stderr by squashfuse
    /// itself. One thread only: this library (Debian 0.1.105) returned
    /// corrupt data when served from libfuse's thread pool.
    pub fn serve(&self, image: &CStr, dev: &CStr) -> i32 {
        // See MALLOC_TUNING.
        // SAFETY: mallopt only changes malloc's tuning.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
        // SAFETY: a valid C path; squashfuse opens it and prints its own errors.
        let ll = unsafe { (self.ll_open)(image.as_ptr(), 0) };
        if ll.is_null() {
            return 1;
        }
        let mut argv0 = *b"shoal-fuse\0";
        let mut argv = [argv0.as_mut_ptr().cast::<c_char>(), std::ptr::null_mut()];
        let mut args = FuseArgs { argc: 1, argv: argv.as_mut_ptr(), allocated: 0 };
        // SAFETY: `args`, `self.ops` and `ll` outlive the session (this
        // function returns only when serving ended); libfuse copies `size`
        // bytes of the table.
        let se = unsafe { (self.session_new)(&mut args, &self.ops, std::mem::size_of::<LowlevelOps>(), ll) };
        if se.is_null() {
            return 1;
        }
        // libfuse takes `/dev/fd/N` as the already mounted connection.
        // SAFETY: a live session and a valid C string.
        if unsafe { (self.session_mount)(se, dev.as_ptr()) } != 0 {
            return 1;
        }
        // SAFETY: a live, mounted session; returns when the connection ends.
        let status = unsafe { (self.session_loop)(se) };
        if status == 0 { 0 } else { 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_tuning_says_what_mallopt_sets() {
        let t = MALLOC_TUNING.to_str().unwrap();
        assert!(t.contains(&format!("mmap_threshold={MMAP_THRESHOLD}:")), "{t}");
        assert!(t.ends_with(&format!("trim_threshold={TRIM_THRESHOLD}")), "{t}");
    }
}
