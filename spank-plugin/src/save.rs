//! `--container-save=PATH`: when a step's tasks have ended, on its first node
//! (node 0, as pyxis does), the container's root as it is now (the image
//! plus the writable layer, whiteouts and opaque directories honoured) is
//! written as a squashfs file at PATH, which a later job runs with
//! `--image=PATH`.
//!
//! How: `shoal::save` (the writer `shoal run --save` uses too) is given
//! the staged squashfs, the writable layer and the image's run settings.
//!
//! Who: everything that reads or writes the user's data runs on a thread
//! of its own whose real, effective and saved ids are the user's (raw
//! syscalls: only that thread, which ends with the save), and so do the
//! tools it starts. Root does only two things first: opens the layer's
//! upper directory (under a root-only directory, made by the plugin) and
//! reads overlayfs's `trusted.overlay.opaque` markers there, which only
//! root can read, opening directories only, never following a link.
//! Written to a temporary file beside PATH and renamed over it: a failed
//! save leaves nothing (and an existing PATH untouched).
//!
//! Reported where the user looks: a PATH the user cannot create a file in
//! fails the step's tasks before they run (`check_before`); a save that
//! fails at the end (no task left to print it, and slurmstepd's own
//! messages go to slurmd's log only) is written to the step's stderr,
//! which the step's first task handed slurmstepd over a socket when it
//! started (`check_before`): srun prints it, a batch job has it in its
//! error file.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use shoal::image::convert::SquashOptions;
use shoal::save::{self as writer, Marks};

use crate::layers::{self, Which};
use crate::pin::Scope;
use crate::spank::Spank;
use crate::stage::{self, ReadAt};
use crate::{job, options};

/// Tasks of the step on this node that have exited (slurmstepd).
static EXITED: AtomicU32 = AtomicU32::new(0);

/// How the step's stderr reaches slurmstepd for the report of a failed
/// save (see the module doc): `ours` stays in slurmstepd, `theirs` is
/// inherited by the tasks (close-on-exec), and `stderr` is what the first
/// task sent.
struct Report {
    ours: OwnedFd,
    theirs: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

static REPORT: std::sync::Mutex<Option<Report>> = std::sync::Mutex::new(None);

fn report() -> std::sync::MutexGuard<'static, Option<Report>> {
    REPORT.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether this node saves the step's container.
fn saves_here(spank: &Spank) -> bool {
    options::request().save.is_some() && crate::task::wanted(spank) && spank.node_id().is_ok_and(|n| n == 0)
}

/// slurmstepd, before the tasks fork (`user_init`): the socket the first
/// task hands its stderr over.
pub fn prepare(spank: &Spank) {
    if !saves_here(spank) {
        return;
    }
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    if let Ok((ours, theirs)) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC) {
        *report() = Some(Report { ours, theirs: Some(theirs), stderr: None });
    }
}

/// The task (root, before exec; `task_init_privileged`): on the step's
/// first node, a PATH the user cannot create a file in fails the task now,
/// before any work is lost; the first task hands slurmstepd its stderr.
pub fn check_before(spank: &Spank, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    if !saves_here(spank) {
        return Ok(());
    }
    let Some(save) = options::request().save else { return Ok(()) };
    let env = spank.job_env().map_err(|e| e.to_string())?;
    let out = output_path(&save, &env);
    let probe = std::thread::scope(|s| {
        s.spawn(|| {
            become_user(uid, gid, groups).map_err(|e| format!("cannot switch to uid {uid}: {e}"))?;
            let (dir, tmp) = writer::temp_beside(&out, "check")?;
            File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| format!("cannot create a file in {} ({e}): give a path in a directory you can write", dir.display()))?;
            std::fs::remove_file(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))
        })
        .join()
        .unwrap_or_else(|_| Err("the check panicked".into()))
    });
    probe.map_err(|e| format!("--container-save={}: {e}; the step was not run", save.display()))?;
    if spank.local_task_id().is_ok_and(|t| t == 0) {
        if let Some(r) = report().as_ref() {
            if let Some(theirs) = &r.theirs {
                let fds = [libc::STDERR_FILENO];
                let _ = nix::sys::socket::sendmsg::<()>(
                    theirs.as_raw_fd(),
                    &[io::IoSlice::new(b"e")],
                    &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    None,
                );
            }
        }
    }
    Ok(())
}

/// slurmstepd: the stderr the first task sent, if it has arrived (the
/// tasks' end of the socket is closed: they all forked before any exits).
fn collect_stderr() {
    let mut guard = report();
    let Some(r) = guard.as_mut() else { return };
    r.theirs = None;
    if r.stderr.is_some() {
        return;
    }
    let mut buf = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC;
    if let Ok(msg) = nix::sys::socket::recvmsg::<()>(r.ours.as_raw_fd(), &mut iov, Some(&mut space), flags) {
        for c in msg.cmsgs().into_iter().flatten() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: a descriptor just received, owned by nobody else.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    r.stderr.get_or_insert(fd);
                }
            }
        }
    }
}

/// slurmstepd, after the save: a failure written to the step's stderr, and
/// the step's stderr let go (srun then sees its end).
fn finish_report(result: &Result<(), String>) {
    collect_stderr();
    let Some(r) = report().take() else { return };
    if let (Err(e), Some(fd)) = (result, r.stderr) {
        let mut f = File::from(fd);
        let _ = writeln!(f, "{}: error: {e}", crate::TAG);
    }
}

