//! The options Shoal adds to srun, sbatch and salloc, and their values.
//!
//! Slurm calls an option's callback with no handle and may call it more than
//! once for the same option (from `#SBATCH` lines, the command line, the
//! environment of a job step, and again in slurmstepd), so values live in
//! process-wide state: a repeat with the same value is fine, a conflicting
//! one is an error. `--mount`/`--volume` accumulate instead (each value may
//! hold several mounts separated by `;`, Shifter's spelling).
//!
//! Defaults may come from the environment (`SHOAL_IMAGE`, `SHOAL_MOUNT`,
//! `SHOAL_MODULE`), which is how a site or a user sets them for every job;
//! a command-line option wins over its variable.

use std::os::raw::{c_char, c_int};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal::container::UserMount;
use shoal::ImageSpec;

use crate::pyxis::PyxisOpt;
use crate::spank::{self, OptionSpec, Spank};

/// What the user asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Request {
    pub image: Option<ImageSpec>,
    /// `SRC:DST[:FLAGS]` specs in the order given.
    pub mounts: Vec<String>,
    /// `--module` names; `None` means "the site's default modules".
    pub modules: Option<Vec<String>>,
    /// `--no-image`: this step runs on the host even in an image job.
    pub no_image: bool,
    /// `--image-select`: how the nodes pick from an image index.
    pub select: Option<shoal::select::SelectMode>,
    /// `--writable` / `--container-writable` (true), `--container-readonly`
    /// (false); unset: read-only, except named containers.
    pub writable: Option<bool>,
    /// `--container-workdir`: the tasks' working directory inside.
    pub workdir: Option<PathBuf>,
    /// `--container-name`.
    pub name: Option<ContainerName>,
    /// `--container-save`: squashfs file written at step end.
    pub save: Option<PathBuf>,
    /// `--[no-]container-mount-home`; unset: home is bound.
    pub mount_home: Option<bool>,
    /// `--[no-]container-remap-root`; unset: the user is themself.
    pub remap_root: Option<bool>,
    /// `--[no-]container-entrypoint`; unset: the site's
    /// `[slurm] execute_entrypoint`.
    pub entrypoint: Option<bool>,
    /// `--container-env`: variables whose job value wins over the image's.
    pub env_names: Vec<String>,
    /// `--image-show-plan`: each task prints its container's plan.
    pub show_plan: bool,
}

/// A named container (`--container-name=NAME[:MODE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerName {
    pub name: String,
    pub mode: NameMode,
}

/// What a step does with a named container on a node (pyxis's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMode {
    /// Join it when it runs, else start from its saved state, else create it.
    Auto,
    /// Create it; an existing container of that name is an error.
    Create,
    /// Join it; it must be running.
    Exec,
    /// Start it from its saved state (or create it), never join.
    NoExec,
}

struct State {
    request: Request,
}

static STATE: Mutex<State> = Mutex::new(State {
    request: Request {
        image: None,
        mounts: Vec::new(),
        modules: None,
        no_image: false,
        select: None,
        writable: None,
        workdir: None,
        name: None,
        save: None,
        mount_home: None,
        remap_root: None,
        entrypoint: None,
        env_names: Vec::new(),
        show_plan: false,
    },
});

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock is already reported by `guard`; the
    // state itself stays consistent (plain values), so keep going.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The site config, kept in [`crate::site`]; here for the callers that
/// read it with the options.
pub use crate::site::config;

/// The request as parsed so far.
pub fn request() -> Request {
    state().request.clone()
}

#[derive(Clone, Copy)]
enum Opt {
    Image = 1,
    Mount = 2,
    Volume = 3,
    Module = 4,
    NoImage = 5,
    ImageSelect = 6,
    Writable = 7,
    ShowPlan = 8,
}

macro_rules! option {
    ($name:ident, $opt:expr, $cname:literal, $arg:expr, $usage:literal) => {
        static $name: OptionSpec = OptionSpec {
            name: $cname,
            arg: $arg,
            usage: $usage,
            val: $opt as c_int,
            callback: option_callback,
        };
    };
}

