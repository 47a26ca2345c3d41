//! The launcher: turns an image and a request into a running container.
//! `shoal run` and the SPANK plugin share one code path: [`plan`] decides
//! everything as plain data, [`enter`] makes the current process the
//! container, [`run`] is `enter` + drop to the user + exec.
//!
//! Modules, in the order a container is made:
//! - `policy`, `env`, `etc`, `plan`: deciding (pure, unit-tested as data);
//! - `sys`: the only `unsafe` kernel calls;
//! - `userns`: namespaces; `fuse`: the image through FUSE, served by
//!   `image_server` (Shoal's own squashfs server, for the `shoal` binary) or
//!   squashfuse_ll;
//!   `rootfs`: image, skeleton, overlay root, mounts, pivot_root;
//! - `inject`: host-library injection made part of the plan (mounts, and
//!   setup steps run after pivot_root by the builder);
//! - `share`: one container for the tasks of a node; `exec`: credentials,
//!   capabilities, no_new_privs, execve;
//! - `doctor`: checks a node and says how to fix what fails.
//!
//! # Contract for the SPANK plugin (issue 5)
//!
//! In `slurm_spank_task_init_privileged` (root, in the task process that
//! slurmstepd forked: single-threaded, before slurmstepd drops to the user):
//!
//! ```ignore
//! use shoal::container::{self, Identity, ImageConfig, RunImage, RunRequest, Share, UserMount};
//! let req = RunRequest {
//!     // From the store once it is wired: trusted only for Scope::Site.
//!     image: RunImage { squashfs, config: ImageConfig { env, entrypoint, cmd, workdir }, trusted_for_kernel_mount },
//!     // The task's argv (S_JOB_ARGV). Slurm execs it itself; the plan only
//!     // needs it non-empty (an empty argv falls back to the image's Cmd).
//!     argv: task_argv,
//!     entrypoint: false,
//!     // S_JOB_UID / S_JOB_GID, getpwuid_r for name/home/shell, and the
//!     // supplementary groups (getgrouplist) with their names.
//!     user: Identity { name, uid, gid, home, shell, groups },
//!     privileged: true,
//!     cwd: job_cwd,                 // the task's working directory
//!     host_env: job_env,            // the job environment as the task has it
//!     env: user_settings,           // --container-env style K=V, in order
//!     mounts: user_mounts,          // UserMount::parse / parse_volumes of --volume
//!     writable: false,
//!     terminal: None,
//! };
//! let mut plan = shoal::container::plan(&req, &cfg)?;               // pure; refusals are PlanError
//! // Host-library modules: checked with the user's ids (assess_image in
//! // user_init, or assess_modules here), then part of the plan; the task
//! // that builds the shared container carries them out after pivot_root.
//! shoal::container::add_injection(&mut plan, &assessment.into_plan()?)?;
//! // GPU modules: the container's minimal /dev holds the step's GPUs only;
//! // a task's own CUDA_VISIBLE_DEVICES (host numbers) is renumbered against
//! // them with set_task_gpus (and again in task_init, where Slurm's
//! // per-task binding has replaced it).
//! let share = Share { key: format!("{job}.{step}.{slurm_node_name}"), peers: local_task_count };
//! let entered = container::enter(&plan, Some(&share))?; // now inside, still root
//! // Replace the task's environment with `plan.env` (spank_setenv for each
//! // pair, spank_unsetenv for the job's other names), then return 0: slurmstepd
//! // drops to the user (setgid/initgroups/setuid) and execs the task inside
//! // the container. no_new_privs is set and the capability bounding set is
//! // empty, so nothing the task execs can gain privileges. `entered.cwd` is
//! // the directory the task starts in (the job's cwd is bound in when it is
//! // not under a reserved path).
//! ```
//!
//! `peers` must be Slurm's exact local task count (S_JOB_LOCAL_TASK_COUNT);
//! the key must contain the Slurm node name (test nodes share one kernel,
//! /run and /tmp). The first task builds the container, the others `setns`
//! into it; a task SIGKILLed at any point blocks nobody (see `share`).
//!
//! At step exit (`slurm_spank_exit` in slurmstepd, remote context) call
//! `shoal::container::teardown(&key, Mode::Privileged, 0)`: it removes the
//! share state a killed task may have left; it is idempotent. Containers have
//! no other state to undo: they end with their last task, and with them their
//! mounts, auto-clearing loop devices and FUSE server.
//!
//! Errors are one line each (`Display`), naming the input and the fix; the
//! plugin should hold an error from `user_init` and report it from
//! `task_init`, where srun shows it.

mod env;
mod etc;
mod exec;
mod fuse;
pub(crate) mod image_server;
mod inject;
mod plan;
mod policy;
mod rootfs;
mod share;
mod sys;
mod userns;
pub mod doctor;

