//! The launcher: turns an image and a request into a running container.
//! `shoal run` and the SPANK plugin share one code path: [`plan`] decides
//! everything as plain data, [`enter`] makes the current process the
//! container, [`run`] is `enter` + drop to the user + exec.
//!
//! Modules, in the order a container is made:
//! - `model`: the plan's data types; `policy`, `env`, `etc`, `plan`,
//!   `inject_plan` (host-library injection made part of the plan):
//!   deciding (pure, unit-tested as data); `render`: the `--dry-run` text;
//! - `sys`: the kernel calls nix does not wrap, each raw call behind a
//!   safe function with its `// SAFETY:` reason: every `unsafe` block of
//!   the launcher's code is there, but the forks only their caller can
//!   justify (what a child may do depends on the caller's threads):
//!   `sys::double_fork` (an `unsafe fn`; `fuse` calls it twice), `fork` in
//!   `isolate` (its child runs Rust code as the user) and in the binary's
//!   `cli/run_save` (its child is the whole container), and
//!   `Command::pre_exec` in `setup` (std's, unsafe for the same reason).
//!   Unit tests may call libc directly (`image_server/tests` probes
//!   xattrs, `isolate`'s tests try to take root back). Outside
//!   `container/` the launcher forbids `unsafe` in `image/`, `inject/`,
//!   `select/`, `config/`, `stage`, `reference`, `resolve` and `save`;
//! - `userns`: namespaces; `fuse`: the image through FUSE, served by
//!   `image_server` (Shoal's own squashfs server, with the `image-server`
//!   feature: the `shoal` binary, not the plugin) or squashfuse_ll;
//!   `hints`: what the server reads ahead;
//!   `lower`: the plan's mounts as the exact syscalls (pure; `--dry-run`
//!   prints their flags); `rootfs` (with `skeleton`): image, skeleton,
//!   overlay root, the lowered mounts, pivot_root;
//! - `assess`: the image checked for injection, as the user; `cred`: the
//!   one guard for acting as the user; `setup`: the injection's steps run
//!   after pivot_root by the builder;
//! - `share`: one container for the tasks of a node; `exec`: credentials,
//!   capabilities, no_new_privs, execve;
//! - `doctor`: checks a node and says how to fix what fails.

mod env;
mod etc;
mod exec;
mod fuse;
mod hints;
#[cfg(feature = "image-server")]
pub(crate) mod image_server;
mod assess;
mod cred;
mod inject_plan;
mod isolate;
mod lower;
mod model;
mod plan;
mod render;
mod policy;
mod rootfs;
mod setup;
mod skeleton;
mod share;
pub(crate) mod sys;
mod userns;
pub mod doctor;

use std::convert::Infallible;
use std::path::PathBuf;

pub use env::{parse_assignment, parse_env_file, EnvError, DEFAULT_PATH};
pub use etc::Identity;
pub use exec::ExecError;
pub use fuse::{FuseError, SERVE_EXEC_ARG};
pub use sys::ignore_signals;
#[cfg(feature = "image-server")]
pub use fuse::{prefork as prefork_fuse_server, serve_exec as serve_fuse_exec, serve_in_process as serve_fuse_in_process};
pub use lower::{lower, Facts, MountOp, SourceFact};
pub use plan::{plan, remap_root as plan_remap_root};
pub use model::{
    Cwd, DevLayout, ImageMount, Mode, Mount, MountKind, Origin, Plan, PlanError, RunConfig,
    RootFs, RunImage, RunRequest, UpperLayer, DEV_NODES,
};
pub use assess::{assess_image, assess_image_as_user, assess_modules, TaskCommand};
pub use cred::open_image_as;
pub use inject_plan::{add_injection, GPU_LIST_VARIABLES};
pub use model::{Injection, OrderError, PmixDir, SetupStep, SlurmPath};
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
            setup::run_setup(plan)?;
            None
        }
        Some(s) => Some(share::enter_shared(s, plan.mode, plan.identity.uid, || -> Result<(), EnterError> {
            let src = rootfs::open_sources(plan)?;
            rootfs::build(plan, src, s.peers)?;
            // Only the builder: peers join a container already set up.
            setup::run_setup(plan)?;
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
        setup::run_setup(plan)?;
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
