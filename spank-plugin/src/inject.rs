//! slurmstepd: the step's host-library modules (`--module`, or the site's
//! `default_modules`).
//!
//! - [`assess`], in `user_init` (slurmstepd, once per step and node, with
//!   the user's effective ids): the modules are checked against the pinned
//!   image (the user's own store file, or the site store's; the copy staged
//!   later is verified to be the same bytes). The forked tasks inherit the
//!   answer.
//! - In each task (root, before the container is entered) the injection
//!   joins the container's request, with [`task_gpus`]; only the task that
//!   builds the shared container carries its mounts and setup out, every
//!   task gets its environment.
//!
//! GPUs: the container of (job, step, node) is shared by the step's tasks,
//! so the GPU module binds the step's GPUs (`SLURM_STEP_GPUS`, else
//! `SLURM_JOB_GPUS`, else `CUDA_VISIBLE_DEVICES`: host numbers; none of
//! them: no GPU is bound, as a step without GPUs has none), and only those
//! are in the container's minimal /dev. Each task's `CUDA_VISIBLE_DEVICES`
//! (host numbers, its own under `--gpus-per-task`) is renumbered against
//! the step's bound GPUs ([`task_gpus`] in the plan, and [`task_gpus_from_slurm`] for
//! the per-task value Slurm sets later). Under `ConstrainDevices` Slurm
//! numbers GPUs locally (positions among the step's GPUs, which is the
//! container's numbering already): seen as a step `CUDA_VISIBLE_DEVICES`
//! that differs from the step's host numbers ([`local_gpu_numbers`]), and
//! then left as Slurm set it.
//!
//! Must never: read the user's image as root, or let a refused module
//! through.

use std::path::Path;

use shoal::container;
use crate::spank::Spank;
use shoal::inject::{InjectionPlan, TaskGpus};
use shoal::Config;

fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
}

/// The step's GPUs (host numbers), from the environment as slurmstepd
/// holds it.
pub fn step_gpus(env: &[(String, String)]) -> Option<&str> {
    get(env, "SLURM_STEP_GPUS")
        .or_else(|| get(env, "SLURM_JOB_GPUS"))
        .or_else(|| get(env, "CUDA_VISIBLE_DEVICES"))
}

/// Checks the modules against the image for `user` (uid, gid, groups):
/// the squashfs is parsed in a child process with the user's full
/// credentials (`shoal::container::assess_image_as_user`); `open` opens the
/// image with the user's (called only when a module applies). `requested`:
/// the `--module` names, `None` for the site's defaults. `None` when no module applies; errors (a refusal
/// naming the conflicting files) are one line for the user.
///
/// `command`: the step's argv[0] and the container's PATH, so the copies of
/// a library in the program's RUNPATH are covered too.
pub fn assess(
    config: &Config,
    requested: Option<&[String]>,
    open: impl FnOnce() -> std::io::Result<std::fs::File>,
    squashfs: &Path,
    env: &[(String, String)],
    command: Option<container::TaskCommand<'_>>,
    user: (u32, u32, &[u32]),
) -> Result<Option<InjectionPlan>, String> {
    // A step without GPUs gets none bound (not every GPU of the node).
    let gpus = Some(step_gpus(env).unwrap_or(""));
    let Some(assessment) = container::assess_image_as_user(open, squashfs, config, requested.unwrap_or(&[]), gpus, command, user)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    assessment.into_plan().map(Some).map_err(|e| e.to_string())
}

/// Whose numbers a task's GPUs follow inside (the container plan decides
/// the value, see `shoal::inject::visible_inside`): Slurm's local numbers
/// stay, else the task's own host numbers (`env`: the task's environment)
/// are renumbered against the step's.
pub fn task_gpus(env: &[(String, String)]) -> TaskGpus {
    if local_gpu_numbers(env) {
        return TaskGpus::Local;
    }
    match get(env, "CUDA_VISIBLE_DEVICES") {
        Some(own) => TaskGpus::Host(own.to_string()),
        None => TaskGpus::Step,
    }
}

/// Whether Slurm gave the step local GPU numbers (`ConstrainDevices`):
/// with global numbers its `CUDA_VISIBLE_DEVICES` is the step's host list.
pub fn local_gpu_numbers(env: &[(String, String)]) -> bool {
    match (get(env, "CUDA_VISIBLE_DEVICES"), step_gpus(env)) {
        (Some(cuda), Some(host)) => cuda.trim() != host.trim(),
        _ => false,
    }
}

