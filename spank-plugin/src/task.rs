//! slurmstepd: every task of an image step enters the node's container for
//! that step, as the step's user, before Slurm execs the task's command.
//!
//! - `user_init` (slurmstepd, with the user's effective ids): opens a
//!   user-store image and its metadata with the user's own credentials, and
//!   checks the step's host-library modules against the image (`inject.rs`).
//!   Its errors are held, not returned: srun does not show them.
//! - `task_init_privileged` (the forked task, still root): reports a held
//!   error where the user sees it, stages the image on this node, then
//!   makes or joins the container of (job, step, node) with exactly Slurm's
//!   local task count as peers (binding in the step's PMIx directories,
//!   `pmix.rs`), and sets the task's environment. The
//!   modules' mounts and setup are part of the plan (carried out by the
//!   task that builds the container). Slurm then
//!   drops to the user and execs the command inside.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal::container::{self, Cwd, Injection, JoinRule, Joined, RunImage, RunRequest, Share, SlurmPath, UserMount};
use shoal::image::store::ImageMeta;
use shoal::inject::InjectionPlan;

use crate::layers::{self, Which};
use crate::options::{self, NameMode};
use crate::pin::{self, Pin, Scope};
use crate::spank::{self, Spank};
use crate::stage::{self, ReadAt, Staged};
use crate::{choose, inject, job, pmix, TAG};

#[derive(Default)]
struct Step {
    pin: Option<Pin>,
    /// The user's image file, opened as the user.
    user_file: Option<File>,
    user_config: Option<container::RunConfig>,
    /// The modules checked against the image, once per step and node.
    injection: Option<InjectionPlan>,
    /// An error from `user_init`, reported by the tasks.
    held: Option<String>,
    /// The task's `CUDA_VISIBLE_DEVICES` as this plugin set it (this task
    /// process), to tell Slurm's later per-task value from ours.
    cuda_set: Option<String>,
    /// Slurm numbers GPUs locally (ConstrainDevices), as the container does.
    local_gpu_numbers: bool,
    /// `--container-remap-root`: made in `task_init`, as the user.
    remap_root: bool,
    /// `--container-workdir`: entered in `task_init`, after Slurm's own
    /// chdir to the job's directory.
    workdir: Option<PathBuf>,
    /// The image's entrypoint, when the step runs it (`entrypoint.rs`).
    entrypoint: Vec<String>,
}

static STEP: Mutex<Option<Step>> = Mutex::new(None);

fn step() -> MutexGuard<'static, Option<Step>> {
    STEP.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether this step runs in an image.
/// Whether this step runs in an image: `--image` (given, or replayed from
/// the job), or a pin in the job environment (an image named only through
/// $SHOAL_IMAGE at submission). Submission drops the pin from steps that
/// must not run in the image.
pub(crate) fn wanted(spank: &Spank) -> bool {
    let req = options::request();
    !req.no_image && (req.image.is_some() || req.name.is_some() || spank.getenv(pin::ENV).is_some())
}

/// The step's image as `user_init` pinned it (an index entry chosen), the
/// user's image file opened then and its run settings, for
/// `--container-save` at step end.
pub(crate) fn step_image() -> Option<(Pin, Option<File>, Option<container::RunConfig>)> {
    let guard = step();
    let state = guard.as_ref()?;
    Some((state.pin.clone()?, state.user_file.as_ref().and_then(|f| f.try_clone().ok()), state.user_config.clone()))
}

/// The directory of this step's named container on this node, if any.
fn named_dir(spank: &Spank) -> Result<Option<PathBuf>, String> {
    let Some(name) = options::request().name else { return Ok(None) };
    let node = job::node_name()?;
    let job_id = spank.job_id().map_err(|e| e.to_string())?;
    let uid = spank.uid().map_err(|e| e.to_string())?;
    Ok(Some(layers::container_dir(&options::config(), &node, job_id, uid, &Which::Named(name.name))))
}

