//! Doing: builds the container in the current process, in the order a reader
//! expects, one named step each ([`build`]): open every source (as the user
//! where the user named it), start the image server, new namespaces, image
//! mount, skeleton, overlay root, mounts (the plan lowered to syscalls by
//! `lower`, carried out op by op), pivot_root.
//!
//! The root is an overlay of two read-only layers: a small tmpfs "skeleton"
//! holding every mount target, on top of the image. Targets missing in the
//! image therefore need no write to the image, and every target path
//! resolves through our own directories, never through a symlink the image
//! (or a user's FUSE server) supplies. `--writable` adds a tmpfs upper
//! layer. /etc/passwd and /etc/group, the image's with the user merged in,
//! are bound over the root last (a writable root has them in the skeleton).
//! A skeleton directory the image has as a top-level symlink (/etc ->
//! usr/etc) is moved to where the link leads, so the link and what is
//! behind it stay visible.
//!
//! Must never: follow a user-named path with root's credentials, resolve a
//! container path outside the new root, or mount the image without
//! nosuid,nodev.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sys::stat::{fstat, SFlag};

use super::etc;
use super::fuse::{self, FuseError};
use super::hints::Hints;
use super::cred;
use super::lower::{lower, Facts, MountOp, SourceFact, ASSEMBLY_FLAGS};
use super::model::{ImageMount, Mode, Mount, MountKind, Plan};
use super::skeleton::{copy_host_file, follow_image_links, skeleton_path, write_file, ASSEMBLY};
use super::sys;
use crate::image::superblock;
use super::userns::{self, NsError};

/// Why the container could not be built; each names what and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("image {path} cannot be opened: {source}; check the path, or pull the image first")]
    ImageNotFound { path: PathBuf, source: io::Error },
    #[error("image {path} is not a usable squashfs file ({why}); it is corrupt or incomplete: pull or build it again")]
    ImageCorrupt { path: PathBuf, why: String },
    #[error("image {path} is not trusted for a kernel mount ({why}); only root-owned files in root-owned, non-writable directories are")]
    Untrusted { path: PathBuf, why: String },
    #[error("mount source {source_path} for {target} is not accessible to {user}: {err}; check the path (it is opened with your own permissions)")]
    Source { source_path: PathBuf, target: PathBuf, user: String, err: io::Error },
    #[error(transparent)]
    Namespace(#[from] NsError),
    #[error(transparent)]
    Fuse(#[from] FuseError),
    #[error("the image server could not serve image {path} ({detail}); the file is corrupt or not a squashfs image: pull or build it again")]
    FuseServerFailed { path: PathBuf, detail: String },
    #[error("cannot attach image {path} to a loop device: {err}; check /dev/loop-control (shoal doctor)")]
    Loop { path: PathBuf, err: io::Error },
    #[error("cannot {what}: {err}")]
    Step { what: String, err: io::Error },
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let what = what.into();
    move |err| BuildError::Step { what, err }
}

/// The image file, opened (as the user where root acts for one) and
/// checked before anything else happens.
pub(crate) struct Sources {
    image: OwnedFd,
}

/// The squashfs superblock: magic `hsqs`, version 4, and a size that fits.
pub fn check_squashfs(fd: BorrowedFd<'_>) -> Result<(), String> {
    let st = fstat(fd).map_err(|e| e.to_string())?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err("not a regular file".into());
    }
    let mut buf = [0u8; superblock::SIZE];
    let n = nix::sys::uio::pread(fd, &mut buf, 0).map_err(|e| e.to_string())?;
    let sb = superblock::read(&buf[..n]).map_err(|_| "no squashfs superblock".to_string())?;
    let major = sb.major;
    if major != 4 {
        return Err(format!("squashfs version {major}, expected 4"));
    }
    let used = sb.bytes_used;
    if used > st.st_size as u64 {
        return Err(format!("truncated: superblock says {used} bytes, file has {}", st.st_size));
    }
    Ok(())
}