option!(IMAGE, Opt::Image, c"image", Some(c"REF"),
    c"[shoal] Run the job's tasks inside the container image REF: NAME[:TAG], \
REGISTRY[:PORT]/NAME[:TAG], NAME@sha256:DIGEST, docker://..., id:DIGEST, or a path \
to a squashfs file. Pull it first with `shoal pull REF`. Default: $SHOAL_IMAGE.");
option!(MOUNT, Opt::Mount, c"mount", Some(c"SRC:DST[:ro]"),
    c"[shoal] Bind host path SRC at DST inside the image (read-only with :ro). \
Repeat the option or separate several with ';'. Default: $SHOAL_MOUNT.");
option!(VOLUME, Opt::Volume, c"volume", Some(c"SRC:DST[:ro]"),
    c"[shoal] Same as --mount (Shifter's spelling).");
option!(MODULE, Opt::Module, c"module", Some(c"NAME[,NAME]"),
    c"[shoal] Site modules to load into the image (host MPI, GPU, ...); 'none' \
turns off the site's defaults. Default: $SHOAL_MODULE.");
option!(NO_IMAGE, Opt::NoImage, c"no-image", None,
    c"[shoal] Run this step on the host even though the job has an image.");
option!(WRITABLE, Opt::Writable, c"writable", None,
    c"[shoal] Writable container root: changes go to a node-local layer of yours, removed at step end.");
option!(SHOW_PLAN, Opt::ShowPlan, c"image-show-plan", None,
    c"[shoal] Each task prints its container's plan on its standard error before it starts: the image \
and how it is served, every mount in order with its flags, the environment (what `shoal run --dry-run` prints).");

// pyxis's options (`[slurm] pyxis_options = true`), with pyxis's spellings.
option!(P_IMAGE, PyxisOpt::Image, c"container-image", Some(c"[USER@][REGISTRY#]IMAGE[:TAG]|PATH"),
    c"[shoal, pyxis] The image for the tasks, as --image; REGISTRY#IMAGE is REGISTRY/IMAGE. Default: $PYXIS_CONTAINER_IMAGE.");
option!(P_MOUNTS, PyxisOpt::Mounts, c"container-mounts", Some(c"SRC:DST[:FLAGS][,SRC:DST...]"),
    c"[shoal, pyxis] Bind mounts; flags joined with '+': ro, rw, rbind, private, rprivate, x-create=dir|file|auto. Default: $PYXIS_CONTAINER_MOUNTS.");
option!(P_WORKDIR, PyxisOpt::Workdir, c"container-workdir", Some(c"PATH"),
    c"[shoal, pyxis] Working directory inside the container.");
option!(P_NAME, PyxisOpt::Name, c"container-name", Some(c"NAME[:auto|create|exec|no_exec]"),
    c"[shoal, pyxis] Keep the container's state on each node under NAME for later steps (writable unless --container-readonly).");
option!(P_SAVE, PyxisOpt::Save, c"container-save", Some(c"PATH"),
    c"[shoal, pyxis] At step end, save the container (image and changes) as a squashfs file at PATH, on the step's first node.");
option!(P_MOUNT_HOME, PyxisOpt::MountHome, c"container-mount-home", None,
    c"[shoal, pyxis] Bind your home directory (the default).");
option!(P_NO_MOUNT_HOME, PyxisOpt::NoMountHome, c"no-container-mount-home", None,
    c"[shoal, pyxis] Do not bind your home directory.");
option!(P_REMAP_ROOT, PyxisOpt::RemapRoot, c"container-remap-root", None,
    c"[shoal, pyxis] Be uid 0 inside a user namespace (still yourself outside, no privilege gained).");
option!(P_NO_REMAP_ROOT, PyxisOpt::NoRemapRoot, c"no-container-remap-root", None,
    c"[shoal, pyxis] Be yourself inside (the default).");
option!(P_ENTRYPOINT, PyxisOpt::Entrypoint, c"container-entrypoint", None,
    c"[shoal, pyxis] Run the image's ENTRYPOINT with the command as its arguments.");
option!(P_NO_ENTRYPOINT, PyxisOpt::NoEntrypoint, c"no-container-entrypoint", None,
    c"[shoal, pyxis] Run the command without the image's entrypoint (default unless the site sets execute_entrypoint).");
option!(P_ENTRYPOINT_LOG, PyxisOpt::EntrypointLog, c"container-entrypoint-log", None,
    c"[shoal, pyxis] Accepted: the entrypoint's output is always the task's output.");