pub fn user_init(spank: &Spank) -> Result<(), String> {
    // `PYXIS_CONTAINER_*` defaults from the job's environment (the options
    // themselves arrived with the step) decide whether it wants an image.
    let defaults = if options::pyxis_enabled() {
        let cwd = working_dir(&spank.job_env().map_err(|e| e.to_string())?);
        options::apply_pyxis_env_defaults_now(|n| spank.getenv(n), &cwd)
    } else {
        Ok(())
    };
    if let Err(e) = defaults {
        // Held, like every user_init error: srun would not show it.
        *step() = Some(Step { held: Some(e), ..Step::default() });
        return Ok(());
    }
    if !wanted(spank) {
        return Ok(());
    }
    let mut state = Step::default();
    if let Err(e) = open_as_user(spank, &mut state) {
        state.held = Some(e);
    }
    *step() = Some(state);
    crate::save::prepare(spank);
    Ok(())
}

fn open_as_user(spank: &Spank, state: &mut Step) -> Result<(), String> {
    // An existing named container keeps the image it was made from, as
    // pyxis's do (the step's image is then not used).
    let existing = named_dir(spank)?.and_then(|d| layers::read_meta(&d));
    let mut pin = match (existing, spank.getenv(pin::ENV)) {
        (Some(meta), _) => meta.pin,
        (None, Some(value)) => Pin::from_env(&value)?,
        (None, None) if options::request().name.is_some() => {
            let name = options::request().name.map(|n| n.name).unwrap_or_default();
            return Err(format!(
                "container {name:?} does not exist on node {} yet: give the image to create it from (--container-image or --image)",
                job::node_name().unwrap_or_default()
            ));
        }
        (None, None) => {
            return Err(format!(
                "the job asked for an image but its environment has no ${}; submit with the default --export=ALL \
                 (or keep ${} in the exported variables)",
                pin::ENV,
                pin::ENV
            ))
        }
    };
    // `--module` reaches slurmstepd as an option; `$SHOAL_MODULE` (checked
    // at submission) only through the job's environment.
    let mut req = options::request();
    if req.modules.is_none() {
        if let Some(v) = spank.getenv("SHOAL_MODULE").filter(|v| !v.is_empty()) {
            options::set_modules(&mut req, &v).map_err(|e| format!("$SHOAL_MODULE: {e}"))?;
        }
    }
    let modules = req.modules;
    if pin.index {
        // An image index: this node's entry, before anything is staged.
        let config = options::config();
        let node = job::node_name()?;
        let job_request = shoal::select::resolve::job_request(&config, modules.as_deref().unwrap_or(&[]));
        let nodelist = spank.getenv("SLURM_JOB_NODELIST");
        let (chosen, how) = choose::choose(&config, &pin, &node, nodelist.as_deref(), &job_request)?;
        spank::log_info(&format!("{TAG}: job {}: image {}: {how}", spank.job_id().unwrap_or(0), pin.requested));
        pin = chosen;
    }
    if pin.scope == Scope::User {
        // Never waiting on a FIFO or reading a device in slurmstepd; the
        // pin's path was resolved at submission (a symlink now is new).
        let file = shoal::image::file::open_image_file(&pin.squashfs, shoal::image::file::Links::Refuse)
            .map_err(|e| format!("image {}: {}: {e}", pin.requested, pin.squashfs.display()))?;
        // A store image's settings are in its meta.json; a saved
        // container's in its file (`image::trailer`).
        state.user_config = read_meta(&pin.squashfs, pin.digest.as_str())
            .or_else(|| shoal::image::trailer::read(&file).map(|c| shoal::resolve::run_config(&c)));
        state.user_file = Some(file);
    }
    // With the user's ids, on the pinned file: the copy staged later is
    // checked to hold the same bytes.
    let env = spank.job_env().map_err(|e| e.to_string())?;
    // The step's program as the container's PATH finds it (the image's
    // PATH when its metadata is at hand, else the standard one).
    let argv = spank.argv().unwrap_or_default();
    let path = state
        .user_config
        .as_ref()
        .and_then(|c| c.env.iter().find_map(|e| e.strip_prefix("PATH=")))
        .unwrap_or(container::DEFAULT_PATH);
    let command = argv.first().map(|argv0| container::TaskCommand { argv0, path });
    // The check parses the image in a process of the user's own (their
    // uid, gid and groups; real, effective and saved), from the file opened
    // above (a site image: opened now, with the user's effective ids).
    let user = job::identity(spank)?;
    let groups: Vec<u32> = user.groups.iter().map(|(_, g)| *g).collect();
    let user_file = state.user_file.as_ref().map(File::try_clone);
    let open = || match user_file {
        Some(f) => f,
        None => shoal::image::file::open_image_file(&pin.squashfs, shoal::image::file::Links::Follow),
    };
    state.injection =
        inject::assess(&options::config(), modules.as_deref(), open, &pin.squashfs, &env, command, (user.uid, user.gid, &groups))
            .map_err(|e| format!("image {}: {e}", pin.requested))?;
    state.pin = Some(pin);
    Ok(())
}