/// In `task_init`: Slurm's per-task GPU binding has replaced the value the
/// plugin set (`set_before`) with the task's host numbers; renumber them.
/// An unchanged value is already the container's numbering.
pub fn task_gpus_from_slurm(
    spank: &Spank,
    injection: &InjectionPlan,
    set_before: Option<&str>,
    host_dev: bool,
) -> Result<(), String> {
    let now = spank.getenv("CUDA_VISIBLE_DEVICES");
    let Some(inside) = renumbered_for_task(injection, set_before, now.as_deref(), host_dev)? else {
        return Ok(());
    };
    for name in container::GPU_LIST_VARIABLES {
        if name == "CUDA_VISIBLE_DEVICES" || spank.getenv(name).is_some() {
            spank.setenv(name, &inside).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The decision of [`task_gpus_from_slurm`] (pure): `None` leaves the
/// variable as it is.
fn renumbered_for_task(
    injection: &InjectionPlan,
    set_before: Option<&str>,
    now: Option<&str>,
    host_dev: bool,
) -> Result<Option<String>, String> {
    let Some(now) = now.map(str::trim) else {
        return Ok(None);
    };
    if Some(now) == set_before || !shoal::inject::names_gpus(now) {
        return Ok(None);
    }
    shoal::inject::visible_inside(injection.gpus.as_ref(), !host_dev, &TaskGpus::Host(now.to_string())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_tasks_own_gpus_from_slurm_are_renumbered_against_the_steps() {
        let gpus = shoal::inject::select_gpus(
            &(0..4)
                .map(|i| shoal::inject::GpuDevice { index: i, host: format!("/g/nvidia{i}").into(), target: format!("/dev/nvidia{i}").into() })
                .collect::<Vec<_>>(),
            Some("2,3"),
        )
        .unwrap();
        let inj = InjectionPlan { gpus: Some(gpus), ..Default::default() };
        // Slurm replaced the step's value with the task's host GPU 3.
        assert_eq!(renumbered_for_task(&inj, Some("0,1"), Some("3"), false), Ok(Some("1".into())));
        // Unchanged since the plugin set it: already the container's numbers.
        assert_eq!(renumbered_for_task(&inj, Some("0,1"), Some("0,1"), false), Ok(None));
        // The site keeps the host's /dev: host numbering stays.
        assert_eq!(renumbered_for_task(&inj, Some("0,1"), Some("3"), true), Ok(None));
        let e = renumbered_for_task(&inj, Some("0,1"), Some("1"), false).unwrap_err();
        assert!(e.contains("GPU 1 is not among the container's devices (the step's GPUs: 2,3)"), "{e}");
        assert_eq!(renumbered_for_task(&InjectionPlan::default(), None, Some("3"), false), Ok(None));
    }

    #[test]
    fn local_numbering_is_told_from_the_steps_host_numbers() {
        assert!(!local_gpu_numbers(&env(&[("SLURM_STEP_GPUS", "2,3"), ("CUDA_VISIBLE_DEVICES", "2,3")])));
        assert!(local_gpu_numbers(&env(&[("SLURM_STEP_GPUS", "2,3"), ("CUDA_VISIBLE_DEVICES", "0,1")])));
        assert!(!local_gpu_numbers(&env(&[("CUDA_VISIBLE_DEVICES", "0,1")])));
        assert!(!local_gpu_numbers(&env(&[])));
    }

    #[test]
    fn the_steps_gpus_are_slurms_host_numbers() {
        let e = env(&[("SLURM_STEP_GPUS", "1,3"), ("SLURM_JOB_GPUS", "0,1,3"), ("CUDA_VISIBLE_DEVICES", "0")]);
        assert_eq!(step_gpus(&e), Some("1,3"));
        let e = env(&[("SLURM_JOB_GPUS", "2"), ("CUDA_VISIBLE_DEVICES", "0")]);
        assert_eq!(step_gpus(&e), Some("2"));
        let e = env(&[("CUDA_VISIBLE_DEVICES", "0,1")]);
        assert_eq!(step_gpus(&e), Some("0,1"));
        assert_eq!(step_gpus(&env(&[("SLURM_STEP_GPUS", " ")])), None);
    }
}
