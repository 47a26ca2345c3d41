//! The image through `squashfuse_ll`, with a lifetime tied to the container.
//!
//! The launcher opens /dev/fuse and mounts the FUSE filesystem itself (in the
//! container's namespaces), then passes the descriptor (SCM_RIGHTS) to a
//! `squashfuse_ll` that it execs with `/dev/fd/N` as mountpoint (libfuse 3
//! serves an already mounted descriptor given that way). The server process is forked *before*
//! the launcher leaves the host namespaces, in its own session, so:
//! - it never pins the container's mount namespace: when the last container
//!   process exits, the namespace and its mounts go, the kernel aborts the
//!   FUSE connection and the server exits: it never outlives the container;
//! - terminal signals and the launcher's own signals never reach it, and the
//!   launcher never kills it: it does not die before the container;
//! - it runs as the user (privileged mode drops to the user before exec), so
//!   the squashfs parser never runs with privileges.
//!
//! Must never: keep the /dev/fuse descriptor open in the launcher after the
//! mount (a dead server would then hang the container instead of failing it).

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::path::{Path, PathBuf};

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

use super::sys;

/// Why the FUSE server could not be started or the image not mounted.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("squashfuse_ll not found at {0}: install the `squashfuse` package, or set [launcher] squashfuse in the Shoal config")]
    MissingSquashfuse(PathBuf),
    #[error("/dev/fuse is missing on this node: load the kernel module (`modprobe fuse`) or ask the admin to")]
    NoDevFuse,
    #[error("/dev/fuse is not accessible to you ({0}): sites must make it mode 0666 (`chmod 666 /dev/fuse`, or a udev rule)")]
    DevFuseDenied(io::Error),
    #[error("cannot start squashfuse_ll: {0}")]
    Spawn(io::Error),
    #[error("cannot mount the image with FUSE: {0}")]
    Mount(io::Error),
}

/// A server forked and waiting for its mount.
pub struct FuseServer {
    /// Carries the mounted /dev/fuse descriptor to the server.
    handoff: Option<OwnedFd>,
    errors: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// The descriptor numbers the server gets /dev/fuse and the image at.
const SERVER_DEV_FD: i32 = 3;
const SERVER_IMAGE_FD: i32 = 4;
const SERVER_SOCK_FD: i32 = 5;

fn open_dev_fuse() -> Result<OwnedFd, FuseError> {
    sys::openat(None, Path::new("/dev/fuse"), libc::O_RDWR, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => FuseError::NoDevFuse,
        _ => FuseError::DevFuseDenied(e),
    })
}

