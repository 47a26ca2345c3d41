//! One container for the tasks of a node: the first of N peers builds it,
//! the others join its namespaces with `setns`.
//!
//! The state lives in a runtime directory keyed by the caller's key (job,
//! step and *Slurm node name*: test nodes share one kernel, /run and /tmp):
//! `/run/shoal/share/KEY` for root, `$XDG_RUNTIME_DIR/shoal/share/KEY` or
//! `/tmp/shoal-UID/share/KEY` for users. An exclusive flock serializes the
//! peers (the kernel drops it when its holder dies). The state file records
//! the namespace inode numbers and the pids of peers that are inside; a
//! joiner opens `/proc/PID/ns/*` of a recorded peer and checks the inode, so
//! a recycled pid is never joined. Nothing keeps a container alive but its
//! own processes: no keeper process, no bind-mounted namespace file.
//! - a peer SIGKILLed while building: its lock goes, its half-built
//!   namespace dies with it, and the next peer builds afresh;
//! - all peers of a container gone before a late one arrives: it builds a
//!   new one (same plan), so it never waits on anything;
//! - the N-th peer removes the state; [`teardown`] removes what a killed
//!   peer left (it is idempotent).
//!
//! Must never: guess the number of peers, block without a holder that is
//! alive, or trust a pid without checking its namespace.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::stat::fstat;

use super::model::Mode;
use super::sys;

/// Which container to share and by how many processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// `JOB.STEP.NODENAME` (Slurm node name, never the hostname).
    pub key: String,
    /// Exactly how many processes will call `enter` with this key (Slurm's
    /// local task count).
    pub peers: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("invalid share key {0:?}: use letters, digits, `.`, `_` and `-` (e.g. `1234.0.n1`)")]
    Key(String),
    #[error("invalid peer count 0 for share key {0}: give the number of local tasks")]
    Peers(String),
    #[error("runtime directory {0} is not safe to use ({1}); remove it")]
    Unsafe(PathBuf, String),
    #[error("share key {key}: more than the declared {peers} peers tried to join; pass Slurm's exact local task count")]
    TooMany { key: String, peers: u32 },
    #[error("share state {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("cannot join the shared container of {key}: {err}")]
    Join { key: String, err: io::Error },
    #[error("the named container is not running on this node; start it in an earlier or concurrent step, or drop `:exec` from --container-name")]
    NotRunning,
}

/// Which live processes of a named container a task may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRule {
    /// Any live one; build when none (pyxis's `auto`, `create`).
    Any,
    /// Only those of the caller's own step (pyxis's `no_exec`: never join
    /// another step's running container).
    SameStep,
    /// Any live one, and there must be one (pyxis's `exec`).
    MustJoin,
}

/// One recorded process of a named container: `pid mntns tag`.
fn parse_members(text: &str) -> Vec<(i32, u64, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.to_string()))
        })
        .collect()
}