/// Root may kernel-mount only a regular file owned by root, writable by no
/// one else, in directories owned by root and writable by no one else.
fn check_trusted(fd: BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    let st = fstat(fd).map_err(|e| e.to_string())?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err("the file is not root-owned or is group/other-writable".into());
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let st = nix::sys::stat::stat(d).map_err(|e| format!("{}: {e}", d.display()))?;
        if st.st_uid != 0 || (st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0) {
            return Err(format!("{} is writable by users", d.display()));
        }
        dir = d.parent();
    }
    Ok(())
}

pub(crate) fn open_sources(plan: &Plan) -> Result<Sources, BuildError> {
    let path = &plan.root.squashfs;
    // As the user, and never waiting on a FIFO or reading a device.
    let open = || crate::image::file::open_image_file(path, crate::image::file::Links::Follow).map(OwnedFd::from);
    let image = cred::as_user(plan, open).map_err(|source| BuildError::ImageNotFound { path: path.clone(), source })?;
    check_squashfs(image.as_fd())
        .map_err(|why| BuildError::ImageCorrupt { path: path.clone(), why })?;
    if let Some(pinned) = &plan.root.verity {
        // The server checks every read against the tree; it is loaded
        // here too (as the user), so a tree that does not match the
        // recorded root, or a file of another length, fails the task with
        // its reason before a server starts.
        let len = fstat(image.as_fd()).map(|st| st.st_size as u64).map_err(|e| BuildError::ImageCorrupt { path: path.clone(), why: e.to_string() })?;
        cred::as_user(plan, || crate::image::verity::Tree::load(pinned, len).map_err(io::Error::other))
            .map_err(|e| BuildError::ImageCorrupt { path: path.clone(), why: e.to_string() })?;
    }
    if plan.root.via == ImageMount::KernelLoop {
        // Decided by the plan, re-checked on the very file we opened.
        if plan.root.verify_trust {
            check_trusted(image.as_fd(), path)
                .map_err(|why| BuildError::Untrusted { path: path.clone(), why })?;
        }
    }
    Ok(Sources { image })
}

/// Opens every bind source. Called in the new mount namespace (a bind
/// source must be a mount of the caller's namespace) and before the assembly
/// tmpfs covers anything.
fn open_binds(plan: &Plan) -> Result<Vec<Option<OwnedFd>>, BuildError> {
    let mut binds = Vec::with_capacity(plan.mounts.len());
    for m in &plan.mounts {
        let MountKind::Bind { source, as_user: user_path, .. } = &m.kind else {
            binds.push(None);
            continue;
        };
        let open = || sys::openat(None, source, libc::O_PATH, 0);
        let r = if *user_path { cred::as_user(plan, open) } else { open() };
        match r {
            Ok(fd) => binds.push(Some(fd)),
            // Optional host pieces (no /etc/localtime, no home on this node).
            Err(_) if !m.required => binds.push(None),
            Err(err) => {
                return Err(BuildError::Source {
                    source_path: source.clone(),
                    target: m.target.clone(),
                    user: plan.identity.name.clone(),
                    err,
                })
            }
        }
    }
    Ok(binds)
}

fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = fstat(fd).map_err(io::Error::from)?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Reads a small regular file of the image, resolved inside it; empty when
/// absent or not a regular file.
fn read_image_file(lower: BorrowedFd<'_>, path: &str) -> String {
    let Ok(fd) = sys::open_in_root(lower, Path::new(path), libc::O_RDONLY | libc::O_NONBLOCK, 0) else {
        return String::new();
    };
    if is_dir(fd.as_fd()).unwrap_or(true) {
        return String::new();
    }
    let mut s = String::new();
    let _ = std::fs::File::from(fd).take(1 << 20).read_to_string(&mut s);
    s
}

/// Binds `source` (opened) at `target` (opened inside the root) with
/// `flags` (`MS_BIND`, `MS_REC`): [`MountOp::Bind`].
fn bind(source: BorrowedFd<'_>, target: BorrowedFd<'_>, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(Some(&sys::fd_path(source)), &sys::fd_path(target), None, flags, None)
}

