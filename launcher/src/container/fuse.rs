//! The image through FUSE, with a lifetime tied to the container.
//!
//! The launcher makes the FUSE superblock itself as a *detached* mount (new
//! mount API: fsopen/fsconfig/fsmount), in a user namespace of its own when
//! unprivileged (uid and gid mapped to themselves), hands its /dev/fuse
//! descriptor to the server and goes on: it makes the container's own mount
//! namespace and attaches the mount there. The server is Shoal's own
//! ([`super::image_server`]) or, where the site asks and for images it does
//! not serve, `squashfuse_ll` (which takes an already mounted descriptor as
//! `/dev/fd/N`). Either way it is double-forked (reparented away from the
//! command the launcher becomes):
//! - unprivileged `shoal run`: forked at the very start ([`prefork`]), it
//!   waits on a socket for the superblock's descriptor and the image and
//!   answers the kernel's INIT at once;
//! - `shoal run` as root for a user: forked when the superblock exists,
//!   drops to the user, then serves;
//! - the SPANK plugin: forked when the superblock exists, drops to the user
//!   and execs the `shoal` binary's built-in server ([`serve_exec`]), or
//!   `squashfuse_ll` where the site asks (`[launcher] image_server`).
//!   Serving in the forked process needs one that was never forked from a
//!   threaded one ([`serve_in_process`]): slurmstepd is.
//!
//! So:
//! - the server is never in the container's mount namespace and never pins
//!   it: when the last container process exits, the namespace and its mounts
//!   go, the kernel aborts the FUSE connection and the server exits: it
//!   never outlives the container (an early server that never gets a
//!   superblock reads end-of-file when the launcher execs or exits, and
//!   exits);
//! - terminal signals and the launcher's own signals never reach it
//!   (ignored, and libfuse keeps ignored signals ignored), and the launcher
//!   never kills it: it does not die before the container;
//! - it runs as the user (root's server drops to the user before loading
//!   or exec'ing squashfuse), so the squashfs parser never runs with
//!   privileges;
//! - it holds stdio, /dev/fuse and the image only, never the caller's
//!   other descriptors.
//!
//! Must never: keep a /dev/fuse descriptor in the launcher (a dead server
//! would then hang the container instead of failing it).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
#[cfg(feature = "image-server")]
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
#[cfg(feature = "image-server")]
use std::sync::Mutex;

#[cfg(feature = "image-server")]
use nix::sys::socket;
use nix::sys::wait::waitpid;

use super::hints::Hints;
#[cfg(feature = "image-server")]
use super::image_server;
use super::sys;
use super::userns;

// The built-in server and the early fork are the `image-server` feature's
// (the `shoal` binary's); without it (the plugin) the server is always
// squashfuse_ll, exec'd. `start` reaches the built-in server only through
// this pointer, which `serve_in_process` sets: a program that never calls
// that (the plugin, also when a workspace build turns the feature on for
// it) does not link the server at all (tests/plugin_symbols.rs).
#[cfg(feature = "image-server")]
static IN_PROCESS: std::sync::OnceLock<Serve> = std::sync::OnceLock::new();

/// The in-process server's entry ([`serve_or_exec`]'s signature).
type Serve = fn(&std::ffi::CStr, ServeWith) -> !;

/// What a forked server is told besides its two descriptors and
/// squashfuse_ll's path.
#[cfg_attr(not(feature = "image-server"), allow(dead_code))]
struct ServeWith {
    /// Serve with a pool of threads (squashfuse_ll: a shared container).
    threaded: bool,
    /// Shoal's own server (else squashfuse_ll, exec'd).
    builtin: bool,
    /// What the built-in server reads ahead.
    hints: Option<Hints>,
    /// Every file shown as owned by this uid and gid (built-in only).
    owner: Option<(u32, u32)>,
    /// Every read checked against this hash tree (built-in only; the
    /// server loads it, as the user, and refuses one that does not match).
    verity: Option<crate::image::verity::Pinned>,
}