/// Enters a named container through its state in `dir` (root's, made by
/// the caller): under an exclusive lock, a recorded live process (its
/// mount namespace inode checked, so a recycled pid is never joined)
/// allowed by `rule` is joined; else `build` makes the container. Either
/// way this process is recorded, and dead ones are dropped. Privileged
/// (root) only: the state is root's and joins are mount namespaces alone.
pub fn enter_named<E: From<ShareError>>(
    dir: &Path,
    tag: &str,
    rule: JoinRule,
    build: impl FnOnce() -> Result<(), E>,
) -> Result<Joined, E> {
    if !valid_key(tag) {
        return Err(ShareError::Key(tag.to_string()).into());
    }
    let io_err = |err| ShareError::Io { path: dir.to_path_buf(), err };
    let dfd = sys::openat(None, dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).map_err(io_err)?;
    let lock = sys::openat(Some(dfd.as_fd()), Path::new("lock"), libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW, 0o600).map_err(io_err)?;
    sys::flock_exclusive(lock.as_fd()).map_err(io_err)?;
    let mut text = String::new();
    if let Ok(fd) = sys::openat(Some(dfd.as_fd()), Path::new("members"), libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
        let _ = fs::File::from(fd).read_to_string(&mut text);
    }
    let live: Vec<(i32, u64, String)> = parse_members(&text)
        .into_iter()
        .filter(|(pid, ino, _)| ns_ino(&format!("/proc/{pid}/ns/mnt")).is_ok_and(|(_, i)| i == *ino))
        .collect();
    let target = live.iter().rev().find(|(_, _, t)| rule != JoinRule::SameStep || t == tag);
    let how = match (target, rule) {
        (Some((pid, ino, _)), _) => {
            let join_err = |err: io::Error| ShareError::Join { key: dir.display().to_string(), err };
            let (mnt, got) = ns_ino(&format!("/proc/{pid}/ns/mnt")).map_err(join_err)?;
            if got != *ino {
                return Err(join_err(io::Error::other("the process left the container")).into());
            }
            setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| join_err(e.into()))?;
            Joined::Joined
        }
        (None, JoinRule::MustJoin) => return Err(ShareError::NotRunning.into()),
        (None, _) => {
            build()?;
            Joined::Created
        }
    };
    let (_, mine) = ns_ino("/proc/self/ns/mnt").map_err(io_err)?;
    let mut out = String::new();
    for (pid, ino, t) in &live {
        out.push_str(&format!("{pid} {ino} {t}\n"));
    }
    out.push_str(&format!("{} {mine} {tag}\n", std::process::id()));
    let tmp = format!("members.{}", std::process::id());
    let fd = sys::openat(Some(dfd.as_fd()), Path::new(&tmp), libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW, 0o600).map_err(io_err)?;
    fs::File::from(fd).write_all(out.as_bytes()).map_err(io_err)?;
    nix::fcntl::renameat(dfd.as_fd(), tmp.as_str(), dfd.as_fd(), "members").map_err(|e| io_err(e.into()))?;
    drop(lock);
    Ok(how)
}

/// The runtime directory that holds share state for `mode` and `uid`.
pub fn runtime_base(mode: Mode, uid: u32) -> PathBuf {
    match mode {
        Mode::Privileged => PathBuf::from("/run/shoal/share"),
        Mode::Unprivileged => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("shoal/share"),
            _ => PathBuf::from(format!("/tmp/shoal-{uid}/share")),
        },
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 200
        && !k.starts_with('.')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `mkdir -p` with mode 0700 and a check that every created-or-found level
/// from the first private one is ours, not a symlink, and not writable by
/// others (another user must not pre-create our runtime directory).
fn safe_dir(path: &Path, uid: u32) -> Result<(), ShareError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|err| ShareError::Io { path: path.into(), err })?;
    let mut p = Some(path);
    while let Some(d) = p {
        let md = fs::symlink_metadata(d).map_err(|err| ShareError::Io { path: d.into(), err })?;
        if md.file_type().is_symlink() {
            return Err(ShareError::Unsafe(d.into(), "a symlink".into()));
        }
        if md.uid() == uid && md.mode() & 0o022 == 0 {
            p = d.parent();
            continue;
        }
        // Above our own levels: system directories owned by root, or
        // sticky world-writable ones like /tmp.
        if md.uid() == 0 && (md.mode() & 0o022 == 0 || md.mode() & 0o1000 != 0) {
            break;
        }
        return Err(ShareError::Unsafe(d.into(), format!("owned by uid {} with mode {:o}", md.uid(), md.mode() & 0o7777)));
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct State {
    joined: u32,
    userns: Option<u64>,
    mntns: u64,
    members: Vec<i32>,
}

impl State {
    fn parse(text: &str) -> State {
        let mut s = State::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("joined"), Some(v)) => s.joined = v as u32,
                (Some("userns"), Some(v)) => s.userns = Some(v),
                (Some("mntns"), Some(v)) => s.mntns = v,
                (Some("member"), Some(v)) => s.members.push(v as i32),
                _ => {}
            }
        }
        s
    }
    fn render(&self) -> String {
        let mut t = format!("joined {}\nmntns {}\n", self.joined, self.mntns);
        if let Some(u) = self.userns {
            t.push_str(&format!("userns {u}\n"));
        }
        for m in &self.members {
            t.push_str(&format!("member {m}\n"));
        }
        t
    }
}

