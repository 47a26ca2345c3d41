//! The image's own /etc/passwd and /etc/group, kept between launches of an
//! unprivileged `shoal run`, so a launch of an image seen before does not
//! wait for the image server to find and decompress them (about 1 ms on the
//! test bed's 109 MB image: two lookups and a 128 KiB block).
//!
//! An entry is keyed by the squashfs file's identity (device, inode, size,
//! modification time): a changed or replaced file misses. The entry holds
//! the image's files as they are, never the merged ones, so the user's
//! current groups are merged at every launch.
//!
//! The directory is the user's own: `$XDG_RUNTIME_DIR/shoal` or
//! `/tmp/shoal-UID`, made mode 0700, and used only when it is a real
//! directory owned by the user and closed to others. Anything odd (someone
//! else's directory, a link, a full disk) means no cache, never an error.
//! Only the unprivileged launcher uses it: what it holds is the user's own
//! view of the user's own image, and root never reads it.
//!
//! Must never: fail a launch, or follow a link it did not make.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::sys;

/// Where the user's cache lives, from the caller's environment.
pub fn dir_for(uid: u32, host_env: &[(String, String)]) -> PathBuf {
    match host_env.iter().find(|(k, v)| k == "XDG_RUNTIME_DIR" && v.starts_with('/')) {
        Some((_, runtime)) => Path::new(runtime).join("shoal"),
        None => PathBuf::from(format!("/tmp/shoal-{uid}")),
    }
}

/// The entry's name for a squashfs file.
fn key(image: BorrowedFd<'_>) -> Option<String> {
    let m = std::fs::File::from(image.try_clone_to_owned().ok()?).metadata().ok()?;
    Some(format!("etc-{:x}-{:x}-{:x}-{:x}.{:x}", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The cache directory, made if missing, when it is the user's alone.
fn open_dir(dir: &Path, uid: u32) -> Option<OwnedFd> {
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    let fd = sys::openat(None, dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).ok()?;
    let m = std::fs::File::from(fd.try_clone().ok()?).metadata().ok()?;
    (m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0).then_some(fd)
}

/// A cache for one image file; `None` when there is none to use.
pub struct EtcCache {
    dir: OwnedFd,
    name: String,
}

impl EtcCache {
    pub fn open(dir: &Path, uid: u32, image: BorrowedFd<'_>) -> Option<EtcCache> {
        Some(EtcCache { name: key(image)?, dir: open_dir(dir, uid)? })
    }

    /// The image's (passwd, group), when this file was seen before.
    pub fn get(&self) -> Option<(String, String)> {
        let fd = sys::openat(Some(self.dir.as_fd()), Path::new(&self.name), libc::O_RDONLY | libc::O_NOFOLLOW, 0).ok()?;
        let mut text = String::new();
        std::fs::File::from(fd).take(2 << 20).read_to_string(&mut text).ok()?;
        let (passwd, group) = text.split_once('\0')?;
        Some((passwd.to_string(), group.to_string()))
    }

    /// Keeps the image's files for the next launch: written under a unique
    /// name, then renamed, so a reader sees a whole entry or none.
    pub fn put(&self, passwd: &str, group: &str) {
        if passwd.contains('\0') {
            return;
        }
        let tmp = format!(".{}.{}", self.name, std::process::id());
        let written = sys::openat(
            Some(self.dir.as_fd()),
            Path::new(&tmp),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
        )
        .and_then(|fd| {
            let mut f = std::fs::File::from(fd);
            f.write_all(passwd.as_bytes())?;
            f.write_all(b"\0")?;
            f.write_all(group.as_bytes())
        });
        let renamed = written.and_then(|()| {
            nix::fcntl::renameat(self.dir.as_fd(), Path::new(&tmp), self.dir.as_fd(), Path::new(&self.name)).map_err(Into::into)
        });
        if renamed.is_err() {
            let _ = nix::unistd::unlinkat(self.dir.as_fd(), Path::new(&tmp), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_runtime_dir_is_preferred_over_tmp() {
        assert_eq!(dir_for(1001, &env(&[("XDG_RUNTIME_DIR", "/run/user/1001")])), Path::new("/run/user/1001/shoal"));
        assert_eq!(dir_for(1001, &env(&[])), Path::new("/tmp/shoal-1001"));
        // A relative value is no place to keep anything.
        assert_eq!(dir_for(1001, &env(&[("XDG_RUNTIME_DIR", "run")])), Path::new("/tmp/shoal-1001"));
    }

    #[test]
    fn an_entry_round_trips_and_a_changed_image_misses() {
        let base = std::env::temp_dir().join(format!("shoal-etc-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let image = base.with_extension("sqfs");
        std::fs::write(&image, b"one").unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let open = || {
            let f = std::fs::File::open(&image).unwrap();
            EtcCache::open(&base, uid, f.as_fd())
        };
        let cache = open().expect("own fresh dir");
        assert_eq!(cache.get(), None);
        cache.put("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
        assert_eq!(open().unwrap().get(), Some(("root:x:0:0::/root:/bin/sh\n".into(), "root:x:0:\n".into())));
        std::fs::write(&image, b"other content").unwrap();
        assert_eq!(open().unwrap().get(), None, "a changed file must miss");
        // A directory open to others is not used.
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        assert!(open().is_none());
        let _ = std::fs::remove_dir_all(&base);
        let _ = std::fs::remove_file(&image);
    }
}
