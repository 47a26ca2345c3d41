//! Work on a user's bytes in a process of its own with the user's full
//! credentials: real, effective and saved uid and gid, the user's groups,
//! `no_new_privs`, and only the descriptors it needs. Root's code that must
//! parse what a user made (the ABI check's squashfs reader, in slurmstepd,
//! whose real uid is 0) runs here, so that a bug in the parser is a bug in
//! a process of the user's, which cannot take root back.
//!
//! The child is forked from a process that may have threads (slurmstepd)
//! and then runs Rust code without exec. That is sound here because glibc's
//! `fork` resets malloc's locks in the child, the plugin runs no Rust
//! thread of its own when it calls this (so no Rust lock can be held), and
//! the work takes no other lock: no logging, no NSS lookup, no dlopen.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::sys;

/// The user a child runs as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

/// How long the child may take before it is killed (a parser looping on
/// a crafted image, a file on a stalled filesystem).
const LIMIT: Duration = Duration::from_secs(300);

/// Runs `work` in a forked child as `ids`, keeping only descriptor `keep`
/// (and stdio), and returns the bytes it produced (at most `max`).
pub(crate) fn run_as_user(ids: Ids<'_>, keep: RawFd, max: usize, work: impl FnOnce() -> Vec<u8>) -> io::Result<Vec<u8>> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let groups = ids.groups.to_vec();
    // SAFETY: see the module doc for what the child may do; it ends with
    // `_exit`, never returning into the caller's code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let w_fd = w.as_raw_fd();
            sys::die_with_parent();
            sys::close_all_but(&[keep, w_fd]);
            // Which step failed, if one did, with its errno: sent to the
            // parent instead of an answer (exit code 126).
            let failed = match sys::become_user_raw(ids.uid, ids.gid, &groups) {
                Err(e) => Some(e),
                Ok(()) if !all_ids_are(ids.uid, ids.gid) => Some(("the ids check", 0)),
                Ok(()) => None,
            };
            let mut pipe = File::from(w);
            let code = match failed {
                None => {
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_default();
                    if pipe.write_all(&out).is_ok() {
                        0
                    } else {
                        125
                    }
                }
                Some((step, errno)) => {
                    let why = if errno == 0 {
                        "an id is not the user's".to_string()
                    } else {
                        io::Error::from_raw_os_error(errno).to_string()
                    };
                    let _ = pipe.write_all(format!("{step}: {why}").as_bytes());
                    126
                }
            };
            // Ends the child without running the parent's exit handlers or
            // destructors.
            sys::exit_now(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let out = read_until(r, max, Instant::now() + LIMIT);
            if out.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let status = nix::sys::wait::waitpid(child, None)?;
            let out = out?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(out),
                nix::sys::wait::WaitStatus::Exited(_, 126) => Err(io::Error::other(format!(
                    "could not take uid {}'s credentials ({})",
                    ids.uid,
                    String::from_utf8_lossy(&out)
                ))),
                other => Err(io::Error::other(format!("the process ended badly ({other:?})"))),
            }
        }
    }
}

/// Every id of this process, real, effective and saved, is the user's.
fn all_ids_are(uid: u32, gid: u32) -> bool {
    let (Ok(u), Ok(g)) = (nix::unistd::getresuid(), nix::unistd::getresgid()) else { return false };
    [u.real, u.effective, u.saved].iter().all(|x| x.as_raw() == uid)
        && [g.real, g.effective, g.saved].iter().all(|x| x.as_raw() == gid)
}

/// Reads `r` to its end, at most `max` bytes, failing past `deadline`.
fn read_until(r: OwnedFd, max: usize, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut file = File::from(r);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", LIMIT.as_secs())));
        }
        match sys::poll_readable(file.as_raw_fd(), left.as_millis().min(60_000) as i32) {
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(true) => {}
        }
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(io::Error::other(format!("more than {max} bytes of answer")));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A kept descriptor as a path, for code that takes one: the child may open
/// its own `/proc/self/fd/N` whatever its ids.
pub(crate) fn proc_fd(fd: RawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary runs as root in CI's test bed; elsewhere the
    /// credential half cannot be shown and is skipped with a message.
    fn root() -> bool {
        let is = nix::unistd::geteuid().is_root();
        if !is {
            eprintln!("skipped: needs root to switch to another user");
        }
        is
    }

    #[test]
    fn the_child_has_only_the_users_ids_and_groups_no_new_privs_and_cannot_read_roots_file() {
        // Regression (issue 18): the ABI check ran in slurmstepd's own
        // thread with only the effective ids dropped (real and saved uid
        // 0: any code running there could take root back).
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("root-only");
        std::fs::write(&secret, b"secret").unwrap();
        std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // A descriptor the child keeps, and one it must not have.
        let kept = File::open("/etc/hostname").unwrap();
        let other = File::open("/etc/passwd").unwrap();
        let (kept_fd, other_fd) = (kept.as_raw_fd(), other.as_raw_fd());
        let ids = Ids { uid: 65534, gid: 65534, groups: &[65534, 4242] };
        let out = run_as_user(ids, kept_fd, 1 << 20, || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let pick = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or("").split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
            let read = match std::fs::read(&secret) {
                Ok(_) => "read".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
            // SAFETY: integer arguments only; a test of what the child may do.
            let back_to_root = unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) } == 0;
            let fd_open = |fd: RawFd| std::fs::metadata(proc_fd(fd)).is_ok();
            format!(
                "uid={} gid={} groups={} nnp={} secret={read} root_again={back_to_root} kept={} other={}",
                pick("Uid:"),
                pick("Gid:"),
                pick("Groups:"),
                pick("NoNewPrivs:"),
                fd_open(kept_fd),
                fd_open(other_fd)
            )
            .into_bytes()
        })
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "uid=65534 65534 65534 65534 gid=65534 65534 65534 65534 groups=4242 65534 nnp=1 secret=PermissionDenied root_again=false kept=true other=false"
        );
        drop((kept, other));
    }

    #[test]
    fn a_child_that_fails_or_says_too_much_is_an_error() {
        if !root() {
            return;
        }
        let ids = Ids { uid: 65534, gid: 65534, groups: &[] };
        let e = run_as_user(ids, -1, 10, || vec![0u8; 100]).unwrap_err().to_string();
        assert!(e.contains("more than 10 bytes"), "{e}");
        let e = run_as_user(ids, -1, 10, || std::process::abort()).unwrap_err().to_string();
        assert!(e.contains("ended badly"), "{e}");
        assert_eq!(run_as_user(ids, -1, 10, || b"ok".to_vec()).unwrap(), b"ok");
    }
}
