//! Reading the image for host-library injection: the modules are checked
//! against the image with the user's credentials, always (root never reads
//! a user's image as root).

use std::path::{Path, PathBuf};

use super::cred;
use super::isolate;
use super::model::Plan;
use crate::config::Config;
use crate::inject::recorded::{self, Record, Recorder, Replay};
use crate::inject::{self, Assessment, DirImage, ImageFs, InjectError, Request, SquashfsImage};

/// The job's command as the container will look it up: its `argv[0]`
/// and the container's `PATH`.
#[derive(Debug, Clone, Copy)]
pub struct TaskCommand<'a> {
    pub argv0: &'a str,
    pub path: &'a str,
}

/// The program the loader will start for `cmd`, inside the image: `argv0`
/// when absolute, else the first file of that name on `PATH` (a script is
/// found too; it has no RUNPATH, which the check reads once, when it parses
/// the file). None when it is not in the image (a program in the bound cwd
/// or home, a relative path): the image's own library directories are still
/// all searched.
fn find_program(image: &dyn inject::ImageFs, cmd: TaskCommand<'_>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if cmd.argv0.contains('/') {
        vec![PathBuf::from(cmd.argv0)]
    } else {
        cmd.path.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(cmd.argv0)).collect()
    };
    candidates
        .into_iter()
        .filter(|p| p.is_absolute())
        .find(|p| inject::image::kind_of(image, p) == Some(inject::image::EntryKind::File))
}

/// Selects the requested modules (`--module` values; empty: the site's
/// `default_modules`) and checks them against the squashfs image at
/// `squashfs`, with the caller's current credentials. `None` when no module
/// is selected. `command`, when known, names the job's program, whose
/// RUNPATH copies of a library are then covered too. The SPANK plugin
/// calls this from slurmstepd's user context (effective ids already the
/// user's), once per step and node.
pub fn assess_image(
    squashfs: &Path,
    cfg: &Config,
    requested: &[String],
    cuda_visible_devices: Option<&str>,
    command: Option<TaskCommand<'_>>,
) -> Result<Option<Assessment>, InjectError> {
    let modules = inject::select_modules(cfg, requested)?;
    if modules.is_empty() {
        return Ok(None);
    }
    let image = SquashfsImage::open(squashfs).map_err(|e| InjectError::Image {
        image: squashfs.display().to_string(),
        message: e.to_string(),
    })?;
    check(&image, cfg, modules, cuda_visible_devices, command).map(Some)
}

/// The check itself, on any view of the image.
fn check(
    image: &dyn ImageFs,
    cfg: &Config,
    modules: Vec<(&str, &crate::config::ModuleConfig)>,
    cuda_visible_devices: Option<&str>,
    command: Option<TaskCommand<'_>>,
) -> Result<Assessment, InjectError> {
    let host = DirImage::new("/");
    let program = command.and_then(|c| find_program(image, c));
    let request = Request {
        modules,
        default_abi: cfg.injection.abi,
        cuda_visible_devices,
        host: &host,
        program: program.as_deref(),
    };
    inject::assess(image, &request)
}

/// The most a child's record of an image may hold (listings and the bytes
/// of the files the check read: libraries, a few MiB each).
const RECORD_MAX: usize = 1 << 30;

/// [`assess_image`] on the file `open` gives (opened as the user, called
/// only when a module is selected; `describe` names it in messages) for root acting for a user (slurmstepd, `shoal run
/// --user`): the squashfs is parsed in a child process with the user's
/// full credentials (uid, gid, `groups`; real, effective and saved) and
/// `no_new_privs` ([`super::isolate`]), which records the image's answers;
/// this process runs the check again on that record
/// ([`inject::recorded`]). A bug in the squashfs reader is then a bug in a
/// process of the user's, and a child that lies only shows another image.
#[allow(clippy::too_many_arguments)]
pub fn assess_image_as_user(
    open: impl FnOnce() -> std::io::Result<std::fs::File>,
    describe: &Path,
    cfg: &Config,
    requested: &[String],
    cuda_visible_devices: Option<&str>,
    command: Option<TaskCommand<'_>>,
    user: (u32, u32, &[u32]),
) -> Result<Option<Assessment>, InjectError> {
    use std::os::fd::AsRawFd;
    let modules = inject::select_modules(cfg, requested)?;
    if modules.is_empty() {
        return Ok(None);
    }
    let name = describe.display().to_string();
    let image = open().map_err(|e| InjectError::Image { image: name.clone(), message: e.to_string() })?;
    let fd = image.as_raw_fd();
    let ids = isolate::Ids { uid: user.0, gid: user.1, groups: user.2 };
    let bytes = isolate::run_as_user(ids, fd, RECORD_MAX, || {
        let record = match SquashfsImage::open(&isolate::proc_fd(fd)) {
            Err(e) => Record::failed(&name, e.to_string()),
            Ok(img) => {
                let rec = Recorder::new(&img, &name);
                let _ = check(&rec, cfg, modules.clone(), cuda_visible_devices, command);
                rec.into_record()
            }
        };
        recorded::encode(&record)
    })
    .map_err(|e| InjectError::Image { image: name.clone(), message: format!("the check's process (as uid {}): {e}", user.0) })?;
    let record = recorded::decode(&bytes)
        .map_err(|e| InjectError::Image { image: name.clone(), message: format!("the check's process sent a bad record: {e}") })?;
    if let Some(message) = record.open_error.clone() {
        return Err(InjectError::Image { image: name, message });
    }
    check(&Replay(record), cfg, modules, cuda_visible_devices, command).map(Some)
}

/// [`assess_image`] on the plan's image and command (`argv[0]` on the
/// plan's `PATH`), always with the user's credentials: in unprivileged mode the caller is the user; in privileged
/// mode (root for a user) this thread's effective ids are the user's for
/// the whole check, so an image is read only if the user may read it, and
/// the module's host files are read as the user will load them.
pub fn assess_modules(
    plan: &Plan,
    cfg: &Config,
    requested: &[String],
    cuda_visible_devices: Option<&str>,
) -> Result<Option<Assessment>, InjectError> {
    let path = plan.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(super::env::DEFAULT_PATH);
    let command = plan.argv.first().map(|argv0| TaskCommand { argv0, path });
    if plan.mode == super::model::Mode::Privileged && plan.identity.uid != 0 {
        // Root for a user (`shoal run --user`): the image parsed in a
        // process of the user's, as in slurmstepd.
        let path = &plan.root.squashfs;
        let open = || cred::as_user(plan, || crate::image::file::open_image_file(path, crate::image::file::Links::Follow));
        let user = (plan.identity.uid, plan.identity.gid, plan.groups.as_slice());
        return assess_image_as_user(open, path, cfg, requested, cuda_visible_devices, command, user);
    }
    let _as_user = cred::AsUser::enter(plan).map_err(|e| {
        InjectError::Module(format!("cannot take uid {}'s credentials to read the image: {e}", plan.identity.uid))
    })?;
    assess_image(&plan.root.squashfs, cfg, requested, cuda_visible_devices, command)
}
