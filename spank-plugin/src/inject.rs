//! slurmstepd: the step's host-library modules (`--module`, or the site's
//! `default_modules`).
//!
//! - [`assess`], in `user_init` (slurmstepd, once per step and node, with
//!   the user's effective ids): the modules are checked against the pinned
//!   image (the user's own store file, or the site store's; the copy staged
//!   later is verified to be the same bytes). The forked tasks inherit the
//!   answer.
//! - [`add_to_plan`], in each task (root, before the container is entered):
//!   the injection joins the container plan; only the task that builds the
//!   shared container carries its mounts and setup out, every task gets its
//!   environment.
//!
//! GPUs: the container of (job, step, node) is shared by the step's tasks,
//! so it gets the step's GPUs (`SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`,
//! else `CUDA_VISIBLE_DEVICES`, all host numbers); a task whose own
//! `CUDA_VISIBLE_DEVICES` names a subset (`--gpu-bind`) gets it renumbered
//! to the container's device order.
//!
//! Must never: read the user's image as root, or let a refused module
//! through.

use std::path::Path;

use shoal::container::{self, Plan};
use shoal::inject::InjectionPlan;
use shoal::Config;

fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
}

/// The step's GPUs (host numbers) and the task's own list, from the
/// environment as slurmstepd holds it.
pub fn gpu_lists(env: &[(String, String)]) -> (Option<&str>, Option<&str>) {
    let task = get(env, "CUDA_VISIBLE_DEVICES");
    let step = get(env, "SLURM_STEP_GPUS").or_else(|| get(env, "SLURM_JOB_GPUS")).or(task);
    (step, task)
}

/// Checks the modules against the image with the caller's credentials
/// (call with the user's). `requested`: the `--module` names, `None` for
/// the site's defaults. `None` when no module applies; errors (a refusal
/// naming the conflicting files) are one line for the user.
pub fn assess(
    config: &Config,
    requested: Option<&[String]>,
    squashfs: &Path,
    env: &[(String, String)],
) -> Result<Option<InjectionPlan>, String> {
    let (step_gpus, _) = gpu_lists(env);
    let Some(assessment) = container::assess_image(squashfs, config, requested.unwrap_or(&[]), step_gpus)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    assessment.into_plan().map(Some).map_err(|e| e.to_string())
}

/// Adds an injection to a task's container plan, with the task's own GPU
/// numbering when it differs from the step's.
pub fn add_to_plan(plan: &mut Plan, injection: &InjectionPlan, env: &[(String, String)]) -> Result<(), String> {
    container::add_injection(plan, injection).map_err(|e| e.to_string())?;
    let (step_gpus, task_gpus) = gpu_lists(env);
    if let (Some(selection), Some(task)) = (&injection.gpus, task_gpus) {
        if Some(task) != step_gpus {
            let inside = selection.renumber(task).map_err(|e| e.to_string())?;
            match plan.env.iter_mut().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES") {
                Some(slot) => slot.1 = inside,
                None => plan.env.push(("CUDA_VISIBLE_DEVICES".into(), inside)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn step_gpus_come_from_slurm_and_the_task_list_from_cuda() {
        let e = env(&[("SLURM_STEP_GPUS", "1,3"), ("SLURM_JOB_GPUS", "0,1,3"), ("CUDA_VISIBLE_DEVICES", "3")]);
        assert_eq!(gpu_lists(&e), (Some("1,3"), Some("3")));
        let e = env(&[("SLURM_JOB_GPUS", "2"), ("CUDA_VISIBLE_DEVICES", "2")]);
        assert_eq!(gpu_lists(&e), (Some("2"), Some("2")));
        let e = env(&[("CUDA_VISIBLE_DEVICES", "0,1")]);
        assert_eq!(gpu_lists(&e), (Some("0,1"), Some("0,1")));
        let e = env(&[("SLURM_STEP_GPUS", "")]);
        assert_eq!(gpu_lists(&e), (None, None));
    }

    #[test]
    fn a_task_subset_is_renumbered_against_the_step_devices() {
        use shoal::inject::{select_gpus, GpuDevice};
        let all: Vec<GpuDevice> =
            (0..4).map(|i| GpuDevice { index: i, host: format!("/dev/nvidia{i}").into() }).collect();
        let e = env(&[("SLURM_STEP_GPUS", "3,1"), ("CUDA_VISIBLE_DEVICES", "3")]);
        let (step, task) = gpu_lists(&e);
        let sel = select_gpus(&all, step).unwrap();
        assert_eq!(sel.cuda_visible_devices.as_deref(), Some("1,0"));
        assert_eq!(sel.renumber(task.unwrap()).unwrap(), "1");
    }
}