/// Lets the image server run in the forked launcher process itself rather
/// than exec `squashfuse_ll`. Only for a program that is single-threaded
/// and was not forked from a multi-threaded one (the `shoal` binary): the
/// server allocates, and malloc after a fork of a threaded process
/// (slurmstepd, whose task process loads the SPANK plugin) can deadlock on
/// a lock another thread held, so the plugin never calls this and keeps
/// the exec.
#[cfg(feature = "image-server")]
pub fn serve_in_process() {
    let _ = IN_PROCESS.set(serve_or_exec);
}

/// Why the FUSE server could not be started or the image not mounted.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("squashfuse_ll not found at {0}: install the `squashfuse` package, or set [launcher] squashfuse in the Shoal config")]
    MissingSquashfuse(PathBuf),
    #[error("/dev/fuse is missing on this node: load the kernel module (`modprobe fuse`) or ask the admin to")]
    NoDevFuse,
    #[error("/dev/fuse is not accessible to you ({0}): sites must make it mode 0666 (`chmod 666 /dev/fuse`, or a udev rule)")]
    DevFuseDenied(io::Error),
    #[error("the shoal binary (Shoal's image server) not found at {0}: install shoal there, set [launcher] shoal, or [launcher] image_server = \"squashfuse\" in the Shoal config")]
    MissingShoal(PathBuf),
    #[error("--container-remap-root needs Shoal's own image server (it shows the image's files as the user's), but the site config sets [launcher] image_server = \"squashfuse\"; ask the admin, or run without --container-remap-root")]
    OwnerNeedsShoal,
    #[error("this image is used where it lies and must be checked as it is read, which only Shoal's own image server does, but the site config sets [launcher] image_server = \"squashfuse\"; admins: set `node.staging = \"copy\"` or use Shoal's server")]
    VerityNeedsShoal,
    #[error("cannot start the image server: {0}")]
    Spawn(io::Error),
    #[error("cannot mount the image with FUSE: {0}")]
    Mount(io::Error),
    #[error(transparent)]
    Namespace(#[from] userns::NsError),
}

/// Who the server runs as and where it makes the superblock.
#[derive(Debug, Clone)]
pub enum ServerAs {
    /// Unprivileged launch: the server makes the user namespace.
    User { uid: u32, gid: u32 },
    /// Root acting for a user: superblock made as root in the host's
    /// namespaces, then the server drops to the user.
    RootFor { uid: u32, gid: u32, groups: Vec<u32> },
}