option!(P_WRITABLE, PyxisOpt::Writable, c"container-writable", None,
    c"[shoal, pyxis] Writable container root (as --writable).");
option!(P_READONLY, PyxisOpt::Readonly, c"container-readonly", None,
    c"[shoal, pyxis] Read-only container root.");
option!(P_ENV, PyxisOpt::Env, c"container-env", Some(c"NAME[,NAME...]"),
    c"[shoal, pyxis] Variables whose job value wins over the image's.");

static PYXIS_OPTIONS: [&OptionSpec; 15] = [
    &P_IMAGE, &P_MOUNTS, &P_WORKDIR, &P_NAME, &P_SAVE, &P_MOUNT_HOME, &P_NO_MOUNT_HOME, &P_REMAP_ROOT,
    &P_NO_REMAP_ROOT, &P_ENTRYPOINT, &P_NO_ENTRYPOINT, &P_ENTRYPOINT_LOG, &P_WRITABLE, &P_READONLY, &P_ENV,
];

option!(IMAGE_SELECT, Opt::ImageSelect, c"image-select", Some(c"node|uniform"),
    c"[shoal] For an image index: `node` (default) runs each node's best entry, \
`uniform` the best entry every node of the job accepts (identical bytes everywhere). \
Default: the site's image.select, or $SHOAL_IMAGE_SELECT.");

pub fn register(spank: &Spank) -> Result<(), String> {
    let pyxis = config().slurm.pyxis_options;
    let shoal = [&IMAGE, &MOUNT, &VOLUME, &MODULE, &NO_IMAGE, &IMAGE_SELECT, &WRITABLE, &SHOW_PLAN];
    let extra: &[&OptionSpec] = if pyxis { &PYXIS_OPTIONS } else { &[] };
    for opt in shoal.into_iter().chain(extra.iter().copied()) {
        spank.register_option(opt).map_err(|e| {
            format!("cannot register --{}: {e}", opt.name.to_string_lossy())
        })?;
    }
    Ok(())
}

/// Whether the site turned pyxis's options on.
pub fn pyxis_enabled() -> bool {
    crate::site::kept().is_some_and(|c| c.slurm.pyxis_options)
}

unsafe extern "C" fn option_callback(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    // SAFETY: Slurm passes null or a NUL-terminated option value.
    let value = unsafe { spank::optarg(optarg) };
    crate::guard("option callback", || {
        let mut st = state();
        let req = &mut st.request;
        match val {
            v if v == Opt::Image as c_int => set_image(req, value.as_deref()),
            v if v == Opt::Mount as c_int || v == Opt::Volume as c_int => {
                add_mounts(req, value.as_deref().unwrap_or(""), "--mount")
            }
            v if v == Opt::Module as c_int => set_modules(req, value.as_deref().unwrap_or("")),
            v if v == Opt::NoImage as c_int => {
                req.no_image = true;
                Ok(())
            }
            v if v == Opt::ImageSelect as c_int => set_select(req, value.as_deref().unwrap_or("")),
            v if v == Opt::ShowPlan as c_int => {
                req.show_plan = true;
                Ok(())
            }
            v if v == Opt::Writable as c_int => {
                crate::pyxis::set_flag(&mut req.writable, true, "--writable and --container-readonly")
            }
            v if PyxisOpt::from_val(v).is_some() => {
                let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
                crate::pyxis::apply(req, PyxisOpt::from_val(v).expect("checked"), value.as_deref(), &cwd)
            }
            other => Err(format!("unknown option value {other}")),
        }
    })
}

/// Records `--image`, refusing a malformed or conflicting value.
pub fn set_image(req: &mut Request, value: Option<&str>) -> Result<(), String> {
    let value = value.unwrap_or("");
    let spec: ImageSpec = value.parse().map_err(|e| format!("--image={value:?}: {e}"))?;
    match &req.image {
        Some(prev) if *prev != spec => Err(format!(
            "--image given twice with different values ({prev} and {spec}); give it once"
        )),
        _ => {
            req.image = Some(spec);
            Ok(())
        }
    }
}

