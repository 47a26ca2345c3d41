//! Reading the image for host-library injection: the modules are checked
//! against the image with the user's credentials, always (root never reads
//! a user's image as root).

use std::path::{Path, PathBuf};

use super::cred;
use super::model::Plan;
use crate::config::Config;
use crate::inject::{self, Assessment, DirImage, InjectError, Request, SquashfsImage};

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
    let host = DirImage::new("/");
    let program = command.and_then(|c| find_program(&image, c));
    let request = Request {
        modules,
        default_abi: cfg.injection.abi,
        cuda_visible_devices,
        host: &host,
        program: program.as_deref(),
    };
    inject::assess(&image, &request).map(Some)
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
    let _as_user = cred::AsUser::enter(plan).map_err(|e| {
        InjectError::Module(format!("cannot take uid {}'s credentials to read the image: {e}", plan.identity.uid))
    })?;
    assess_image(&plan.root.squashfs, cfg, requested, cuda_visible_devices, command)
}