/// Forks the server; it waits for [`FuseServer::mount`] to hand it the
/// mounted /dev/fuse descriptor, then execs. `image` is the opened squashfs
/// file; `run_as` = (uid, gid, groups) when the launcher is root.
pub fn start(
    squashfuse: &Path,
    image: BorrowedFd<'_>,
    run_as: Option<(u32, u32, &[u32])>,
) -> Result<FuseServer, FuseError> {
    if !squashfuse.is_file() {
        return Err(FuseError::MissingSquashfuse(squashfuse.to_path_buf()));
    }
    // Checked now for a clear error; the descriptor used for the mount must
    // be opened inside the container's user namespace (the kernel demands
    // the opener's namespace be the mount's).
    drop(open_dev_fuse()?);
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| FuseError::Spawn(e.into()))?;
    let (err_r, err_w) = pipe().map_err(FuseError::Spawn)?;
    let null = sys::openat(None, Path::new("/dev/null"), libc::O_RDWR, 0).map_err(FuseError::Spawn)?;

    // Everything the child needs, allocated before fork.
    let prog = sys::cstr(squashfuse).map_err(FuseError::Spawn)?;
    let argv: Vec<CString> = [
        "squashfuse_ll".to_string(),
        "-f".into(),
        format!("/dev/fd/{SERVER_IMAGE_FD}"),
        format!("/dev/fd/{SERVER_DEV_FD}"),
    ]
    .into_iter()
    .map(|s| CString::new(s).expect("no NUL"))
    .collect();
    let groups: Vec<libc::gid_t> = run_as.map(|(_, _, g)| g.to_vec()).unwrap_or_default();

    // SAFETY: the process is single-threaded (launcher contract), so the
    // child may run ordinary code until exec/_exit.
    match unsafe { fork() }.map_err(|e| FuseError::Spawn(e.into()))? {
        ForkResult::Parent { child } => {
            // The intermediate child exits at once; the server is reparented.
            let _ = waitpid(child, None);
            drop(theirs);
            drop(err_w);
            Ok(FuseServer { handoff: Some(ours), errors: err_r })
        }
        ForkResult::Child => {
            drop(ours);
            // SAFETY: raw syscalls on descriptors this child owns, then exec or _exit.
            unsafe {
                if libc::fork() != 0 {
                    libc::_exit(0);
                }
                libc::setsid();
                // Ignored dispositions survive exec, and libfuse only installs
                // its exit handlers over SIG_DFL: a scancel's SIGTERM, a
                // terminal's SIGINT/SIGHUP never end the server early.
                for sig in [libc::SIGPIPE, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(err_w.as_raw_fd(), 2);
                // Keep only stdio, the image (at its number) and the socket:
                // the server must not hold the caller's other descriptors
                // (pipes, sockets) for the container's whole life.
                let img = libc::fcntl(image.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
                let sock = libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
                if img < 0
                    || sock < 0
                    || libc::dup2(img, SERVER_IMAGE_FD) < 0
                    || libc::dup2(sock, SERVER_SOCK_FD) < 0
                {
                    libc::_exit(126);
                }
                libc::close(3);
                libc::syscall(libc::SYS_close_range, SERVER_SOCK_FD + 1, u32::MAX, 0);
                std::mem::forget(theirs);
                std::mem::forget(null);
                std::mem::forget(err_w);
            }
            // SAFETY: SERVER_SOCK_FD was just made a copy of the socket.
            let sock = unsafe { OwnedFd::from_raw_fd(SERVER_SOCK_FD) };
            // Lowest free descriptor: /dev/fuse arrives as 3.
            let dev = match receive_fd(sock.as_fd()) {
                Some(fd) => fd,
                // The launcher died or gave up before mounting.
                None => unsafe { libc::_exit(0) },
            };
            drop(sock);
            // SAFETY: as above.
            unsafe {
                if dev != SERVER_DEV_FD && libc::dup2(dev, SERVER_DEV_FD) < 0 {
                    libc::_exit(126);
                }
                if let Some((uid, gid, _)) = run_as {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0
                    {
                        libc::_exit(126);
                    }
                }
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                libc::execv(prog.as_ptr(), ptrs.as_ptr());
                libc::_exit(127);
            }
        }
    }
}

fn receive_fd(sock: BorrowedFd<'_>) -> Option<i32> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([i32; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            return fds.first().copied();
        }
    }
    None
}

impl FuseServer {
    /// Opens /dev/fuse (inside the container's namespaces), mounts it on
    /// `target` (read-only, nosuid, nodev, permissions checked by the
    /// kernel) and hands the descriptor to the server. The first access to
    /// the mount waits for the server to answer.
    pub fn mount(&mut self, target: &Path, uid: u32, gid: u32) -> Result<(), FuseError> {
        let dev = open_dev_fuse()?;
        let data = CString::new(format!(
            "fd={},rootmode=40000,user_id={uid},group_id={gid},allow_other,default_permissions",
            dev.as_raw_fd()
        ))
        .expect("no NUL");
        let t = sys::cstr(target).map_err(FuseError::Mount)?;
        sys::mount(
            Some(c"squashfuse_ll"),
            &t,
            Some(c"fuse.squashfuse_ll"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            Some(&data),
        )
        .map_err(FuseError::Mount)?;
        let sock = self.handoff.take().expect("mount called once");
        let iov = [IoSlice::new(b"f")];
        let fds = [dev.as_raw_fd()];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
            .map_err(|e| FuseError::Spawn(e.into()))?;
        // The server holds the only descriptor from now on.
        drop(dev);
        Ok(())
    }

    /// What the server printed, for an error message (waits briefly).
    pub fn diagnostics(&self) -> String {
        let mut pfd = libc::pollfd { fd: self.errors.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 500) };
        let dup = self.errors.try_clone().ok();
        let mut out = String::new();
        if let Some(fd) = dup {
            // SAFETY: an owned duplicate, set non-blocking before reading.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            let mut f = std::fs::File::from(fd);
            let mut buf = vec![0u8; 4096];
            if let Ok(n) = f.read(&mut buf) {
                out = String::from_utf8_lossy(&buf[..n]).trim().replace('\n', "; ");
            }
        }
        out
    }
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        // Closing the socket before the mount tells a waiting server to exit.
        self.handoff.take();
    }
}