/// The most of a user's `meta.json` that slurmstepd reads (the store
/// writes a few KiB). An unbounded read of a user's file (a link to
/// /dev/zero) would grow slurmstepd until the OOM killer acts, and sites
/// that shield slurmstepd (`SLURMSTEPD_OOM_ADJ`) would lose other users'
/// processes instead.
const META_MAX: u64 = 1 << 20;

/// Run settings of a user-store image, from the `meta.json` beside it.
fn read_meta(squashfs: &Path, digest: &str) -> Option<container::RunConfig> {
    use std::io::Read;
    let file = File::open(squashfs.parent()?.join("meta.json")).ok()?;
    let mut text = String::new();
    file.take(META_MAX + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > META_MAX {
        return None;
    }
    let meta: ImageMeta = serde_json::from_str(&text).ok()?;
    (meta.digest.as_str() == digest).then(|| shoal::resolve::run_config(&meta.config))
}

pub fn task_init_privileged(spank: &Spank) -> Result<(), String> {
    let mut guard = step();
    let Some(state) = guard.as_mut() else { return Ok(()) };
    if let Some(e) = state.held.take() {
        return Err(e);
    }
    let Some(pin) = state.pin.clone() else { return Ok(()) };
    let injection = state.injection.clone();
    let config = options::config();
    let node = job::node_name()?;
    let job_id = spank.job_id().map_err(|e| e.to_string())?;
    let step_id = spank.step_id().map_err(|e| e.to_string())?;
    let user = job::identity(spank)?;
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<u32> = user.groups.iter().map(|(_, g)| *g).collect();
    crate::save::check_before(spank, uid, gid, &groups)?;

    let staged = match pin.scope {
        Scope::Site => stage::stage_site(&config, &node, job_id, &pin)?,
        Scope::User => {
            let file = state
                .user_file
                .as_ref()
                .ok_or("the user's image was not opened")?
                .try_clone()
                .map_err(|e| e.to_string())?;
            let (path, verity) = stage::stage_user(&config, &node, job_id, &pin, (user.uid, user.gid), move || {
                Ok(Box::new(ReadAt::new(file)) as shoal::stage::Source)
            })?;
            Staged { squashfs: path, scope: crate::pin::Scope::User, config: state.user_config.clone(), verity }
        }
    };
    drop(guard);

    let host_env = spank.job_env().map_err(|e| e.to_string())?;
    let cwd = working_dir(&host_env);
    let req = options::request();
    // Named containers are for keeping changes: writable unless asked not.
    // So are containers to be saved (`--container-save`).
    let writable = req.writable.unwrap_or(req.name.is_some() || req.save.is_some());
    // `--container-env`: the job's value wins over the image's.
    let env: Vec<(String, String)> = req
        .env_names
        .iter()
        .filter_map(|n| host_env.iter().find(|(k, _)| k == n).cloned())
        .collect();
    let mounts = req
        .mounts
        .iter()
        .map(|spec| UserMount::parse(spec, &cwd).map_err(|e| format!("--mount={spec:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tag = job::share_key(job_id, step_id, &node);
    let named = req.name.clone().map(|n| {
        let dir = layers::container_dir(&config, &node, job_id, uid, &Which::Named(n.name.clone()));
        (n, dir)
    });
    let layer_dir = match &named {
        Some((_, dir)) => Some(dir.clone()),
        None if writable => Some(layers::container_dir(&config, &node, job_id, uid, &Which::Step(job::step_name(step_id)))),
        None => None,
    };
    let upper = match &layer_dir {
        Some(dir) => Some(layers::prepare(&config, dir, uid, gid)?),
        None => None,
    };
    let slurm = slurm_binds(spank, step_id, &config)?;
    let pmix = pmix::step_dirs_to_bind(&host_env, &node, uid, job_id, step_id)
        .map_err(|e| format!("image {}: --mpi=pmix: {e}", pin.requested))?;
    let injection = injection.map(|plan| Injection { task_gpus: inject::task_gpus(&host_env), plan });
    let request = RunRequest {
        image: RunImage {
            squashfs: staged.squashfs,
            config: staged.config.unwrap_or_default(),
            scope: staged.scope,
            verity: staged.verity,
        },
        // Slurm execs the task's own argv; the plan's is not used.
        argv: vec!["/bin/true".into()],
        entrypoint: false,
        user,
        privileged: true,
        cwd,
        host_env: host_env.clone(),
        env,
        mounts,
        writable,
        // Privileged: the host devpts is bound, the terminal keeps its name.
        terminal: None,
        mount_home: req.mount_home != Some(false),
        slurm,
        pmix,
        injection,
        upper,
    };
    let mut plan = container::plan(&request, &config).map_err(|e| match e {
        container::PlanError::Injection(_) | container::PlanError::Gpu(_) => format!("image {}: {e}", pin.requested),
        e => e.to_string(),
    })?;
    let entrypoint =
        if crate::entrypoint::wanted(req.entrypoint, &config) { request.image.config.entrypoint.clone() } else { Vec::new() };
    if let Some(w) = &req.workdir {
        plan.cwd = Cwd { preferred: Some(w.clone()), fallback: w.clone() };
    }
    let workdir = req.workdir.clone();
    if req.remap_root == Some(true) {
        container::plan_remap_root(&mut plan, &config);
    }
    if req.show_plan {
        // The task's own stderr (its output file or srun's terminal): the
        // same text, from the same lowering, as `shoal run --dry-run`.
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), "{}", plan.render());
    }
    let peers = spank.local_task_count().map_err(|e| e.to_string())?;
    let entered = match &named {
        Some((name, dir)) => {
            let meta = layers::write_meta_once(dir, &layers::Meta { pin: pin.clone(), created_by: tag.clone() })?;
            if name.mode == NameMode::Create && meta.created_by != tag {
                return Err(format!(
                    "--container-name={}:create: a container of that name already exists on {node} (made by step {}); pick another name, or drop :create to use it",
                    name.name, meta.created_by
                ));
            }
            let rule = match name.mode {
                NameMode::Auto | NameMode::Create => JoinRule::Any,
                NameMode::Exec => JoinRule::MustJoin,
                NameMode::NoExec => JoinRule::SameStep,
            };
            container::enter_named(&plan, dir, &tag, rule, peers)
                .map_err(|e| format!("container {:?} (image {}): {e}", name.name, pin.requested))?
        }
        None => {
            let share = Share { key: tag.clone(), peers };
            container::enter(&plan, Some(&share)).map_err(|e| format!("image {}: {e}", pin.requested))?
        }
    };
    if let (Some(layer), Some(Joined::Created)) = (&plan.root.upper, entered.joined) {
        if layer.own_dirs && plan.root.writable {
            layers::mark_ready(layer);
        }
    }

    spank::log_verbose(&format!("{TAG}: task in image {} ({}), cwd {}", pin.requested, pin.digest, entered.cwd.display()));
    apply_env(spank, &host_env, &plan.env)?;
    if let Some(state) = step().as_mut() {
        state.cuda_set = plan.env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").map(|(_, v)| v.clone());
        state.local_gpu_numbers = inject::local_gpu_numbers(&host_env);
        state.remap_root = plan.remap_root;
        state.workdir = workdir;
        state.entrypoint = entrypoint;
    }
    Ok(())
}

/// Each task, as the user, just before exec: Slurm sets a task's own GPUs
/// (`--gpus-per-task`, `--gpu-bind`) only after `task_init_privileged`, as
/// host numbers; they are renumbered for the container here.
pub fn task_init(spank: &Spank) -> Result<(), String> {
    let guard = step();
    let Some(state) = guard.as_ref() else { return Ok(()) };
    if let (Some(injection), false) = (&state.injection, state.local_gpu_numbers) {
        // Not yet the container's numbering.
        inject::task_gpus_from_slurm(spank, injection, state.cuda_set.as_deref(), options::config().launcher.host_dev)?;
    }
    if let Some(w) = &state.workdir {
        nix::unistd::chdir(w.as_path()).map_err(|e| {
            format!("--container-workdir={}: cannot enter it in the container ({e}); give a directory the image has", w.display())
        })?;
    }
    crate::entrypoint::apply(spank, &state.entrypoint)?;
    if state.remap_root {
        // Last: the task is the user now, and stays so outside.
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        container::remap_root(uid, gid).map_err(|e| format!("--container-remap-root: {e}"))?;
    }
    Ok(())
}

/// The task's working directory as Slurm will set it (srun's cwd, or the
/// batch job's submit directory).
fn working_dir(env: &[(String, String)]) -> PathBuf {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v));
    std::env::current_dir()
        .ok()
        .filter(|d| d != Path::new("/"))
        .or_else(|| get("PWD"))
        .or_else(|| get("SLURM_SUBMIT_DIR"))
        .unwrap_or_else(|| "/".into())
}

