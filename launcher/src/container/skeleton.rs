//! The skeleton: a small tmpfs of our own holding every mount target, laid
//! over the image as the root's top read-only layer (see `rootfs`), so
//! targets missing in the image need no write to it and every target path
//! resolves through our own directories, never through a symlink the image
//! (or a user's FUSE server) supplies.
//!
//! Must never: follow a path of the image or the host while making it
//! (everything is made relative to descriptors of our own tmpfs).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::stat::SFlag;

use super::sys;

/// The assembly tmpfs (private to the container's mount namespace): the
/// image, the skeleton, the root and the scratch directories are made in it.
pub(crate) const ASSEMBLY: &str = "/tmp";

/// `mkdir -p` (and a final empty file when `!dir`) inside `base`, which is
/// our own tmpfs: nothing here comes from the image.
pub(crate) fn skeleton_path(base: BorrowedFd<'_>, path: &Path, dir: bool) -> io::Result<()> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut cur = sys::openat(Some(base), Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let name = Path::new(c.as_os_str());
        let last = i + 1 == comps.len();
        if last && !dir {
            match sys::openat(Some(cur.as_fd()), name, libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW, 0o644) {
                Ok(_) => return Ok(()),
                // Already a directory there (another mount's parent): fine.
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        match sys::mkdirat(cur.as_fd(), name, 0o755) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        cur = sys::openat(Some(cur.as_fd()), name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    }
    Ok(())
}

pub(crate) fn write_file(dir: BorrowedFd<'_>, name: &Path, bytes: &[u8]) -> io::Result<()> {
    let fd = sys::openat(Some(dir), name, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW, 0o644)?;
    use std::io::Write;
    std::fs::File::from(fd).write_all(bytes)
}

/// Moves each top-level directory of the skeleton that the image has as a
/// symlink to where the link leads in the image. A skeleton directory /etc
/// would hide the image's `/etc -> usr/etc` and every file behind it (the
/// overlay shows the upper layer's directory, not the link); at `usr/etc` it
/// merges with the image's directory instead, and targets under /etc are
/// reached through the image's link. The link is resolved inside the image
/// (`lower`, mounted at `lower_path`) and the move is within the skeleton,
/// our own tmpfs: no host path is followed. A link that leads nowhere, to
/// the root, or into itself leaves the skeleton's directory in its place.
pub(crate) fn follow_image_links(skel: BorrowedFd<'_>, lower: BorrowedFd<'_>, lower_path: &Path) -> io::Result<()> {
    let names: Vec<std::ffi::OsString> = std::fs::read_dir(Path::new(ASSEMBLY).join("skel"))?
        .filter_map(|e| e.ok().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.file_name()))
        .collect();
    for name in names {
        let linked = nix::sys::stat::fstatat(lower, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
        if !linked {
            continue;
        }
        let Ok(dir) = sys::open_in_root(lower, &Path::new("/").join(&name), libc::O_PATH | libc::O_DIRECTORY, 0) else {
            continue;
        };
        let real = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        let Ok(to) = real.strip_prefix(lower_path) else { continue };
        let from = Path::new(&name);
        if to.as_os_str().is_empty() || to.starts_with(from) {
            continue;
        }
        merge_into(skel, from, to)?;
    }
    Ok(())
}

/// Moves the skeleton's `from` to `to` (both relative to `skel`), merging
/// into what is there already.
fn merge_into(skel: BorrowedFd<'_>, from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        skeleton_path(skel, parent, true)?;
    }
    match nix::fcntl::renameat(skel, from, skel, to) {
        Ok(()) => return Ok(()),
        Err(nix::Error::EEXIST | nix::Error::ENOTEMPTY) => {}
        Err(e) => return Err(e.into()),
    }
    let (Ok(src), Ok(dst)) = (sys::openat(Some(skel), from, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0), sys::openat(Some(skel), to, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)) else {
        // A file already where a directory would go: two targets at one
        // place; the first stays.
        return Ok(());
    };
    drop((src, dst));
    for child in std::fs::read_dir(Path::new(ASSEMBLY).join("skel").join(from))? {
        let child = child?.file_name();
        merge_into(skel, &from.join(&child), &to.join(&child))?;
    }
    nix::unistd::unlinkat(skel, from, nix::unistd::UnlinkatFlags::RemoveDir).map_err(io::Error::from)
}

/// Writes a small host file's contents (at most 1 MiB) at `target` in the
/// skeleton; a host without the file (no /etc/localtime) gets none.
pub(crate) fn copy_host_file(skel: BorrowedFd<'_>, source: &Path, target: &Path) -> io::Result<()> {
    let mut text = Vec::new();
    match std::fs::File::open(source) {
        Ok(f) => f.take(1 << 20).read_to_end(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    skeleton_path(skel, parent, true)?;
    let rel = parent.strip_prefix("/").unwrap_or(parent);
    let dir = sys::openat(Some(skel), &Path::new(".").join(rel), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    write_file(dir.as_fd(), Path::new(name), &text)
}
