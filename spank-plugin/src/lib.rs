//! Shoal's SPANK plugin, loaded from plugstack.conf by srun, sbatch, salloc,
//! slurmd and slurmstepd.
//!
//! This file only exports the symbols Slurm looks for and dispatches each
//! callback to the module for the phase of the job's life it belongs to:
//! - [`options`]: `--image`, `--mount`, `--module`, `--no-image` as the user
//!   typed them (every context that parses options);
//! - [`submit`]: srun, sbatch and salloc, before the job or step exists:
//!   checks the request and pins the image ([`pin`]);
//! - [`choose`]: each node's entry of an image index (CPU, GPU, MPI);
//! - [`stage`]: each allocated node copies and verifies the image (job
//!   prolog, and again per task);
//! - [`task`]: slurmstepd puts every task into the node's container
//!   ([`pmix`]: with the step's PMIx directories);
//! - [`teardown`]: step exit and job epilog clean up.
//!
//! Each callback runs inside `guard`, which turns an error or a panic into a
//! logged message and a SPANK error code: unwinding into Slurm's C code would
//! be undefined behaviour.

mod args;
mod choose;
mod entrypoint;
mod inject;
mod job;
mod layers;
mod options;
mod pin;
mod pmix;
mod pyxis;
mod save;
mod site;
mod spank;
mod stage;
mod submit;
mod task;
mod teardown;

use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use spank::{ffi, Context, Spank};

/// `plugin_name`, `plugin_type` and `plugin_version` are read by Slurm's
/// plugin loader with dlsym; the version must equal the running Slurm's.
#[no_mangle]
#[used]
pub static plugin_name: [u8; 6] = *b"shoal\0";
#[no_mangle]
#[used]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
#[used]
pub static plugin_version: u32 = parse_version(env!("SHOAL_SLURM_VERSION_NUMBER"));

const fn parse_version(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u32 = 0;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// Every error the plugin reports starts with this, so users and admins can
/// grep for it in job output and slurmd logs.
pub(crate) const TAG: &str = "shoal";

/// Runs one callback, logging its error (or panic) through Slurm.
fn guard(callback: &str, f: impl FnOnce() -> Result<(), String>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ffi::ESPANK_SUCCESS as c_int,
        Ok(Err(msg)) => {
            spank::log_error(&format!("{TAG}: {msg}"));
            -1
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            spank::log_error(&format!("{TAG}: internal error in {callback}: {what}"));
            -1
        }
    }
}

/// Called first in every context: reads the plugstack arguments and the
/// site config, and registers the options.
///
/// # Safety
/// Slurm's contract: `argv` holds `argc` valid C strings.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(sp: ffi::spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_init", || {
        // SAFETY: Slurm passes argc valid strings.
        let args = unsafe { spank::args(argc, argv) };
        let (config, config_path) = site::load(&args)?;
        site::keep(config);
        let spank = Spank::from_raw(sp);
        let context = Context::current();
        spank::log_verbose(&format!(
            "{TAG} {}: loaded in {} context (Slurm {}), config {}",
            env!("CARGO_PKG_VERSION"),
            context.map_or("unknown", Context::name),
            env!("SHOAL_SLURM_VERSION"),
            config_path.display()
        ));
        if context == Some(Context::Slurmd) {
            // Once per node: what uniform image-index jobs read (choose.rs).
            if let Ok(node) = job::node_name().or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).map_err(|e| e.to_string())) {
                if let Err(e) = choose::refresh(&site::config(), &node) {
                    spank::log_verbose(&format!("{TAG}: node {node}: capabilities not published: {e}"));
                }
            }
        }
        match context {
            Some(ctx) if ctx.takes_options() => options::register(&spank),
            _ => Ok(()),
        }
    })
}

/// Called after options are parsed: in srun, sbatch and salloc this is where
/// the user's request is checked, while they are still at the prompt.
#[no_mangle]
pub extern "C" fn slurm_spank_init_post_opt(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_init_post_opt", || match Context::current() {
        Some(Context::Local | Context::Allocator) => {
            submit::post_opt(&Spank::from_raw(sp))?;
            options::export_mounts();
            Ok(())
        }
        _ => Ok(()),
    })
}

/// slurmstepd, with the user's effective ids, before any task forks.
#[no_mangle]
pub extern "C" fn slurm_spank_user_init(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_user_init", || {
        let spank = Spank::from_raw(sp);
        if in_extern_step(&spank) {
            return Ok(());
        }
        // Every `--mount`, not only the last (options::export_mounts).
        options::import_mounts(|n| spank.getenv(n))?;
        task::user_init(&spank)
    })
}