fn ns_ino(path: &str) -> io::Result<(OwnedFd, u64)> {
    let fd = sys::openat(None, Path::new(path), libc::O_RDONLY, 0)?;
    let ino = fstat(fd.as_fd()).map_err(io::Error::from)?.st_ino;
    Ok((fd, ino))
}

/// Namespace fds of a live recorded member, checked against the inodes.
fn find_member(state: &State) -> Option<(Option<OwnedFd>, OwnedFd)> {
    if state.mntns == 0 {
        return None;
    }
    for pid in state.members.iter().rev() {
        let Ok((mnt, ino)) = ns_ino(&format!("/proc/{pid}/ns/mnt")) else { continue };
        if ino != state.mntns {
            continue;
        }
        let user = match state.userns {
            None => None,
            Some(want) => match ns_ino(&format!("/proc/{pid}/ns/user")) {
                Ok((fd, ino)) if ino == want => Some(fd),
                _ => continue,
            },
        };
        return Some((user, mnt));
    }
    None
}

fn read_state(dir: BorrowedFd<'_>) -> State {
    let mut text = String::new();
    if let Ok(fd) = sys::openat(Some(dir), Path::new("state"), libc::O_RDONLY, 0) {
        let _ = fs::File::from(fd).read_to_string(&mut text);
    }
    State::parse(&text)
}

fn write_state(dir: BorrowedFd<'_>, state: &State, path: &Path) -> Result<(), ShareError> {
    let io_err = |err| ShareError::Io { path: path.join("state"), err };
    let tmp = format!("state.{}", std::process::id());
    let fd = sys::openat(Some(dir), Path::new(&tmp), libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, 0o600).map_err(io_err)?;
    let mut f = fs::File::from(fd);
    f.write_all(state.render().as_bytes()).map_err(io_err)?;
    nix::fcntl::renameat(dir, tmp.as_str(), dir, "state").map_err(|e| io_err(e.into()))?;
    Ok(())
}

/// What [`enter_shared`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    Created,
    Joined,
}

/// Enters the shared container of `share`, building it with `build` when
/// no live peer is inside. The lock is held across the build, so peers wait
/// for it rather than build twice.
pub fn enter_shared<E: From<ShareError>>(
    share: &Share,
    mode: Mode,
    uid: u32,
    build: impl FnOnce() -> Result<(), E>,
) -> Result<Joined, E> {
    if !valid_key(&share.key) {
        return Err(ShareError::Key(share.key.clone()).into());
    }
    if share.peers == 0 {
        return Err(ShareError::Peers(share.key.clone()).into());
    }
    let base = runtime_base(mode, uid);
    let path = base.join(&share.key);
    safe_dir(&path, uid)?;
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |err| ShareError::Io { path: p, err }
    };
    // Fds, not paths: after the build this process sees the container's tree.
    let parent = sys::openat(None, &base, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(&base))?;
    let dir = sys::openat(None, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(&path))?;
    let lock = sys::openat(Some(dir.as_fd()), Path::new("lock"), libc::O_CREAT | libc::O_RDWR, 0o600).map_err(io_err(&path))?;
    sys::flock_exclusive(lock.as_fd()).map_err(io_err(&path))?;

    let mut state = read_state(dir.as_fd());
    if state.joined >= share.peers {
        return Err(ShareError::TooMany { key: share.key.clone(), peers: share.peers }.into());
    }
    let how = match find_member(&state) {
        Some((user, mnt)) => {
            let join_err = |e: nix::Error| ShareError::Join { key: share.key.clone(), err: e.into() };
            if let Some(u) = user {
                setns(u, CloneFlags::CLONE_NEWUSER).map_err(join_err)?;
            }
            setns(mnt, CloneFlags::CLONE_NEWNS).map_err(join_err)?;
            Joined::Joined
        }
        None => {
            build()?;
            test_hold_setup();
            let (_, mnt) = ns_ino("/proc/self/ns/mnt").map_err(io_err(&path))?;
            state.mntns = mnt;
            state.userns = match mode {
                Mode::Unprivileged => Some(ns_ino("/proc/self/ns/user").map_err(io_err(&path))?.1),
                Mode::Privileged => None,
            };
            state.members.clear();
            Joined::Created
        }
    };
    state.joined += 1;
    state.members.push(std::process::id() as i32);
    if state.joined == share.peers {
        // The last declared peer: nobody else will come.
        let _ = nix::unistd::unlinkat(dir.as_fd(), "state", nix::unistd::UnlinkatFlags::NoRemoveDir);
        let _ = nix::unistd::unlinkat(dir.as_fd(), "lock", nix::unistd::UnlinkatFlags::NoRemoveDir);
        let _ = nix::unistd::unlinkat(parent.as_fd(), share.key.as_str(), nix::unistd::UnlinkatFlags::RemoveDir);
    } else {
        write_state(dir.as_fd(), &state, &path)?;
    }
    drop(lock);
    Ok(how)
}

