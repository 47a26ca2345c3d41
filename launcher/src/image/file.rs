//! Opening an image file a user named (`--image=PATH`, `shoal run PATH`,
//! the path in a job's pin) without ever blocking on it.
//!
//! A path can name a FIFO, a device, a socket or a directory as easily as a
//! file. `open(2)` of a FIFO for reading waits for a writer, and a read of
//! a device or a FIFO may never end: in the job prolog or in slurmstepd
//! that stalls root's code for every job of the node. So the file is opened
//! with `O_NONBLOCK` (an open that never waits), checked with `fstat` on
//! the descriptor itself (not the path, which can change), refused unless
//! it is a regular file, and only then switched back to blocking reads.
//!
//! Callers open with the credentials of the user who named the path; this
//! module decides nothing about whose they are.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Whether a symlink as the last component is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A path the user typed (`shoal run ./img.sqfs` may be a link).
    Follow,
    /// A path resolved at submission (`realpath`): a symlink there now was
    /// put there since, and is refused (`O_NOFOLLOW`).
    Refuse,
}

/// Opens `path` for reading if it is a regular file; a FIFO, device,
/// socket or directory is refused with an error naming it, before a byte
/// is read. The error's kind is `InvalidInput` for those; messages do not
/// repeat the path (callers name it).
pub fn open_image_file(path: &Path, links: Links) -> io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| {
        if links == Links::Refuse && e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "now a symbolic link (it was resolved when the job was submitted); resubmit with the image file's own path",
            )
        } else {
            e
        }
    })?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file (an unknown kind)")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not an image file: give the path of a squashfs file (or an image name)"),
        ));
    }
    // Blocking reads again (a regular file ignores O_NONBLOCK today, but a
    // filesystem may not).
    let fd = std::os::fd::AsFd::as_fd(&file);
    let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let fl = nix::fcntl::OFlag::from_bits_retain(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fifo_device_socket_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("img.sqfs");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let started = Instant::now();
        for (path, what) in [
            (fifo.as_path(), "a FIFO, not"),
            (Path::new("/dev/zero"), "a device, not"),
            (dir.path(), "a directory, not"),
        ] {
            for links in [Links::Follow, Links::Refuse] {
                let e = open_image_file(path, links).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
                assert!(e.to_string().contains(what) && e.to_string().contains("squashfs file"), "{e}");
            }
        }
        // A socket cannot be opened at all (ENXIO): still an error, at once.
        assert!(open_image_file(&sock, Links::Follow).is_err());
        // No writer ever opened the FIFO: a blocking open would never return.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_regular_file_reads_blocking_and_a_link_follows_only_when_asked() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img.sqfs");
        std::fs::write(&img, b"hsqs").unwrap();
        let link = dir.path().join("link.sqfs");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let mut s = String::new();
        let mut f = open_image_file(&img, Links::Refuse).unwrap();
        let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hsqs");
        assert!(open_image_file(&link, Links::Follow).is_ok());
        let e = open_image_file(&link, Links::Refuse).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("resubmit"), "{e}");
    }
}