/// What a task inside needs from the host to go on being a Slurm task: the
/// batch script itself (it lives in slurmd's spool), and the Slurm client,
/// config and munge socket so `srun` works inside (`slurm.host_paths`), and
/// where srun runs, what its MPI plugins load (`slurm.launch_host_paths`).
fn slurm_binds(spank: &Spank, step: u32, config: &shoal::Config) -> Result<Vec<(PathBuf, SlurmPath)>, String> {
    let mut binds = Vec::new();
    if job::is_batch(step) {
        let argv = spank.argv().map_err(|e| e.to_string())?;
        if let Some(dir) = argv.first().and_then(|s| Path::new(s).parent()) {
            binds.push((dir.to_path_buf(), SlurmPath::BatchScript));
        }
    }
    for p in &config.slurm.host_paths {
        if p.exists() {
            binds.push((p.clone(), SlurmPath::Client));
        }
    }
    if job::starts_steps(step) {
        for p in &config.slurm.launch_host_paths {
            if p.exists() {
                binds.push((p.clone(), SlurmPath::SrunMpiPlugin));
            }
        }
    }
    Ok(binds)
}

/// Makes the task's environment the plan's: variables the plan dropped
/// (host loader settings, ...) are unset, new and changed ones set.
fn apply_env(spank: &Spank, before: &[(String, String)], after: &[(String, String)]) -> Result<(), String> {
    for (k, _) in before {
        if !after.iter().any(|(a, _)| a == k) {
            spank.unsetenv(k).map_err(|e| e.to_string())?;
        }
    }
    for (k, v) in after {
        if !before.iter().any(|(b, bv)| b == k && bv == v) {
            spank.setenv(k, v).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_meta_json_is_not_read() {
        // Regression (issue 18): meta.json was read whole, as the user but
        // inside slurmstepd; a link to /dev/zero exhausted the node's
        // memory. A meta.json past the bound is ignored (the image's
        // defaults are used), read no further than the bound.
        let dir = std::env::temp_dir().join(format!("shoal-meta-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let meta = format!(
            r#"{{"digest":"{digest}","squashfs_sha256":"","config":{{"Env":["PATH=/x"]}},"source_ref":"x","platform":null,"size":1,"created":null,"stored_at":0}}"#
        );
        std::fs::write(dir.join("meta.json"), &meta).unwrap();
        let sqfs = dir.join("image.sqfs");
        assert!(read_meta(&sqfs, &digest).is_some(), "a normal meta.json is read");
        // Valid JSON, but padded past the bound with whitespace.
        let padded = format!("{}{meta}", " ".repeat(META_MAX as usize));
        std::fs::write(dir.join("meta.json"), padded).unwrap();
        assert!(read_meta(&sqfs, &digest).is_none(), "a meta.json over the bound was read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
