//! The last steps before the command: no_new_privs, no capabilities (the
//! bounding set too), the user's credentials, then execve in place.
//!
//! Must never exec with a capability left or without no_new_privs.

use std::convert::Infallible;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::unistd::{Gid, Uid};

use super::model::Plan;
use super::sys;

/// Why the command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}: command not found in the image (PATH={1})")]
    NotFound(String, String),
    #[error("cannot run {0}: {1}")]
    Exec(String, io::Error),
    #[error("cannot drop privileges to uid {uid}: {err}")]
    Drop { uid: u32, err: io::Error },
    #[error("cannot set no_new_privs or clear capabilities: {0}")]
    Harden(io::Error),
}

fn caps_err(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Sets no_new_privs and empties the capability bounding set. Leaves the
/// current credentials alone, so slurmstepd can still switch to the user.
pub fn harden() -> Result<(), ExecError> {
    harden_keeping_bounding(false)
}

/// [`harden`]; with `keep_bounding` the bounding set stays, for a command
/// that makes its own user namespace (`Plan::remap_root`): its capabilities
/// there come from it. no_new_privs is set either way.
pub fn harden_keeping_bounding(keep_bounding: bool) -> Result<(), ExecError> {
    sys::set_no_new_privs().map_err(ExecError::Harden)?;
    if keep_bounding {
        return Ok(());
    }
    for cap in caps::all() {
        // Capabilities this kernel does not know are not in the set.
        match caps::drop(None, CapSet::Bounding, cap) {
            Ok(()) => {}
            Err(e) if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {
                return Err(ExecError::Harden(caps_err(e)))
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Becomes the plan's user (privileged mode) and clears every remaining
/// capability set.
pub fn become_user(plan: &Plan) -> Result<(), ExecError> {
    let uid = plan.identity.uid;
    let drop_err = |err: io::Error| ExecError::Drop { uid, err };
    if plan.drop_privileges {
        let groups: Vec<Gid> = plan.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| drop_err(e.into()))?;
        let g = Gid::from_raw(plan.identity.gid);
        nix::unistd::setresgid(g, g, g).map_err(|e| drop_err(e.into()))?;
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| drop_err(e.into()))?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| ExecError::Harden(caps_err(e)))?;
    }
    Ok(())
}

/// `argv[0]` as execvp would find it on `path` (the container's PATH).
pub fn find_program(arg0: &str, path: &str) -> Option<PathBuf> {
    if arg0.contains('/') {
        return Some(PathBuf::from(arg0));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(arg0))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
}

/// Replaces the current process with the plan's command.
pub fn exec(plan: &Plan) -> Result<Infallible, ExecError> {
    let path = plan
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(super::env::DEFAULT_PATH);
    let arg0 = &plan.argv[0];
    let prog = find_program(arg0, path).ok_or_else(|| ExecError::NotFound(arg0.clone(), path.to_string()))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| ExecError::Exec(s.to_string(), io::ErrorKind::InvalidInput.into()));
    let argv: Vec<CString> = plan.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = plan.env.iter().map(|(k, v)| cstr(&format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let p = sys::cstr(&prog).map_err(|e| ExecError::Exec(arg0.clone(), e))?;
    let e = nix::unistd::execve(&p, &argv, &envp).unwrap_err();
    Err(match e {
        nix::Error::ENOENT => ExecError::NotFound(arg0.clone(), path.to_string()),
        e => ExecError::Exec(prog.display().to_string(), e.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup() {
        assert_eq!(find_program("/x/y", ""), Some(PathBuf::from("/x/y")));
        assert_eq!(find_program("sh", "/nonexistent:/bin"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("no-such-program-here", "/bin:/usr/bin"), None);
    }
}
