//! Namespaces: the unprivileged user namespace (the caller's uid and gid
//! mapped to themselves, setgroups denied, no subuid ranges) plus a mount
//! namespace, or a mount namespace alone for root.
//!
//! Must never map any id but the caller's own: files written inside belong
//! to the same user outside.

use std::fs;
use std::io;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Why the namespaces could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("user namespaces are disabled on this node ({0}): ask the admin to enable them (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0), or run through Slurm with --image")]
    UsernsDisabled(String),
    #[error("cannot create a mount namespace: {0}")]
    Mountns(io::Error),
    #[error("cannot make the mount namespace private: {0}")]
    Private(io::Error),
}

/// What stops user namespaces on this node, for the error message.
pub fn why_disabled(errno: i32) -> String {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let mut why = vec![format!("unshare: {}", nix::Error::from_raw(errno))];
    if let Some(v) = read("/proc/sys/user/max_user_namespaces") {
        why.push(format!("user.max_user_namespaces={v}"));
    }
    if let Some(v) = read("/proc/sys/kernel/unprivileged_userns_clone") {
        why.push(format!("kernel.unprivileged_userns_clone={v}"));
    }
    if let Some(v) = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        why.push(format!("kernel.apparmor_restrict_unprivileged_userns={v}"));
    }
    why.join(", ")
}

/// New user namespace with `uid`/`gid` mapped to themselves, and a mount
/// namespace it owns where the image's FUSE superblock is made (a server
/// forked then keeps it; an early server stays in the caller's); returns
/// the errno of a refused unshare.
pub fn new_user_and_mount(uid: u32, gid: u32) -> Result<(), i32> {
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(|e| e as i32)?;
    let write = |file: &str, text: String| fs::write(file, text).map_err(|e| e.raw_os_error().unwrap_or(libc::EPERM));
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

/// The container's mount namespace, inside the user namespace made by
/// [`new_user_and_mount`] (the namespace that one made stays the server's).
pub fn new_mount() -> Result<(), NsError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| NsError::Mountns(e.into()))?;
    make_private()
}

/// New mount namespace only (root).
pub fn enter_mount() -> Result<(), NsError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| NsError::Mountns(e.into()))?;
    make_private()
}

/// Nothing mounted from here on propagates back to the host, and host
/// mounts do not appear inside.
pub fn make_private() -> Result<(), NsError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| NsError::Private(e.into()))
}

/// `--container-remap-root`, in the task as the user, just before exec: a
/// new user namespace where the user's uid and gid are 0 (the only ids
/// mapped, so nothing the user could not do is possible, and every file
/// made is the user's outside). The process must be single-threaded.
pub fn remap_root(uid: u32, gid: u32) -> Result<(), NsError> {
    // A process whose ids changed is not dumpable, and its /proc/self maps
    // then belong to root; it is the user's through and through by now.
    nix::sys::prctl::set_dumpable(true).map_err(|e| NsError::UsernsDisabled(format!("prctl(PR_SET_DUMPABLE): {e}")))?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| NsError::UsernsDisabled(why_disabled(e as i32)))?;
    let write = |file: &str, text: String| {
        fs::write(file, text).map_err(|e| NsError::UsernsDisabled(format!("writing {file}: {e}")))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))
}