/// A server forked and serving the superblock made for it.
pub struct FuseServer {
    /// The detached mount, until the launcher attaches it.
    mount: Option<OwnedFd>,
    errors: OwnedFd,
    /// The short-lived middle process of the double fork, reaped late so
    /// the launch never waits for it to be scheduled.
    middle: Option<nix::unistd::Pid>,
    /// Whether the server was forked after the launcher's mount namespace
    /// was made, and so holds it (the container then needs one of its own).
    pub in_launcher_namespace: bool,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// squashfuse allocates two block-sized (128 KiB, mksquashfs's default)
/// buffers per read, right at glibc's default mmap threshold: each became a
/// fresh mmap (page faults, zeroing) and a munmap. Raised thresholds took a
/// FUSE read of the debian-mpich image from 312 to 215 us (median), and the
/// debian-mpich `/bin/true` launch 1.6 ms.
const MALLOC_TUNING: &std::ffi::CStr = c"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=16777216";

/// The descriptor numbers the server gets /dev/fuse and the image at.
const SERVER_DEV_FD: i32 = 3;
const SERVER_IMAGE_FD: i32 = 4;
const SERVER_DEV_PATH: &std::ffi::CStr = c"/dev/fd/3";
const SERVER_IMAGE_PATH: &std::ffi::CStr = c"/dev/fd/4";

/// Ignored dispositions survive exec, and libfuse only installs its exit
/// handlers over SIG_DFL: a scancel's SIGTERM, a terminal's SIGINT/SIGHUP
/// never end the server early. Async-signal-safe (the forked server).
fn ignore_stray_signals() {
    sys::ignore_signals(&[libc::SIGPIPE, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]);
}

/// squashfuse_ll's command line on the server's descriptors, with the
/// tuned environment ([`MALLOC_TUNING`]) as its whole environment; its
/// `run` execs it (exits 127 when that fails). One thread (`-s`) unless
/// shared: one process reading one file after another is served faster
/// without hand-offs between workers on a loaded node.
fn squashfuse_exec(prog: &std::ffi::CStr, threaded: bool) -> sys::Exec {
    let mut args: Vec<&'static std::ffi::CStr> = vec![c"squashfuse_ll", c"-f"];
    if !threaded {
        args.push(c"-s");
    }
    args.extend([SERVER_IMAGE_PATH, SERVER_DEV_PATH]);
    sys::Exec::new(prog.to_owned(), &args, &[MALLOC_TUNING])
}

/// The `shoal` binary's server ([`serve_exec`]) on the server's
/// descriptors, with the same environment: `shoal __serve-image OWNER
/// SQUASHFUSE THREADED [TREE ROOT]`, OWNER `UID:GID` or `-`, THREADED `1`
/// or `0` (for the squashfuse_ll fallback), TREE and ROOT the hash tree
/// every read is checked against.
fn shoal_serve_exec(
    shoal: &Path,
    squashfuse: &Path,
    threaded: bool,
    owner: Option<(u32, u32)>,
    verity: Option<&crate::image::verity::Pinned>,
) -> Result<sys::Exec, FuseError> {
    let owner = owner.map_or_else(|| "-".to_string(), |(u, g)| format!("{u}:{g}"));
    let arg = |s: String| CString::new(s).expect("no NUL");
    let mut args = vec![
        arg("shoal-fuse".into()),
        arg(SERVE_EXEC_ARG.into()),
        arg(owner),
        sys::cstr(squashfuse).map_err(FuseError::Spawn)?,
        arg(u8::from(threaded).to_string()),
    ];
    if let Some(v) = verity {
        args.push(sys::cstr(&v.file).map_err(FuseError::Spawn)?);
        args.push(arg(v.root.clone()));
    }
    Ok(sys::Exec::with_args(sys::cstr(shoal).map_err(FuseError::Spawn)?, args, &[MALLOC_TUNING]))
}

fn open_dev_fuse() -> Result<OwnedFd, FuseError> {
    sys::openat(None, Path::new("/dev/fuse"), libc::O_RDWR, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => FuseError::NoDevFuse,
        _ => FuseError::DevFuseDenied(e),
    })
}

/// Makes the image's FUSE superblock as a detached mount (new mount API),
/// read-only, nosuid, nodev, and returns it with its /dev/fuse descriptor.
fn make_superblock(uid: u32, gid: u32) -> Result<(OwnedFd, OwnedFd), FuseError> {
    let dev = open_dev_fuse()?;
    let m = FuseError::Mount;
    let fs = sys::fsopen(c"fuse").map_err(m)?;
    let num = |n: u32| CString::new(n.to_string()).expect("digits");
    sys::fsconfig(fs.as_fd(), c"fd", Some(&num(dev.as_raw_fd() as u32))).map_err(m)?;
    sys::fsconfig(fs.as_fd(), c"rootmode", Some(c"40000")).map_err(m)?;
    sys::fsconfig(fs.as_fd(), c"user_id", Some(&num(uid))).map_err(m)?;
    sys::fsconfig(fs.as_fd(), c"group_id", Some(&num(gid))).map_err(m)?;
    // Root sets up the container before dropping to the user.
    sys::fsconfig(fs.as_fd(), c"allow_other", None).map_err(m)?;
    // The kernel checks file modes; the server never decides access.
    sys::fsconfig(fs.as_fd(), c"default_permissions", None).map_err(m)?;
    sys::fsconfig(fs.as_fd(), c"subtype", Some(c"squashfuse_ll")).map_err(m)?;
    sys::fsconfig_create(fs.as_fd()).map_err(m)?;
    let mount = sys::fsmount(fs.as_fd(), sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV).map_err(m)?;
    Ok((dev, mount))
}