/// Adds `--mount` specs (`;`-separated); the same spec twice is kept once,
/// because Slurm may replay an option. The launcher checks each against
/// the site's policy.
pub fn add_mounts(req: &mut Request, value: &str, option: &str) -> Result<(), String> {
    for spec in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        // The launcher's parser, so the prompt and the node agree on syntax.
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        UserMount::parse(spec, &cwd).map_err(|e| format!("{option}={spec:?}: {e}"))?;
        if !req.mounts.iter().any(|m| m == spec) {
            req.mounts.push(spec.to_string());
        }
    }
    Ok(())
}

/// The job's environment variable that carries every `--mount` to
/// slurmstepd (see [`export_mounts`]).
pub const MOUNTS_ENV: &str = "SHOAL_MOUNTS_GIVEN";

/// In srun, sbatch and salloc once the options are parsed: Slurm hands
/// slurmstepd only the last value of a repeated option (one
/// `_SLURM_SPANK_OPTION_shoal_mount`, on every series), so the whole list
/// travels in the job's environment, like the image pin. A nested srun's
/// replayed options are the job's: it adds its own to the list it inherited.
pub fn export_mounts() {
    let own = request().mounts;
    let mut all = Request::default();
    if let Ok(v) = std::env::var(MOUNTS_ENV) {
        let _ = add_mounts(&mut all, &v, MOUNTS_ENV);
    }
    for m in own {
        if !all.mounts.contains(&m) {
            all.mounts.push(m);
        }
    }
    if all.mounts.is_empty() {
        std::env::remove_var(MOUNTS_ENV);
    } else {
        std::env::set_var(MOUNTS_ENV, all.mounts.join(";"));
    }
}

/// In slurmstepd: adds the list [`export_mounts`] made to what the option
/// callbacks gave (each spec kept once).
pub fn import_mounts(getenv: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    match getenv(MOUNTS_ENV) {
        Some(v) => add_mounts(&mut state().request, &v, "--mount"),
        None => Ok(()),
    }
}

/// Records `--module`, refusing a conflicting repeat.
pub fn set_modules(req: &mut Request, value: &str) -> Result<(), String> {
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err("--module needs a name, e.g. --module=mpich, or --module=none".into());
    }
    match &req.modules {
        Some(prev) if *prev != names => Err(format!(
            "--module given twice with different values ({} and {}); give it once",
            prev.join(","),
            names.join(",")
        )),
        _ => {
            req.modules = Some(names);
            Ok(())
        }
    }
}

/// Records `--image-select`, refusing a bad or conflicting value.
pub fn set_select(req: &mut Request, value: &str) -> Result<(), String> {
    let mode: shoal::select::SelectMode = value.parse().map_err(|e| format!("--image-select={e}"))?;
    match req.select {
        Some(prev) if prev != mode => Err(format!("--image-select given twice with different values ({prev:?} and {mode:?}); give it once")),
        _ => {
            req.select = Some(mode);
            Ok(())
        }
    }
}

/// Fills what the command line left unset from `SHOAL_*` variables (and,
/// with `pyxis`, pyxis's `PYXIS_CONTAINER_*` ones after them).
pub fn apply_env_defaults_with(req: &mut Request, getenv: impl Fn(&str) -> Option<String>, pyxis: bool) -> Result<(), String> {
    apply_env_defaults(req, &getenv)?;
    if pyxis {
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        crate::pyxis::apply_env_defaults(req, &getenv, &cwd)?;
    }
    Ok(())
}

/// Fills what the command line left unset from `SHOAL_*` variables.
pub fn apply_env_defaults(req: &mut Request, getenv: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    if req.image.is_none() && !req.no_image {
        if let Some(v) = getenv("SHOAL_IMAGE").filter(|v| !v.is_empty()) {
            set_image(req, Some(&v)).map_err(|e| format!("$SHOAL_IMAGE: {e}"))?;
        }
    }
    if req.mounts.is_empty() {
        if let Some(v) = getenv("SHOAL_MOUNT") {
            add_mounts(req, &v, "$SHOAL_MOUNT")?;
        }
    }
    if req.modules.is_none() {
        if let Some(v) = getenv("SHOAL_MODULE").filter(|v| !v.is_empty()) {
            set_modules(req, &v).map_err(|e| format!("$SHOAL_MODULE: {e}"))?;
        }
    }
    if req.select.is_none() {
        if let Some(v) = getenv("SHOAL_IMAGE_SELECT").filter(|v| !v.is_empty()) {
            set_select(req, &v).map_err(|e| format!("$SHOAL_IMAGE_SELECT: {e}"))?;
        }
    }
    Ok(())
}

