//! Doing the plan's setup steps (host-library injection): called once per
//! container, by the process that built it, after pivot_root and before
//! anything of the user's runs.
//!
//! Must never: run a setup command with a capability or without
//! no_new_privs, write a generated file as root, or bind a path the user
//! could have swapped for a symlink.

use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{fstat, SFlag};

use super::cred;
use super::exec;
use super::model::{Plan, SetupStep};
use super::rootfs::BuildError;
use super::skeleton::skeleton_path;
use super::sys;

fn step_err(what: String) -> impl FnOnce(io::Error) -> BuildError {
    move |err| BuildError::Step { what, err }
}

/// [`SetupStep::Configure`]: `path` written in the container `root` if
/// its directory is there; an existing file is kept if it holds
/// `contents` (and is an error otherwise: the image's own file wins).
fn configure(root: std::os::fd::BorrowedFd<'_>, path: &Path, contents: &str) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let dir = match sys::open_in_root(root, dir, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
    match sys::openat(Some(dir.as_fd()), Path::new(name), flags, 0o644) {
        Ok(fd) => std::fs::File::from(fd).write_all(contents.as_bytes()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let fd = sys::openat(Some(dir.as_fd()), Path::new(name), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)?;
            let mut have = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(std::fs::File::from(fd), contents.len() as u64 + 1), &mut have)?;
            if have == contents.as_bytes() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::AlreadyExists, "the image has a file of its own there"))
            }
        }
        Err(e) => Err(e),
    }
}

/// Carries out `plan.setup` in the container the current process just
/// built (root pivoted, cwd `/`). Still the builder's credentials.
pub(crate) fn run_setup(plan: &Plan) -> Result<(), BuildError> {
    if plan.setup.is_empty() {
        return Ok(());
    }
    let root = sys::openat(None, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(step_err("open the container root".into()))?;
    for step in &plan.setup {
        match step {
            SetupStep::Own { path } => {
                let what = format!("give {} to uid {}", path.display(), plan.identity.uid);
                let fd = sys::open_in_root(root.as_fd(), path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                nix::unistd::fchown(
                    fd.as_fd(),
                    Some(nix::unistd::Uid::from_raw(plan.identity.uid)),
                    Some(nix::unistd::Gid::from_raw(plan.identity.gid)),
                )
                .map_err(|e| step_err(what)(e.into()))?;
            }
            SetupStep::WriteFile { path, contents } => {
                let what = format!("write {}", path.display());
                cred::as_user(plan, || {
                    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                        return Err(io::ErrorKind::InvalidInput.into());
                    };
                    skeleton_path(root.as_fd(), dir, true)?;
                    let dir = sys::open_in_root(root.as_fd(), dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    let fd = sys::openat(
                        Some(dir.as_fd()),
                        Path::new(name),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o644,
                    )?;
                    std::fs::File::from(fd).write_all(contents.as_bytes())
                })
                .map_err(step_err(what))?;
            }
            SetupStep::Configure { path, contents } => {
                let what = format!("write {}", path.display());
                cred::as_user(plan, || configure(root.as_fd(), path, contents)).map_err(step_err(what))?;
            }
            SetupStep::Run { argv, why } => run_as_user(plan, argv, why)?,
            SetupStep::BindWithin { source, target, .. } => {
                let what = format!("bind {} over {}", source.display(), target.display());
                // The user's ldconfig wrote the source: no symlink, a
                // regular file, resolved inside the container.
                let src = sys::open_in_root(root.as_fd(), source, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                let st = fstat(src.as_fd()).map_err(|e| step_err(what.clone())(e.into()))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(step_err(what)(io::Error::other("not a regular file")));
                }
                if st.st_uid != plan.identity.uid {
                    return Err(step_err(what)(io::Error::other(format!(
                        "owned by uid {}, not by the user whose setup step wrote it",
                        st.st_uid
                    ))));
                }
                let dst = sys::open_in_root(root.as_fd(), target, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                sys::mount(Some(&sys::fd_path(src.as_fd())), &sys::fd_path(dst.as_fd()), None, libc::MS_BIND, None)
                    .map_err(step_err(what.clone()))?;
                let top = sys::open_in_root(root.as_fd(), target, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                let keep = sys::locked_flags(src.as_fd()).map_err(step_err(what.clone()))?;
                let flags = libc::MS_REMOUNT | libc::MS_BIND | keep | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                sys::mount(None, &sys::fd_path(top.as_fd()), None, flags, None)
                    .map_err(step_err(format!("remount {} ro,nosuid,nodev", target.display())))?;
            }
        }
    }
    Ok(())
}

/// Runs a program of the image as the user: credentials dropped (in
/// privileged mode), no_new_privs, no capabilities, a clean environment.
fn run_as_user(plan: &Plan, argv: &[String], why: &str) -> Result<(), BuildError> {
    let what = format!("run {} ({why})", argv.join(" "));
    let Some((prog, args)) = argv.split_first() else {
        return Err(step_err(what)(io::ErrorKind::InvalidInput.into()));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().env("PATH", super::env::DEFAULT_PATH).current_dir("/");
    let child_plan = plan.clone();
    // SAFETY: runs in the forked child before exec; the launcher is
    // single-threaded here, so no lock can be held by a vanished thread.
    unsafe {
        cmd.pre_exec(move || {
            exec::harden().map_err(io::Error::other)?;
            exec::become_user(&child_plan).map_err(io::Error::other)
        });
    }
    let out = cmd.output().map_err(step_err(what.clone()))?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        if detail.len() > 400 {
            detail.truncate(400);
            detail.push_str("...");
        }
        return Err(step_err(what)(io::Error::other(format!(
            "{}{}",
            out.status,
            if detail.is_empty() { String::new() } else { format!("; it printed: {detail}") }
        ))));
    }
    Ok(())
}
