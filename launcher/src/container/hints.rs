//! What the launcher tells the image server of the command it will exec,
//! for the server to read ahead (`image_server::readahead`); sent through
//! the early server's socket (`fuse.rs`). Plain data, always built:
//! `rootfs.rs` computes it whether or not this binary has the built-in
//! server (the `image-server` feature).

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What the launcher knows of the command it will exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `argv[0]`: a path, or a name looked up in `path`.
    pub program: Vec<u8>,
    /// The container's `PATH`.
    pub path: Vec<u8>,
    /// The container's `LD_LIBRARY_PATH`.
    pub library_path: Vec<u8>,
    /// Where the server keeps this start's profile (the image's blocks
    /// the same command read last time, in order: [`start_profile`]);
    /// empty for none.
    pub profile: Vec<u8>,
}

#[cfg_attr(not(feature = "image-server"), allow(dead_code))]
impl Hints {
    /// The hints as bytes for the early server's socket: the fields,
    /// NUL-separated (none can hold a NUL: they are C strings and a path).
    pub fn encode(&self) -> Vec<u8> {
        [&self.program[..], &self.path, &self.library_path, &self.profile].join(&0u8)
    }

    /// The start profile's file, if the launcher named one.
    pub fn profile_path(&self) -> Option<&Path> {
        (!self.profile.is_empty()).then(|| Path::new(OsStr::from_bytes(&self.profile)))
    }

    pub fn decode(bytes: &[u8]) -> Hints {
        let mut f = bytes.split(|b| *b == 0).map(<[u8]>::to_vec);
        Hints {
            program: f.next().unwrap_or_default(),
            path: f.next().unwrap_or_default(),
            library_path: f.next().unwrap_or_default(),
            profile: f.next().unwrap_or_default(),
        }
    }
}

/// The start profile's file for this image file (`image`, opened) and
/// command (`argv`): `$XDG_CACHE_HOME/shoal/starts/KEY`, else
/// `~/.cache/shoal/starts/KEY`, KEY a hash of the file's identity (device,
/// inode, size, modification time) and the command line. Empty when
/// neither directory is known (no absolute `XDG_CACHE_HOME` or `HOME`).
/// Only for a launch by the user themself: the server, as the user, reads
/// and writes it; it only ever says which blocks to decompress early.
pub fn start_profile(image: BorrowedFd<'_>, argv: &[String]) -> Vec<u8> {
    let dir = |var: &str, below: &str| {
        std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).map(|p| p.join(below))
    };
    let Some(base) = dir("XDG_CACHE_HOME", "shoal/starts").or_else(|| dir("HOME", ".cache/shoal/starts")) else {
        return Vec::new();
    };
    let Ok(st) = nix::sys::stat::fstat(image) else { return Vec::new() };
    let mut h = Sha256::new();
    for n in [st.st_dev, st.st_ino, st.st_size as u64, st.st_mtime as u64, st.st_mtime_nsec as u64] {
        h.update(n.to_le_bytes());
    }
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    let key: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
    OsString::from(base.join(key)).into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_profile_depends_on_the_file_and_the_command() {
        let a = tempfile::NamedTempFile::new().unwrap();
        let b = tempfile::NamedTempFile::new().unwrap();
        let (fa, fb) = (a.as_file().as_fd(), b.as_file().as_fd());
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let p = start_profile(fa, &cmd("python3 -c x"));
        if p.is_empty() {
            return; // no HOME in this environment
        }
        assert!(String::from_utf8_lossy(&p).contains("shoal/starts/"), "{}", String::from_utf8_lossy(&p));
        assert_eq!(p, start_profile(fa, &cmd("python3 -c x")));
        assert_ne!(p, start_profile(fa, &cmd("python3 -c y")));
        assert_ne!(p, start_profile(fb, &cmd("python3 -c x")));
        // "a b" + "c" is not "a" + "b c".
        assert_ne!(start_profile(fa, &cmd("a b")), start_profile(fa, &["a b".into()]));
    }
}