/// Removes what is left of a share key's state (peers killed before they
/// joined). Containers need no teardown: they end with their last process,
/// and with them their mounts, loop devices and FUSE server. Idempotent.
pub fn teardown(key: &str, mode: Mode, uid: u32) -> Result<(), ShareError> {
    if !valid_key(key) {
        return Err(ShareError::Key(key.to_string()));
    }
    let path = runtime_base(mode, uid).join(key);
    match fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(ShareError::Io { path, err }),
    }
}

/// Test seam (debug builds only: a release build, what is packaged,
/// does not have it): `SHOAL_TEST_HOLD_SETUP=FILE` makes the builder
/// create FILE and wait 30 s holding the lock with a half-made container,
/// so an integration test (tests/launcher.rs) can SIGKILL it there. Only
/// delays; changes nothing.
///
/// Why it stays, and why it gives no one anything (SECURITY.md, "Test
/// hooks"): the moment it marks (built, not yet registered) has no
/// syscall of its own (a tracer would have to count calls, which change
/// whenever the setup does), so the test needs it.
/// It is read from the process environment, which is the caller's own
/// (an unprivileged `shoal run`: the user delays their own container,
/// holding a lock only their own runs take, and creates a file as
/// themselves), root's (`shoal run --user`), or slurmd's (slurmstepd's
/// environment is not the job's): never a user's in a process with more
/// rights than they have.
#[cfg(debug_assertions)]
fn test_hold_setup() {
    if let Some(hook) = std::env::var_os("SHOAL_TEST_HOLD_SETUP") {
        let _ = sys::openat(None, Path::new(&hook), libc::O_CREAT | libc::O_WRONLY, 0o600);
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}

#[cfg(not(debug_assertions))]
fn test_hold_setup() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = State { joined: 2, userns: Some(5), mntns: 7, members: vec![10, 11] };
        assert_eq!(State::parse(&s.render()), s);
        assert_eq!(State::parse(""), State::default());
    }

    #[test]
    fn named_members_parse_and_skip_garbage() {
        let m = parse_members("12 34 5.0.n1\nbad line\n7 8 5.batch.n1\n");
        assert_eq!(m, [(12, 34, "5.0.n1".to_string()), (7, 8, "5.batch.n1".to_string())]);
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key("1234.0.n1"));
        assert!(!valid_key("../etc"));
        assert!(!valid_key("a/b"));
        assert!(!valid_key(".hidden"));
        assert!(!valid_key(""));
    }

    #[test]
    fn dead_or_recycled_members_are_not_joined() {
        let me = std::process::id() as i32;
        let (_, mnt) = ns_ino("/proc/self/ns/mnt").unwrap();
        // Right pid, wrong namespace inode: a recycled pid.
        let s = State { joined: 1, userns: None, mntns: mnt + 1, members: vec![me] };
        assert!(find_member(&s).is_none());
        let s = State { joined: 1, userns: None, mntns: mnt, members: vec![i32::MAX - 1, me] };
        assert!(find_member(&s).is_some());
    }
}