/// Remounts the bind just made at `target` (reopened inside the root: the
/// descriptor opened before it is under it) with `flags` (`MS_REMOUNT |
/// MS_BIND | ...`): [`MountOp::Remount`].
pub(crate) fn remount_bind(root: BorrowedFd<'_>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let top = sys::open_in_root(root, target, libc::O_PATH, 0)?;
    sys::mount(None, &sys::fd_path(top.as_fd()), None, flags, None)
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// Builds the container and leaves the current process inside it (root
/// pivoted, cwd `/`). Credentials, capabilities and cwd are the caller's job.
/// `processes`: how many processes will use it (the FUSE server's threads).
/// The steps, in the order the container is made:
pub(crate) fn build(plan: &Plan, src: Sources, processes: u32) -> Result<(), BuildError> {
    let mut server = start_image_server(plan, &src, processes)?;
    enter_namespaces(plan, server.as_ref())?;
    let binds = open_binds(plan)?;
    let layer = open_layer(plan)?;
    let assembly = make_assembly()?;
    mount_image(plan, src, server.as_mut())?;
    let skel = make_skeleton(plan, &binds, assembly.as_fd())?;
    let user_db = place_user_db(plan, skel, assembly.as_fd(), server.as_ref())?;
    let root = mount_root(plan, assembly.as_fd(), layer.as_ref(), user_db.is_some())?;
    mount_all(plan, &binds, root.as_fd(), assembly.as_fd())?;
    drop(binds);
    if let Some(lower_fd) = user_db {
        write_user_db(lower_fd.as_fd(), assembly.as_fd(), &plan.identity)?;
    }
    pivot(root, server)
}

/// Where the image is mounted in the assembly tmpfs.
fn lower_dir() -> String {
    format!("{ASSEMBLY}/lower")
}

/// 1. The image server first: the superblock is made (unprivileged: in a
///    new user namespace) and the server forked before the container's
///    mount namespace exists, so it never holds the container alive.
fn start_image_server(plan: &Plan, src: &Sources, processes: u32) -> Result<Option<fuse::FuseServer>, BuildError> {
    let id = &plan.identity;
    Ok(match &plan.root.via {
        ImageMount::Fuse { squashfuse, shoal } => {
            let who = match plan.mode {
                Mode::Unprivileged => fuse::ServerAs::User { uid: id.uid, gid: id.gid },
                Mode::Privileged => fuse::ServerAs::RootFor { uid: id.uid, gid: id.gid, groups: plan.groups.clone() },
            };
            let hints = readahead_hints(plan, src.image.as_fd());
            let verity = plan.root.verity.as_ref();
            Some(fuse::start(squashfuse, shoal.as_deref(), src.image.as_fd(), who, processes > 1, &hints, plan.root.owner, verity)?)
        }
        ImageMount::KernelLoop => None,
    })
}

/// 2. Namespaces: the container's own mount namespace (inside the user
///    namespace the server start made, when unprivileged; that start's
///    mount namespace serves when the server is not in it).
fn enter_namespaces(plan: &Plan, server: Option<&fuse::FuseServer>) -> Result<(), BuildError> {
    match (plan.mode, server) {
        (Mode::Unprivileged, Some(s)) if !s.in_launcher_namespace => userns::make_private()?,
        (Mode::Unprivileged, _) => userns::new_mount()?,
        (Mode::Privileged, _) => userns::enter_mount()?,
    }
    Ok(())
}

/// 3. A private assembly tmpfs (only this namespace sees it).
fn make_assembly() -> Result<OwnedFd, BuildError> {
    let dir = c(ASSEMBLY);
    sys::mount(Some(c"shoal"), &dir, Some(c"tmpfs"), ASSEMBLY_FLAGS, Some(c"mode=0700"))
        .map_err(step("mount the assembly tmpfs"))?;
    let assembly_fd = sys::openat(None, Path::new(ASSEMBLY), libc::O_PATH | libc::O_DIRECTORY, 0).map_err(step("open the assembly tmpfs"))?;
    for d in ["lower", "skel", "root", "upper", "work", "scratch"] {
        sys::mkdirat(assembly_fd.as_fd(), Path::new(d), 0o755).map_err(step(format!("create {ASSEMBLY}/{d}")))?;
    }
    Ok(assembly_fd)
}

/// 4. The image, read-only, nosuid, nodev.
fn mount_image(plan: &Plan, src: Sources, server: Option<&mut fuse::FuseServer>) -> Result<(), BuildError> {
    let lower_dir = lower_dir();
    match server {
        Some(s) => s.attach(Path::new(&lower_dir))?,
        None => {
            let (dev, name) = sys::loop_attach(src.image.as_fd())
                .map_err(|err| BuildError::Loop { path: plan.root.squashfs.clone(), err })?;
            sys::mount(
                Some(&c(&name)),
                &c(&lower_dir),
                Some(c"squashfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                None,
            )
            .map_err(|e| BuildError::ImageCorrupt { path: plan.root.squashfs.clone(), why: format!("kernel squashfs mount: {e}") })?;
            drop(dev); // auto-clear: the loop device goes with the mount
        }
    }
    drop(src.image);
    Ok(())
}

/// 5. The skeleton: every mount target (made while the server starts),
///    and /etc (see [`place_user_db`]).
fn make_skeleton(plan: &Plan, binds: &[Option<OwnedFd>], assembly: BorrowedFd<'_>) -> Result<OwnedFd, BuildError> {
    let skel = sys::openat(Some(assembly), Path::new("skel"), libc::O_PATH | libc::O_DIRECTORY, 0).map_err(step("open the skeleton"))?;
    for (i, (m, s)) in plan.mounts.iter().zip(binds).enumerate() {
        // Targets in a tmpfs of the plan are made there when it is mounted.
        if enclosing_tmpfs(&plan.mounts[..i], &m.target).is_some() {
            continue;
        }
        let dir = match (&m.kind, s) {
            (MountKind::Tmpfs { .. } | MountKind::Devpts, _) => true,
            // Made in its tmpfs when the mounts are applied.
            (MountKind::Symlink { .. } | MountKind::CharDevice { .. }, _) => continue,
            (MountKind::Copy { source }, _) => {
                copy_host_file(skel.as_fd(), source, &m.target).map_err(step(format!("copy {} into the container", source.display())))?;
                continue;
            }
            (MountKind::Bind { .. }, Some(fd)) => is_dir(fd.as_fd()).map_err(step("stat a mount source"))?,
            (MountKind::Bind { .. }, None) => continue,
        };
        skeleton_path(skel.as_fd(), &m.target, dir).map_err(step(format!("create mount target {}", m.target.display())))?;
    }
    for t in plan.setup_bind_targets() {
        skeleton_path(skel.as_fd(), t, false).map_err(step(format!("create mount target {}", t.display())))?;
    }
    skeleton_path(skel.as_fd(), Path::new("/etc"), true).map_err(step("create /etc"))?;
    Ok(skel)
}

/// 5b. /etc/passwd and /etc/group: the image's with the user merged in. A
/// writable root holds them in the skeleton, where tools inside can
/// replace them (useradd renames onto /etc/passwd, which a mount point
/// refuses). A read-only root gets them bound from the assembly tmpfs and
/// filled in last (returns the image's root for that): reading the
/// image's costs the server a decompression or two, which its read-ahead
/// then does while the mounts are made (the launcher waited about a
/// millisecond here before). The mount targets behind the image's
/// top-level links are moved there first.
fn place_user_db(plan: &Plan, skel: OwnedFd, assembly: BorrowedFd<'_>, server: Option<&fuse::FuseServer>) -> Result<Option<OwnedFd>, BuildError> {
    let lower_dir = lower_dir();
    let etc_dir = sys::openat(Some(skel.as_fd()), Path::new("etc"), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(step("open /etc"))?;

    // The first access waits for the server; a server that died reports here.
    let lower_fd = sys::openat(None, Path::new(&lower_dir), libc::O_PATH | libc::O_DIRECTORY, 0)
        .and_then(|fd| fstat(fd.as_fd()).map(|_| fd).map_err(io::Error::from))
        .map_err(|e| BuildError::FuseServerFailed {
            path: plan.root.squashfs.clone(),
            detail: match server {
                Some(s) => {
                    let d = s.diagnostics();
                    if d.is_empty() { e.to_string() } else { d }
                }
                None => e.to_string(),
            },
        })?;

    follow_image_links(skel.as_fd(), lower_fd.as_fd(), Path::new(&lower_dir)).map_err(step("place the mount targets behind the image's links"))?;

    let user_db = if plan.root.writable {
        write_user_db(lower_fd.as_fd(), etc_dir.as_fd(), &plan.identity)?;
        None
    } else {
        for name in USER_DB {
            write_file(etc_dir.as_fd(), Path::new(name), b"").map_err(step(format!("create /etc/{name}")))?;
            write_file(assembly, Path::new(name), b"").map_err(step(format!("create {ASSEMBLY}/{name}")))?;
        }
        Some(lower_fd)
    };
    Ok(user_db)
}

/// 3a. A writable root's upper layer on disk, `upper` and `work` opened
/// before the assembly tmpfs covers `/tmp` (where `shoal run --save` keeps
/// them, under `$TMPDIR`): the overlay is then mounted on the descriptors,
/// never on paths resolved again later. Never follows a link.
fn open_layer(plan: &Plan) -> Result<Option<(OwnedFd, OwnedFd)>, BuildError> {
    let Some(layer) = plan.root.upper.as_ref().filter(|_| plan.root.writable) else { return Ok(None) };
    let open = |p: &Path| {
        sys::openat(None, p, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
            .map_err(step(format!("open the writable layer {}", p.display())))
    };
    Ok(Some((open(&layer.upper)?, open(&layer.work)?)))
}

/// 6. The root: skeleton over image, plus a tmpfs upper when writable (or
///    the layer on disk `layer`, from [`open_layer`]); the user database
///    bound in when `bind_user_db`.
fn mount_root(plan: &Plan, assembly: BorrowedFd<'_>, layer: Option<&(OwnedFd, OwnedFd)>, bind_user_db: bool) -> Result<OwnedFd, BuildError> {
    let id = &plan.identity;
    let lower_dir = lower_dir();
    let mut opts = format!("lowerdir={ASSEMBLY}/skel:{lower_dir}");
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if let Some((upper, work)) = layer {
        // Root-made paths in a root-only directory (see `UpperLayer`), or
        // the user's own (`shoal run --save`), opened by `open_layer`.
        let (upper, work) = (sys::fd_path(upper.as_fd()), sys::fd_path(work.as_fd()));
        let (upper, work) = (upper.to_string_lossy(), work.to_string_lossy());
        // index=off: a second container on the same layer (a named
        // container's `no_exec` step) is then allowed, as overlayfs does
        // by default.
        opts.push_str(&format!(",upperdir={upper},workdir={work},index=off"));
        // A user's own layer on disk (`shoal run --save`): overlayfs keeps
        // its markers in user.* xattrs, the only ones it may set there.
        if plan.mode == Mode::Unprivileged {
            opts.push_str(",userxattr");
        }
    } else if plan.root.writable {
        opts.push_str(&format!(",upperdir={ASSEMBLY}/upper,workdir={ASSEMBLY}/work"));
        if plan.mode == Mode::Unprivileged {
            opts.push_str(",userxattr");
        }
    } else if let Some(layer) = &plan.root.upper {
        // A kept layer seen read-only: a lower layer between the skeleton
        // and the image (its whiteouts still hide what it deleted).
        let upper = layer.upper.display().to_string();
        if upper.contains([',', ':', '\\']) {
            return Err(step("mount the overlay root")(io::Error::other(format!("layer path {upper} has `,`, `:` or `\\`"))));
        }
        opts = format!("lowerdir={ASSEMBLY}/skel:{upper}:{lower_dir}");
        flags |= libc::MS_RDONLY;
    } else {
        flags |= libc::MS_RDONLY;
    }
    let root_path = format!("{ASSEMBLY}/root");
    sys::mount(Some(c"shoal"), &c(&root_path), Some(c"overlay"), flags, Some(&c(&opts)))
        .map_err(step("mount the overlay root"))?;
    let root = sys::openat(None, Path::new(&root_path), libc::O_PATH | libc::O_DIRECTORY, 0).map_err(step("open the root"))?;
    if let Some(layer) = plan.root.upper.as_ref().filter(|l| l.own_dirs && plan.root.writable) {
        // Before any mount is made on the root, so only the overlay's own
        // directories are walked.
        debug_assert!(layer.own_dirs);
        own_dirs(root.as_fd(), id.uid, id.gid).map_err(step("give the user the directories of the writable root"))?;
    }
    if bind_user_db {
        for name in USER_DB {
            let target = Path::new("/etc").join(name);
            let what = || format!("bind /etc/{name}");
            let source = sys::openat(Some(assembly), Path::new(name), libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(step(what()))?;
            let top = sys::open_in_root(root.as_fd(), &target, libc::O_PATH, 0).map_err(step(what()))?;
            bind(source.as_fd(), top.as_fd(), libc::MS_BIND).map_err(step(what()))?;
            remount_bind(root.as_fd(), &target, libc::MS_REMOUNT | libc::MS_BIND | ASSEMBLY_FLAGS | libc::MS_RDONLY).map_err(step(what()))?;
        }
    }

    Ok(root)
}

/// 7. Mounts, in plan order, onto targets resolved inside the root: the
///    plan lowered with what the sources say (see `lower`), op by op.
fn mount_all(plan: &Plan, binds: &[Option<OwnedFd>], root: BorrowedFd<'_>, assembly: BorrowedFd<'_>) -> Result<(), BuildError> {
    let mut sources = Vec::with_capacity(binds.len());
    for (m, fd) in plan.mounts.iter().zip(binds) {
        sources.push(match fd {
            Some(fd) => Some(SourceFact {
                locked: sys::locked_flags(fd.as_fd()).map_err(step(format!("mount {}", m.target.display())))?,
            }),
            None => None,
        });
    }
    let ops = lower(plan, &Facts { sources });
    for op in &ops {
        apply(op, plan, binds, root, assembly)?;
    }
    Ok(())
}

/// 8. pivot_root, and the host's tree detached.
fn pivot(root: OwnedFd, mut server: Option<fuse::FuseServer>) -> Result<(), BuildError> {
    nix::unistd::fchdir(root.as_fd()).map_err(|e| step("enter the root")(e.into()))?;
    sys::pivot_root_here().map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| step("detach the host root")(e.into()))?;
    nix::unistd::chdir("/").map_err(|e| step("chdir /")(e.into()))?;
    if let Some(s) = server.as_mut() {
        s.reap();
    }
    Ok(())
}

/// Carries out one lowered op on the root being built (`root`); `binds`:
/// the plan's bind sources, opened; `assembly`: the assembly tmpfs.
fn apply(op: &MountOp, plan: &Plan, binds: &[Option<OwnedFd>], root: BorrowedFd<'_>, assembly: BorrowedFd<'_>) -> Result<(), BuildError> {
    let i = op.mount();
    let m = &plan.mounts[i];
    let what = || format!("mount {}", m.target.display());
    match op {
        MountOp::Skip { .. } => {}
        MountOp::Symlink { target, to, .. } => {
            make_in_tmpfs(root, plan, i, |dir, name| nix::unistd::symlinkat(to, dir, name).map_err(io::Error::from))
                .map_err(step(format!("link {} to {}", target.display(), to.display())))?;
        }
        MountOp::CharDevice { target, major, minor, mode, .. } => {
            make_in_tmpfs(root, plan, i, |dir, name| {
                let perm = nix::sys::stat::Mode::from_bits_truncate(*mode);
                let dev = libc::makedev(*major, *minor);
                nix::sys::stat::mknodat(dir, name, SFlag::S_IFCHR, perm, dev).map_err(io::Error::from)?;
                // The umask narrowed the mode.
                nix::sys::stat::fchmodat(dir, name, perm, nix::sys::stat::FchmodatFlags::NoFollowSymlink).map_err(io::Error::from)
            })
            .map_err(step(format!("make device node {}", target.display())))?;
        }
        MountOp::Scratch { mode, flags, .. } => {
            let target = mount_target(plan, i, binds, root)?;
            let name = PathBuf::from(format!("scratch/{i}"));
            sys::mkdirat(assembly, &name, 0o700).map_err(step(what()))?;
            nix::sys::stat::fchmodat(
                assembly,
                &name,
                nix::sys::stat::Mode::from_bits_truncate(*mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| step(what())(e.into()))?;
            let dir = sys::openat(Some(assembly), &name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).map_err(step(what()))?;
            bind(dir.as_fd(), target.as_fd(), *flags).map_err(step(what()))?;
        }
        MountOp::Devpts { flags, data, .. } => {
            let target = mount_target(plan, i, binds, root)?;
            sys::mount(Some(c"devpts"), &sys::fd_path(target.as_fd()), Some(c"devpts"), *flags, Some(&c(data))).map_err(step(what()))?;
        }
        MountOp::Bind { flags, .. } => {
            let target = mount_target(plan, i, binds, root)?;
            let Some(source) = &binds[i] else { unreachable!("a bind without its source is lowered to Skip") };
            bind(source.as_fd(), target.as_fd(), *flags).map_err(step(what()))?;
        }
        MountOp::Remount { target, flags, .. } => {
            let why = match m.kind {
                MountKind::Bind { .. } => {
                    format!("remount {} with nosuid,nodev{}", target.display(), if m.read_only { ",ro" } else { "" })
                }
                _ => what(),
            };
            remount_bind(root, target, *flags).map_err(step(why))?;
        }
    }
    Ok(())
}

/// Opens the target of `plan.mounts[i]` inside the root. The skeleton made
/// it, but a tmpfs the plan mounted earlier (/run for /run/munge) may hide
/// it now: then it is made again inside that tmpfs, which is ours, not the
/// image's.
fn mount_target(plan: &Plan, i: usize, binds: &[Option<OwnedFd>], root: BorrowedFd<'_>) -> Result<OwnedFd, BuildError> {
    let m = &plan.mounts[i];
    let what = || format!("mount {}", m.target.display());
    let Some(tmpfs) = enclosing_tmpfs(&plan.mounts[..i], &m.target) else {
        return sys::open_in_root(root, &m.target, libc::O_PATH, 0).map_err(step(what()));
    };
    let dir = match &binds[i] {
        Some(fd) => is_dir(fd.as_fd()).map_err(step(what()))?,
        None => true,
    };
    let base = sys::open_in_root(root, &tmpfs.target, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(step(what()))?;
    let rel = m.target.strip_prefix(&tmpfs.target).unwrap_or(&m.target);
    skeleton_path(base.as_fd(), rel, dir).map_err(step(what()))?;
    sys::open_in_root(root, &m.target, libc::O_PATH, 0).map_err(step(what()))
}

/// Makes every root-owned directory of the overlay at `root` the user's
/// (each is copied up into the layer; the image is untouched). Walks by
/// descriptor, never following a link, and stays on the overlay; runs
/// before any user process is in the container, on a layer no user can
/// reach from outside.
fn own_dirs(root: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let top = sys::openat(Some(root), Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let dev = fstat(top.as_fd()).map_err(io::Error::from)?.st_dev;
    own_tree(top, dev, uid, gid, 0)
}

/// One directory and, depth first, those below it (one descriptor open
/// per level).
fn own_tree(dir: OwnedFd, dev: u64, uid: u32, gid: u32, depth: u32) -> io::Result<()> {
    if depth > 512 {
        return Err(io::Error::other("directories nested more than 512 deep"));
    }
    let st = fstat(dir.as_fd()).map_err(io::Error::from)?;
    if st.st_uid == 0 {
        let group = if st.st_gid == 0 { gid } else { st.st_gid };
        nix::unistd::fchown(dir.as_fd(), Some(uid.into()), Some(group.into())).map_err(io::Error::from)?;
    }
    let mut names = Vec::new();
    // The directory's own descriptor, through /proc: no path is resolved.
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            names.push(e.file_name());
        }
    }
    for name in names {
        let Ok(child) = sys::openat(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0) else {
            continue;
        };
        if fstat(child.as_fd()).map_err(io::Error::from)?.st_dev == dev {
            own_tree(child, dev, uid, gid, depth + 1)?;
        }
    }
    Ok(())
}

/// The files the user is merged into.
const USER_DB: [&str; 2] = ["passwd", "group"];

/// Writes the image's /etc/passwd and /etc/group with the user merged in
/// (see [`etc`]) into `dir`, from the image mounted at `lower`.
fn write_user_db(lower: BorrowedFd<'_>, dir: BorrowedFd<'_>, id: &etc::Identity) -> Result<(), BuildError> {
    let passwd = etc::merge_passwd(&read_image_file(lower, "/etc/passwd"), id);
    let group = etc::merge_group(&read_image_file(lower, "/etc/group"), id);
    write_file(dir, Path::new("passwd"), passwd.as_bytes()).map_err(step("write /etc/passwd"))?;
    write_file(dir, Path::new("group"), group.as_bytes()).map_err(step("write /etc/group"))
}

/// What the image server reads ahead: the command's start as
/// [`super::exec::exec`] will make it, and, when the user launches it
/// themself, where the server keeps what this command read of this image
/// (`image`) last time.
fn readahead_hints(plan: &Plan, image: BorrowedFd<'_>) -> Hints {
    let env = |name: &str| plan.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    Hints {
        program: plan.argv.first().map(|a| a.as_bytes().to_vec()).unwrap_or_default(),
        path: env("PATH").unwrap_or(super::env::DEFAULT_PATH).as_bytes().to_vec(),
        library_path: env("LD_LIBRARY_PATH").unwrap_or_default().as_bytes().to_vec(),
        // Root acting for a user never names a file of theirs to a server.
        profile: match plan.mode {
            Mode::Unprivileged => super::hints::start_profile(image, &plan.argv),
            Mode::Privileged => Vec::new(),
        },
    }
}

/// The innermost tmpfs among `earlier` (mounts made before) that `path`
/// lies in: what the container made there is ours, not the image's.
fn enclosing_tmpfs<'a>(earlier: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    earlier.iter().rev().find(|p| matches!(p.kind, MountKind::Tmpfs { .. }) && path.starts_with(&p.target))
}

/// Makes the link or node of `plan.mounts[i]` with `make(dir, name)` in
/// the tmpfs the plan mounted over its parent (only ours: nothing is made
/// in the image's tree).
fn make_in_tmpfs(
    root: BorrowedFd<'_>,
    plan: &Plan,
    i: usize,
    make: impl FnOnce(BorrowedFd<'_>, &std::ffi::OsStr) -> io::Result<()>,
) -> io::Result<()> {
    let target = &plan.mounts[i].target;
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let tmpfs = enclosing_tmpfs(&plan.mounts[..i], parent).ok_or_else(|| io::Error::other("not under a tmpfs of the plan"))?;
    let base = sys::open_in_root(root, &tmpfs.target, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let rel = parent.strip_prefix(&tmpfs.target).unwrap_or(Path::new(""));
    if !rel.as_os_str().is_empty() {
        skeleton_path(base.as_fd(), rel, true)?;
    }
    let dir = sys::openat(Some(base.as_fd()), &Path::new(".").join(rel), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    make(dir.as_fd(), name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn superblock(major: u16, bytes_used: u64, file_len: usize) -> tempfile::NamedTempFile {
        let mut sb = vec![0u8; file_len.max(96)];
        sb[0..4].copy_from_slice(b"hsqs");
        sb[28..30].copy_from_slice(&major.to_le_bytes());
        sb[40..48].copy_from_slice(&bytes_used.to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&sb[..file_len]).unwrap();
        f
    }

    fn check(f: &tempfile::NamedTempFile) -> Result<(), String> {
        let fd = sys::openat(None, f.path(), libc::O_RDONLY, 0).unwrap();
        check_squashfs(fd.as_fd())
    }

    #[test]
    fn squashfs_superblock_is_checked() {
        assert_eq!(check(&superblock(4, 4096, 4096)), Ok(()));
        assert!(check(&superblock(3, 4096, 4096)).unwrap_err().contains("version 3"));
        assert!(check(&superblock(4, 8192, 4096)).unwrap_err().contains("truncated"));
        assert!(check(&superblock(4, 10, 50)).unwrap_err().contains("no squashfs superblock"));
        let mut junk = tempfile::NamedTempFile::new().unwrap();
        junk.write_all(&[b'x'; 200]).unwrap();
        assert!(check(&junk).unwrap_err().contains("no squashfs superblock"));
    }
}