/// A server forked at the start of an unprivileged `shoal run` (see
/// [`prefork`]), loading its libraries while the launcher reads its config,
/// resolves the user and makes the namespaces; it waits on `sock` for the
/// superblock's /dev/fuse descriptor and the image.
#[cfg(feature = "image-server")]
struct Early {
    sock: OwnedFd,
    errors: OwnedFd,
    middle: nix::unistd::Pid,
}

#[cfg(feature = "image-server")]
static EARLY: Mutex<Option<Early>> = Mutex::new(None);

/// The socket's descriptor number in the early server.
#[cfg(feature = "image-server")]
const EARLY_SOCK_FD: i32 = 5;
/// The largest hand-over message: a flag, squashfuse_ll's path and the
/// read-ahead hints (which are left out when they do not fit).
#[cfg(feature = "image-server")]
const EARLY_MESSAGE: usize = 64 << 10;

/// Forks the image server now, before the launcher knows its image, so
/// that its library loading is off the launch's critical path: [`start`]
/// then only hands it the superblock. For an unprivileged, single-threaded
/// program that opted in with [`serve_in_process`] (the server is already
/// the user; root's server must drop to the user first and is forked by
/// [`start`]). A server that is never handed a superblock (the launch
/// failed, the launcher died) reads end-of-file and exits.
#[cfg(feature = "image-server")]
pub fn prefork() -> Result<(), FuseError> {
    serve_in_process();
    let (sock, child_sock) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| FuseError::Spawn(e.into()))?;
    let (err_r, err_w) = pipe().map_err(FuseError::Spawn)?;
    let null = sys::openat(None, Path::new("/dev/null"), libc::O_RDWR, 0).map_err(FuseError::Spawn)?;
    // SAFETY: the process is single-threaded and was not forked from a
    // threaded one (the caller's contract, see `serve_in_process`).
    match unsafe { sys::double_fork() }.map_err(FuseError::Spawn)? {
        sys::Forked::Parent { middle } => {
            drop(child_sock);
            *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some(Early { sock, errors: err_r, middle });
            Ok(())
        }
        sys::Forked::Grandchild => {
            // A process group of its own, so no terminal signal (sent to
            // the foreground group) reaches it; but the caller's session,
            // not a new one: with autogroup scheduling a new session is
            // a new scheduling group, and every FUSE request then pays a
            // cross-group wakeup (measured: the first answer 0.7 ms later).
            sys::own_process_group();
            // Pins no directory of the caller's (an automounted home).
            sys::chdir_root();
            ignore_stray_signals();
            // Only stdio and the socket: no caller descriptor is held.
            let placed = sys::dup_above(child_sock.as_raw_fd(), 10).and_then(|s| {
                sys::dup_onto(null.as_raw_fd(), 0, false)?;
                sys::dup_onto(null.as_raw_fd(), 1, false)?;
                sys::dup_onto(err_w.as_raw_fd(), 2, false)?;
                sys::dup_onto(s.as_raw_fd(), EARLY_SOCK_FD, true)?;
                // Placeholders: the descriptors received later land
                // above them and are then moved onto these numbers.
                sys::dup_onto(null.as_raw_fd(), SERVER_DEV_FD, false)?;
                sys::dup_onto(null.as_raw_fd(), SERVER_IMAGE_FD, false)
            });
            if placed.is_err() {
                sys::exit_now(126);
            }
            sys::close_from(EARLY_SOCK_FD + 1);
            sys::set_name(c"shoal-fuse");
            early_server()
        }
    }
}