/// pyxis's `PYXIS_CONTAINER_*` defaults on the process-wide request (in
/// slurmstepd, from the job's environment).
pub fn apply_pyxis_env_defaults_now(getenv: impl Fn(&str) -> Option<String>, cwd: &std::path::Path) -> Result<(), String> {
    crate::pyxis::apply_env_defaults(&mut state().request, getenv, cwd)
}

/// Applies [`apply_env_defaults`] to the process-wide request.
pub fn apply_env_defaults_now(getenv: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let pyxis = pyxis_enabled();
    apply_env_defaults_with(&mut state().request, getenv, pyxis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_values() {
        let mut r = Request::default();
        let e = set_image(&mut r, Some("::bad::")).unwrap_err();
        assert!(e.contains("--image=\"::bad::\""), "{e}");
        assert!(set_image(&mut r, Some("")).unwrap_err().contains("empty image reference"));
        assert!(set_image(&mut r, None).is_err());
        set_image(&mut r, Some("127.0.0.1:5443/shoal/busybox:1")).unwrap();
        set_image(&mut r, Some("127.0.0.1:5443/shoal/busybox:1")).unwrap();
        let e = set_image(&mut r, Some("debian:12")).unwrap_err();
        assert!(e.contains("different values"), "{e}");
        assert_eq!(r.image.unwrap().to_string(), "127.0.0.1:5443/shoal/busybox:1");
    }

    #[test]
    fn mounts_accumulate_split_and_dedupe() {
        let mut r = Request::default();
        add_mounts(&mut r, "/scratch:/scratch;/data:/data:ro", "--volume").unwrap();
        add_mounts(&mut r, "/data:/data:ro", "--mount").unwrap();
        add_mounts(&mut r, "/opt/x:/x", "--mount").unwrap();
        assert_eq!(r.mounts, ["/scratch:/scratch", "/data:/data:ro", "/opt/x:/x"]);
        for bad in ["/a:b", "/a:/b:perNodeCache", "/a:/b:ro:x", ":/b"] {
            let e = add_mounts(&mut r, bad, "--mount").unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn image_select_values() {
        let mut r = Request::default();
        set_select(&mut r, "uniform").unwrap();
        set_select(&mut r, "uniform").unwrap();
        assert!(set_select(&mut r, "node").unwrap_err().contains("different values"));
        assert!(set_select(&mut Request::default(), "best").unwrap_err().contains("--image-select=\"best\""));
    }

    #[test]
    fn modules_and_conflicts() {
        let mut r = Request::default();
        set_modules(&mut r, "mpich,gpu").unwrap();
        set_modules(&mut r, "mpich, gpu").unwrap();
        assert!(set_modules(&mut r, "gpu").unwrap_err().contains("different values"));
        assert!(set_modules(&mut Request::default(), "").is_err());
    }

    #[test]
    fn environment_defaults_fill_only_what_is_unset() {
        let env = |k: &str| match k {
            "SHOAL_IMAGE" => Some("debian:12".to_string()),
            "SHOAL_MOUNT" => Some("/scratch:/scratch".to_string()),
            "SHOAL_MODULE" => Some("mpich".to_string()),
            _ => None,
        };
        let mut r = Request::default();
        set_image(&mut r, Some("alpine:3")).unwrap();
        apply_env_defaults(&mut r, env).unwrap();
        assert_eq!(r.image.as_ref().unwrap().to_string(), "docker.io/library/alpine:3");
        assert_eq!(r.mounts, ["/scratch:/scratch"]);
        assert_eq!(r.modules.as_deref(), Some(&["mpich".to_string()][..]));

        let mut r = Request { no_image: true, ..Request::default() };
        apply_env_defaults(&mut r, env).unwrap();
        assert!(r.image.is_none(), "--no-image must win over $SHOAL_IMAGE");

        let e = apply_env_defaults(&mut Request::default(), |k| {
            (k == "SHOAL_IMAGE").then(|| "::x".to_string())
        })
        .unwrap_err();
        assert!(e.starts_with("$SHOAL_IMAGE: --image=\"::x\""), "{e}");
    }
}