use std::convert::Infallible;
use std::path::PathBuf;

pub use env::{parse_assignment, parse_env_file, EnvError, DEFAULT_PATH};
pub use etc::Identity;
pub use exec::ExecError;
pub use fuse::{prefork as prefork_fuse_server, serve_in_process as serve_fuse_in_process, FuseError};
pub use plan::{
    plan, Cwd, DevLayout, ImageConfig, ImageMount, Mode, Mount, MountKind, Origin, Plan, PlanError,
    RootFs, RunImage, RunRequest, UpperLayer, DEV_NODES,
};
pub use inject::{
    add_injection, assess_image, assess_modules, set_task_gpus, OrderError, SetupStep, TaskCommand,
    GPU_LIST_VARIABLES,
};
pub use policy::{normalize as normalize_path, PolicyError, UserMount, RESERVED_TARGETS};
pub use rootfs::{check_squashfs, BuildError};
pub use share::{runtime_base, JoinRule, Joined, Share, ShareError};
pub use userns::NsError;

/// Why the process could not become the container.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What [`enter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    /// Whether this process built the container or joined a peer's.
    pub joined: Option<Joined>,
    /// The working directory it is in.
    pub cwd: PathBuf,
}

/// Makes the current process the container: namespaces entered (or joined,
/// with `share`), image and mounts in place, root pivoted, cwd set,
/// no_new_privs set, capability bounding set emptied. Credentials are left
/// as they are (the plugin lets slurmstepd drop them; [`run`] drops them).
///
/// The process must be single-threaded (user namespaces and setns demand it).
pub fn enter(plan: &Plan, share: Option<&Share>) -> Result<Entered, EnterError> {
    let joined = match share {
        None => {
            let src = rootfs::open_sources(plan)?;
            rootfs::build(plan, src, 1)?;
            inject::run_setup(plan)?;
            None
        }
        Some(s) => Some(share::enter_shared(s, plan.mode, plan.identity.uid, || -> Result<(), EnterError> {
            let src = rootfs::open_sources(plan)?;
            rootfs::build(plan, src, s.peers)?;
            // Only the builder: peers join a container already set up.
            inject::run_setup(plan)?;
            Ok(())
        })?),
    };
    let cwd = enter_cwd(plan);
    exec::harden_keeping_bounding(plan.remap_root)?;
    Ok(Entered { joined, cwd })
}

/// Changes into the plan's working directory inside the container: the
/// preferred one, else the fallback, else `/`. Returns where it went.
fn enter_cwd(plan: &Plan) -> PathBuf {
    match &plan.cwd.preferred {
        Some(p) if nix::unistd::chdir(p).is_ok() => p.clone(),
        _ => {
            let fb = &plan.cwd.fallback;
            if nix::unistd::chdir(fb).is_ok() {
                fb.clone()
            } else {
                let _ = nix::unistd::chdir("/");
                PathBuf::from("/")
            }
        }
    }
}

/// Like [`enter`] for a container that outlives its processes' step (a
/// named container): a live one recorded in `state_dir` (root's) is joined
/// when `join` allows, else one is built from the plan (its upper layer
/// holds the saved state). `tag` names the caller's step.
pub fn enter_named(plan: &Plan, state_dir: &std::path::Path, tag: &str, join: share::JoinRule, threads: u32) -> Result<Entered, EnterError> {
    let joined = share::enter_named(state_dir, tag, join, || -> Result<(), EnterError> {
        let src = rootfs::open_sources(plan)?;
        rootfs::build(plan, src, threads.max(1))?;
        inject::run_setup(plan)?;
        Ok(())
    })?;
    let cwd = enter_cwd(plan);
    exec::harden_keeping_bounding(plan.remap_root)?;
    Ok(Entered { joined: Some(joined), cwd })
}

/// `--container-remap-root`: see [`userns::remap_root`].
pub fn remap_root(uid: u32, gid: u32) -> Result<(), userns::NsError> {
    userns::remap_root(uid, gid)
}

/// `shoal run`: [`enter`], drop to the user (privileged mode), clear every
/// capability, and exec the command in place of this process. The command
/// is the launcher's pid: signals, exit status, stdin/stdout/stderr, the
/// terminal and the caller's process tree are exactly a bare process's.
pub fn run(plan: &Plan, share: Option<&Share>) -> Result<Infallible, EnterError> {
    enter(plan, share)?;
    exec::become_user(plan)?;
    Ok(exec::exec(plan)?)
}

/// Removes share state left for `key` (see [`share`]); idempotent.
pub fn teardown(key: &str, mode: Mode, uid: u32) -> Result<(), ShareError> {
    share::teardown(key, mode, uid)
}