/// Each task, as root, just before Slurm drops to the user and execs it.
#[no_mangle]
pub extern "C" fn slurm_spank_task_init_privileged(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_task_init_privileged", || {
        let spank = Spank::from_raw(sp);
        if in_extern_step(&spank) {
            return Ok(());
        }
        task::task_init_privileged(&spank)
    })
}

/// Each task, as the user, just before Slurm execs it.
#[no_mangle]
pub extern "C" fn slurm_spank_task_init(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_task_init", || {
        let spank = Spank::from_raw(sp);
        if in_extern_step(&spank) {
            return Ok(());
        }
        task::task_init(&spank)
    })
}

/// slurmstepd, as each task of the step on this node exits (root).
#[no_mangle]
pub extern "C" fn slurm_spank_task_exit(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_task_exit", || {
        let spank = Spank::from_raw(sp);
        if in_extern_step(&spank) {
            return Ok(());
        }
        save::task_exit(&spank)
    })
}

/// slurmstepd at the end of a step (remote) and srun/sbatch at exit (local).
#[no_mangle]
pub extern "C" fn slurm_spank_exit(sp: ffi::spank_t, _argc: c_int, _argv: *mut *mut c_char) -> c_int {
    guard("slurm_spank_exit", || match Context::current() {
        Some(Context::Remote) => {
            let spank = Spank::from_raw(sp);
            if in_extern_step(&spank) {
                return Ok(());
            }
            teardown::step_exit(&spank)
        }
        _ => Ok(()),
    })
}

/// Slurm 25.05+ reads this to decide what a failing `slurm_spank_init`
/// does: `ESPANK_JOB_FAILURE` fails the job without draining the node (the
/// default, `ESPANK_NODE_FAILURE`, drains it). It covers `slurm_spank_init`
/// only: a failing job prolog still drains the node on 26.05.5 (seen on the
/// test bed), so the prolog never fails on any series (below).
#[cfg(slurm_init_failure_mode)]
#[no_mangle]
#[used]
pub static slurm_spank_init_failure_mode: c_int = ffi::slurm_err_t::ESPANK_JOB_FAILURE as c_int;

/// The job prolog on every allocated node (root): stage the image early.
/// A bad image is the job's problem, not the node's, and a failing prolog
/// drains the node and requeues the job on every series (22.05 to 26.05,
/// whatever `slurm_spank_init_failure_mode` says): so it logs and succeeds,
/// and the job's tasks report the error when they stage again.
#[no_mangle]
pub extern "C" fn slurm_spank_job_prolog(sp: ffi::spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    let spank = Spank::from_raw(sp);
    guard("slurm_spank_job_prolog", || {
        let (job, uid, gid) = match (spank.job_id(), spank.uid(), spank.gid()) {
            (Ok(j), Ok(u), Ok(g)) => (j, u, g),
            (j, u, g) => {
                spank::log_error(&format!(
                    "{TAG}: job prolog: no job id, uid or gid from Slurm ({:?} {:?} {:?}); nothing staged",
                    j.err(),
                    u.err(),
                    g.err()
                ));
                return Ok(());
            }
        };
        spank::log_verbose(&format!("{TAG}: job {job}: job prolog ({} context)", Context::current().map_or("unknown", Context::name)));
        // slurm_spank_init is not called for the prolog: read our own args.
        let staged = script_config(argc, argv)
            .map_err(|e| format!("job {job}: prolog: {e}"))
            .and_then(|config| {
                stage::prolog(&config, job, uid, gid).map_err(|e| format!("job {job}: staging in the prolog failed: {e}"))
            });
        match staged {
            Err(e) => {
                spank::log_error(&format!("{TAG}: {e} (the job will report it)"));
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    })
}

/// The job epilog on every node of the job (root).
#[no_mangle]
pub extern "C" fn slurm_spank_job_epilog(sp: ffi::spank_t, argc: c_int, argv: *mut *mut c_char) -> c_int {
    let spank = Spank::from_raw(sp);
    guard("slurm_spank_job_epilog", || {
        let job = spank.job_id().map_err(|e| e.to_string())?;
        teardown::epilog(&script_config(argc, argv)?, job)
    })
}

/// Whether this slurmstepd is the job's extern step (see [`job::is_extern`]):
/// every remote callback leaves it alone. Staging for it happens in the job
/// prolog, which Slurm 24.05+ runs inside it with `PrologFlags=RunInJob`.
fn in_extern_step(spank: &Spank) -> bool {
    spank.step_id().is_ok_and(job::is_extern)
}

/// The site config for the prolog and epilog, which Slurm runs without
/// calling `slurm_spank_init` first.
fn script_config(argc: c_int, argv: *mut *mut c_char) -> Result<shoal::Config, String> {
    // SAFETY: Slurm passes argc valid strings to every callback.
    let args = unsafe { spank::args(argc, argv) };
    site::load(&args).map(|(config, _)| config)
}