/// The early server's life: wait for the superblock, serve, exit.
#[cfg(feature = "image-server")]
fn early_server() -> ! {
    let sock = EARLY_SOCK_FD;
    let mut buf = vec![0u8; EARLY_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (n, fds) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(sock, &mut iov, Some(&mut space), socket::MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let socket::ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                (msg.bytes, fds)
            }
            Err(_) => (0, Vec::new()),
        }
    };
    sys::close_number(sock);
    // End of file: the launch did not get as far as the image.
    if n == 0 || fds.len() != 2 {
        sys::exit_now(0);
    }
    // The two descriptors just received, placed at the numbers the server
    // (or squashfuse_ll) expects, without close-on-exec.
    if sys::dup_onto(fds[0], SERVER_DEV_FD, false).is_err() || sys::dup_onto(fds[1], SERVER_IMAGE_FD, false).is_err() {
        sys::exit_now(126);
    }
    sys::close_number(fds[0]);
    sys::close_number(fds[1]);
    // [mode] squashfuse_ll's path [NUL hints]
    let mode = EarlyMode::from_byte(buf[0]);
    let mut rest = buf[1..n].splitn(2, |b| *b == 0);
    let prog = CString::new(rest.next().unwrap_or_default()).unwrap_or_default();
    let hints = rest.next().map(Hints::decode);
    // The descriptors are in place; ends this process.
    serve_or_exec(&prog, ServeWith { threaded: mode.threaded, builtin: mode.builtin, hints, owner: None, verity: None })
}

/// The server's work once /dev/fuse and the image are at their numbers:
/// the built-in server ([`super::image_server`]) when `builtin`, or
/// `squashfuse_ll` (`prog`, with threads when `threaded`) otherwise and for
/// images the built-in server refuses (xz, lzo, xattrs). Exits with the
/// server ([`ServeWith`]). An image to check against a hash tree is served
/// by the built-in server or not at all.
///
/// Called in the forked server only (it execs or exits), with
/// SERVER_DEV_FD and SERVER_IMAGE_FD open.
#[cfg(feature = "image-server")]
fn serve_or_exec(prog: &std::ffi::CStr, with: ServeWith) -> ! {
    use std::io::Write;
    let ServeWith { threaded, builtin, hints, owner, verity } = with;
    let checked = verity.is_some();
    if builtin || owner.is_some() || checked {
        // A second descriptor for the reader: SERVER_IMAGE_FD stays for
        // squashfuse_ll.
        if let Ok(image) = sys::dup_above(SERVER_IMAGE_FD, 10) {
            let image = std::fs::File::from(image);
            let opened = match &verity {
                None => image_server::squashfs::Archive::open(image),
                Some(pinned) => match image.metadata().map_err(|e| e.to_string()).and_then(|m| {
                    crate::image::verity::Tree::load(pinned, m.len()).map_err(|e| e.to_string())
                }) {
                    Ok(tree) => image_server::squashfs::Archive::open_verified(image, tree),
                    Err(e) => {
                        let _ = writeln!(io::stderr(), "{e}");
                        sys::exit_now(1)
                    }
                },
            };
            match opened {
                Ok(archive) => {
                    let dev = sys::dup_above(SERVER_DEV_FD, 10);
                    sys::close_number(SERVER_DEV_FD);
                    sys::close_number(SERVER_IMAGE_FD);
                    match dev {
                        Ok(dev) => sys::exit_now(image_server::serve(dev, archive, hints, owner)),
                        // As a server on a bad descriptor would: it exits at once.
                        Err(e) => {
                            let _ = writeln!(io::stderr(), "image server: {e}");
                            sys::exit_now(1)
                        }
                    }
                }
                Err(image_server::squashfs::Error::Unsupported(why)) if owner.is_some() => {
                    let _ = writeln!(
                        io::stderr(),
                        "--container-remap-root: Shoal's image server does not serve this image ({why}), and squashfuse_ll cannot show its files as yours; rebuild the image with gzip or zstd compression"
                    );
                    sys::exit_now(1)
                }
                Err(image_server::squashfs::Error::Unsupported(why)) if checked => {
                    let _ = writeln!(
                        io::stderr(),
                        "Shoal's image server does not serve this image ({why}), and squashfuse_ll would read it unchecked where it lies; admins: stage it by copy (`node.staging = \"copy\"`), or rebuild it with gzip or zstd compression"
                    );
                    sys::exit_now(1)
                }
                Err(image_server::squashfs::Error::Unsupported(_)) => {}
                Err(e) => {
                    let _ = writeln!(io::stderr(), "{e}");
                    sys::exit_now(1)
                }
            }
        }
    }
    if checked {
        let _ = writeln!(io::stderr(), "image server: cannot open the image to check it");
        sys::exit_now(1)
    }
    squashfuse_exec(prog, threaded).run()
}