/// slurmstepd, as each task exits (root): after the last one on the step's
/// first node, the save. Done here, not in slurmstepd's exit, because
/// Slurm then kills whatever the step still runs (the writer included),
/// and because srun waits for this: when srun returns, the file is there.
pub fn task_exit(spank: &Spank) -> Result<(), String> {
    let req = options::request();
    if req.save.is_none() || !crate::task::wanted(spank) {
        return Ok(());
    }
    collect_stderr();
    let exited = EXITED.fetch_add(1, Ordering::SeqCst) + 1;
    if exited != spank.local_task_count().map_err(|e| e.to_string())? {
        return Ok(());
    }
    let result = at_step_end(spank);
    finish_report(&result);
    result
}

/// PATH as the user meant it: relative to the step's working directory.
fn output_path(save: &Path, env: &[(String, String)]) -> PathBuf {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v));
    if save.is_absolute() {
        save.to_path_buf()
    } else {
        get("PWD").or_else(|| get("SLURM_SUBMIT_DIR")).unwrap_or_else(|| "/".into()).join(save)
    }
}

/// The save (root, slurmstepd), the step's processes gone.
fn at_step_end(spank: &Spank) -> Result<(), String> {
    let req = options::request();
    let Some(save) = req.save.clone() else { return Ok(()) };
    if spank.node_id().map_err(|e| e.to_string())? != 0 {
        return Ok(());
    }
    let fail = |e: String| format!("--container-save={}: {e}; nothing was written", save.display());
    let (pin, user_file, user_config) = crate::task::step_image().ok_or_else(|| fail("the step's image is not known here".into()))?;
    let mut config = options::config();
    // The saver reads the image by path (sqfs2tar), unchecked: it reads
    // the node cache's verified copy, never the store's file in place.
    if config.node.staging == shoal::config::Staging::InPlace {
        config.node.staging = shoal::config::Staging::Copy;
    }
    let node = job::node_name()?;
    let job_id = spank.job_id().map_err(|e| e.to_string())?;
    let step_id = spank.step_id().map_err(|e| e.to_string())?;
    let user = job::identity(spank)?;
    let (squashfs, run_config) = match pin.scope {
        Scope::Site => {
            let staged = stage::stage_site(&config, &node, job_id, &pin).map_err(fail)?;
            (staged.squashfs, staged.config)
        }
        Scope::User => {
            let file = user_file.ok_or_else(|| fail("the image file was not opened".into()))?;
            let (path, _) = stage::stage_user(&config, &node, job_id, &pin, (user.uid, user.gid), move || {
                Ok(Box::new(ReadAt::new(file)) as shoal::stage::Source)
            })
            .map_err(fail)?;
            (path, user_config)
        }
    };
    // The image's run settings, kept in the saved file.
    let run_config = run_config.unwrap_or_default();
    let image_config = shoal::image::manifest::ImageConfig {
        env: run_config.env,
        entrypoint: run_config.entrypoint,
        cmd: run_config.cmd,
        workdir: run_config.workdir,
        ..Default::default()
    };
    let which = match &req.name {
        Some(n) => Which::Named(n.name.clone()),
        None => Which::Step(job::step_name(step_id)),
    };
    let upper = layers::container_dir(&config, &node, job_id, user.uid, &which).join("layer").join("upper");
    let env = spank.job_env().map_err(|e| e.to_string())?;
    let out = output_path(&save, &env);
    // Root: the layer (if the step had one) and its opaque directories.
    let layer = match std::fs::symlink_metadata(&upper) {
        Ok(md) if md.is_dir() => {
            let fd = writer::open_dir(None, &upper, libc::O_PATH).map_err(|e| fail(format!("{}: {e}", upper.display())))?;
            let marks = writer::overlay_marks(fd.as_fd(), Marks::Trusted).map_err(fail)?;
            Some((fd, marks))
        }
        _ => None,
    };
    let groups: Vec<u32> = user.groups.iter().map(|(_, g)| *g).collect();
    let opts = SquashOptions { compression: config.image.compression, block_size: config.image.block_size };
    let (uid, gid) = (user.uid, user.gid);
    let started = std::time::Instant::now();
    let summary = std::thread::scope(|s| {
        s.spawn(|| {
            become_user(uid, gid, &groups).map_err(|e| format!("cannot switch to uid {uid}: {e}"))?;
            writer::write(&squashfs, layer.as_ref().map(|(fd, m)| (fd.as_fd(), m)), &out, &opts, &image_config)
        })
        .join()
        .unwrap_or_else(|_| Err("the save thread panicked".into()))
    })
    .map_err(fail)?;
    crate::spank::log_info(&format!(
        "{}: job {job_id}.{}: saved the container to {} ({} bytes, {} entries, {:.1} s)",
        crate::TAG,
        job::step_name(step_id),
        out.display(),
        summary.size,
        summary.entries,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// This thread only, for good: real, effective and saved ids (raw
/// syscalls; glibc's wrappers would change every thread of slurmstepd).
fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let cvt = |r: libc::c_long| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: the groups slice lives across the call; integer arguments otherwise.
    unsafe {
        cvt(libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()))?;
        cvt(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        cvt(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