/// How the early server serves: the hand-over message's first byte.
#[cfg(feature = "image-server")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EarlyMode {
    /// Several processes share the container (squashfuse_ll, where it
    /// serves, then runs its pool of threads).
    threaded: bool,
    /// Shoal's own server (else squashfuse_ll, exec'd).
    builtin: bool,
}

#[cfg(feature = "image-server")]
impl EarlyMode {
    fn byte(self) -> u8 {
        u8::from(self.threaded) | u8::from(!self.builtin) << 1
    }

    fn from_byte(b: u8) -> EarlyMode {
        EarlyMode { threaded: b & 1 != 0, builtin: b & 2 == 0 }
    }
}

/// Hands the early server its superblock: the /dev/fuse descriptor, the
/// image, how to serve it ([`EarlyMode`]), squashfuse_ll's path (for images
/// the built-in server does not serve) and the read-ahead hints.
#[cfg(feature = "image-server")]
fn hand_over(early: &Early, dev: BorrowedFd<'_>, image: BorrowedFd<'_>, mode: EarlyMode, squashfuse: &Path, hints: &Hints) -> io::Result<()> {
    let mut msg = vec![mode.byte()];
    msg.extend_from_slice(squashfuse.as_os_str().as_encoded_bytes());
    let hints = hints.encode();
    if msg.len() + 1 + hints.len() <= EARLY_MESSAGE {
        msg.push(0);
        msg.extend_from_slice(&hints);
    }
    let fds = [dev.as_raw_fd(), image.as_raw_fd()];
    socket::sendmsg::<()>(
        early.sock.as_raw_fd(),
        &[io::IoSlice::new(&msg)],
        &[socket::ControlMessage::ScmRights(&fds)],
        socket::MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// Makes the superblock and hands it to the early server ([`prefork`]), or
/// forks a server on it. Unprivileged (`who` is [`ServerAs::User`]), this
/// first moves the launcher into a new user namespace (uid and gid mapped
/// to themselves) and a mount namespace (a server forked here keeps it);
/// the launcher then makes the container's own mount namespace
/// ([`super::userns::new_mount`]) before attaching the mount. `image` is
/// the opened squashfs file; `threaded`: serve with a pool of threads
/// (containers shared by several processes; always through squashfuse_ll)
/// rather than one. `squashfuse`: the binary exec'd when not serving
/// in-process, checked even then (the fallback). `shoal`: the binary
/// exec'd to run the built-in server when it cannot run in this process
/// (the plugin; [`serve_exec`]); `None`: squashfuse_ll is exec'd (the
/// site's choice). `hints`: what the container's start will read, for the
/// built-in server to read ahead. `owner`: show every file as owned by
/// this uid and gid (`--container-remap-root`; built-in server only).
/// `verity`: check every read against this hash tree (built-in only).
#[allow(clippy::too_many_arguments)] // each is one decision of the plan's
pub fn start(
    squashfuse: &Path,
    shoal: Option<&Path>,
    image: BorrowedFd<'_>,
    who: ServerAs,
    threaded: bool,
    hints: &Hints,
    owner: Option<(u32, u32)>,
    verity: Option<&crate::image::verity::Pinned>,
) -> Result<FuseServer, FuseError> {
    #[cfg(feature = "image-server")]
    let serve: Option<Serve> = IN_PROCESS.get().copied();
    #[cfg(not(feature = "image-server"))]
    let serve: Option<Serve> = None;
    // A shared container (threaded) is served by squashfuse_ll's pool of
    // threads only where the site asks for it (`[launcher] image_server`);
    // else by the built-in server, squashfuse_ll's pool being the fallback
    // for images it does not serve.
    let site_pool = threaded && shoal.is_none();
    #[cfg(feature = "image-server")]
    let early_mode = EarlyMode { threaded, builtin: !site_pool };
    // The `shoal` binary serving itself execs its own file when it must
    // exec (a shared container): the configured one may be another build.
    let shoal: Option<PathBuf> = match shoal {
        _ if serve.is_some() && !site_pool => Some(PathBuf::from("/proc/self/exe")),
        Some(p) if !p.is_file() => return Err(FuseError::MissingShoal(p.to_path_buf())),
        Some(p) => Some(std::path::absolute(p).map_err(FuseError::Spawn)?),
        None if owner.is_some() => return Err(FuseError::OwnerNeedsShoal),
        None if verity.is_some() => return Err(FuseError::VerityNeedsShoal),
        None => None,
    };
    if !squashfuse.is_file() && owner.is_none() && verity.is_none() {
        return Err(FuseError::MissingSquashfuse(squashfuse.to_path_buf()));
    }
    // The server runs in `/`: a configured relative path must not change meaning.
    let squashfuse = &std::path::absolute(squashfuse).map_err(FuseError::Spawn)?;
    let (uid, gid) = match &who {
        ServerAs::User { uid, gid } => {
            userns::new_user_and_mount(*uid, *gid)
                .map_err(|errno| userns::NsError::UsernsDisabled(userns::why_disabled(errno)))?;
            (*uid, *gid)
        }
        ServerAs::RootFor { uid, gid, .. } => (*uid, *gid),
    };
    // After the user namespace: the kernel wants /dev/fuse opened in the
    // superblock's namespace.
    let (dev, mount) = make_superblock(uid, gid)?;
    #[cfg(feature = "image-server")]
    {
        let early = EARLY.lock().unwrap_or_else(|p| p.into_inner()).take();
        let use_early = matches!(who, ServerAs::User { .. }) && owner.is_none() && verity.is_none();
        if let (Some(early), false) = (&early, use_early) {
            // Not forked as this user, or not for this server: let it read
            // end-of-file and exit.
            let _ = waitpid(early.middle, None);
        }
        if let (Some(early), true) = (early, use_early) {
            hand_over(&early, dev.as_fd(), image, early_mode, squashfuse, hints).map_err(FuseError::Spawn)?;
            // The server holds the only /dev/fuse descriptor from now on.
            drop(dev);
            // Forked before any namespace: the launcher's mount namespace is
            // the container's own already.
            return Ok(FuseServer { mount: Some(mount), errors: early.errors, middle: Some(early.middle), in_launcher_namespace: false });
        }
    }
    let (err_r, err_w) = pipe().map_err(FuseError::Spawn)?;
    let null = sys::openat(None, Path::new("/dev/null"), libc::O_RDWR, 0).map_err(FuseError::Spawn)?;

    // Everything the child needs, prepared before fork.
    let prog = sys::cstr(squashfuse).map_err(FuseError::Spawn)?;
    let exec = match &shoal {
        Some(shoal) => shoal_serve_exec(shoal, squashfuse, threaded, owner, verity)?,
        None => squashfuse_exec(&prog, threaded),
    };
    let groups: Vec<libc::gid_t> = match &who {
        ServerAs::RootFor { groups, .. } => groups.clone(),
        ServerAs::User { .. } => Vec::new(),
    };

    // In this process only for one reader (the built-in server has one
    // thread and serves a shared container through exec, where it may fall
    // back to squashfuse_ll's pool of threads for images it refuses).
    let server = serve.filter(|_| !threaded);
    let in_process = server.is_some();
    let hints = in_process.then(|| hints.clone());
    let verity = verity.cloned();

    // SAFETY: the process is single-threaded (launcher contract), and the
    // child makes only raw syscalls on values prepared above before exec/_exit,
    // or, when the binary opted in (see `serve_in_process`: not forked from
    // a threaded process), runs the in-process server.
    match unsafe { sys::double_fork() }.map_err(FuseError::Spawn)? {
        sys::Forked::Parent { middle } => {
            drop(err_w);
            // The server holds the only /dev/fuse descriptor from now on.
            drop(dev);
            let in_launcher_namespace = matches!(who, ServerAs::User { .. });
            Ok(FuseServer { mount: Some(mount), errors: err_r, middle: Some(middle), in_launcher_namespace })
        }
        sys::Forked::Grandchild => {
            // In-process: as in `prefork`. The exec'd squashfuse_ll (the
            // plugin's) keeps the session of its own it always had.
            if in_process {
                sys::own_process_group();
            } else {
                sys::own_session();
            }
            sys::chdir_root();
            ignore_stray_signals();
            // Keep only stdio, /dev/fuse and the image, at their numbers:
            // the server must not hold the caller's other descriptors
            // (pipes, sockets) for the container's whole life.
            let placed = sys::dup_above(dev.as_raw_fd(), 10).and_then(|d| {
                let i = sys::dup_above(image.as_raw_fd(), 10)?;
                sys::dup_onto(null.as_raw_fd(), 0, false)?;
                sys::dup_onto(null.as_raw_fd(), 1, false)?;
                sys::dup_onto(err_w.as_raw_fd(), 2, false)?;
                sys::dup_onto(d.as_raw_fd(), SERVER_DEV_FD, false)?;
                sys::dup_onto(i.as_raw_fd(), SERVER_IMAGE_FD, false)
            });
            if placed.is_err() {
                sys::exit_now(126);
            }
            sys::close_from(SERVER_IMAGE_FD + 1);
            if let ServerAs::RootFor { uid, gid, .. } = &who {
                if sys::drop_to(*uid, *gid, &groups).is_err() {
                    sys::exit_now(126);
                }
            }
            if let Some(serve) = server {
                // The name `ps` and the tests see; exec renames squashfuse_ll.
                sys::set_name(c"shoal-fuse");
                serve(&prog, ServeWith { threaded, builtin: true, hints, owner, verity })
            }
            exec.run()
        }
    }
}

/// The hidden subcommand the `shoal` binary runs the exec'd server as.
pub const SERVE_EXEC_ARG: &str = "__serve-image";

/// The exec'd server's life (the `shoal` binary run by a forked server of
/// the plugin, which cannot serve in its own process: see
/// [`serve_in_process`]): /dev/fuse and the image are at descriptors 3 and
/// 4; `args` are those after [`SERVE_EXEC_ARG`] ([`shoal_serve_exec`]).
/// Never returns.
#[cfg(feature = "image-server")]
pub fn serve_exec(args: &[std::ffi::OsString]) -> ! {
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str()).unwrap_or("");
    let owner = arg(0).split_once(':').and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    let prog = CString::new(arg(1)).unwrap_or_default();
    let threaded = arg(2) == "1";
    let verity = (!arg(3).is_empty()).then(|| crate::image::verity::Pinned { file: arg(3).into(), root: arg(4).to_string() });
    sys::set_name(c"shoal-fuse");
    serve_or_exec(&prog, ServeWith { threaded, builtin: true, hints: None, owner, verity })
}

impl FuseServer {
    /// Attaches the image at `target` (in the container's mount namespace).
    pub fn attach(&mut self, target: &Path) -> Result<(), FuseError> {
        let m = self.mount.take().expect("attach called once");
        sys::move_mount_to(m.as_fd(), target).map_err(FuseError::Mount)
    }

    /// Reaps the middle process of the double fork (it exits at once).
    pub fn reap(&mut self) {
        if let Some(pid) = self.middle.take() {
            let _ = waitpid(pid, None);
        }
    }

    /// What the server printed, for an error message (waits briefly).
    pub fn diagnostics(&self) -> String {
        let _ = sys::poll_readable(self.errors.as_raw_fd(), 500);
        let dup = self.errors.try_clone().ok();
        let mut out = String::new();
        if let Some(fd) = dup {
            // Non-blocking before reading: nothing may be there.
            let _ = sys::set_nonblocking(fd.as_raw_fd());
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
        self.mount.take();
        self.reap();
    }
}
