//! GPU devices for a job: only the job's GPUs are bound, and the numbering
//! `CUDA_VISIBLE_DEVICES` would have in a /dev holding them alone.
//!
//! The launcher's minimal /dev holds the bound GPUs alone, so the
//! renumbered list applies there; with the site's `host_dev` (the host's
//! whole /dev) the job's own numbering stays. [`visible_inside`] is the one
//! place that decides the value inside (the container plan and the SPANK
//! plugin's per-task renumbering both call it).
//! The rule, for a /dev with the bound GPUs alone:
//!
//! Slurm gives the job's GPUs as host indices in `CUDA_VISIBLE_DEVICES`
//! (`3,1,5`). Inside, only `/dev/nvidia1`, `/dev/nvidia3` and `/dev/nvidia5`
//! exist, and CUDA numbers the devices it can open from 0 in host order; so
//! host 1 is 0, host 3 is 1, host 5 is 2, and the job's own order becomes
//! `1,0,2` (the rule Sarus established).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::InjectError;

/// One per-GPU device node on the host (`/dev/nvidia3` is GPU 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuDevice {
    pub index: u32,
    pub host: PathBuf,
    /// Where it appears inside (keeps the host's name).
    pub target: PathBuf,
}

/// The GPUs a job gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuSelection {
    /// Device nodes to bind, by host index.
    pub devices: Vec<GpuDevice>,
    /// `CUDA_VISIBLE_DEVICES` inside, when the job's GPUs were given.
    pub cuda_visible_devices: Option<String>,
}

/// The GPU number a device node's name ends with (`nvidia3` -> 3).
pub fn device_index(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    name[name.len() - digits..].parse().ok()
}

/// Whether a `CUDA_VISIBLE_DEVICES` value names GPUs: Slurm's empty value
/// and `NoDevFiles` (a GPU gres with no device files) do not.
pub fn names_gpus(visible: &str) -> bool {
    let v = visible.trim();
    !v.is_empty() && v != "NoDevFiles"
}

/// GPU numbers for a message: `2,3`, or `none`.
fn numbers(devices: &[GpuDevice]) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    devices.iter().map(|d| d.index.to_string()).collect::<Vec<_>>().join(",")
}

/// Picks the GPU device nodes for a job. `available` are the host's per-GPU
/// nodes; `visible` is the job's `CUDA_VISIBLE_DEVICES` (None: not set, so
/// every GPU is bound and the variable left alone).
pub fn select_gpus(
    available: &[GpuDevice],
    visible: Option<&str>,
) -> Result<GpuSelection, InjectError> {
    let mut all = available.to_vec();
    all.sort_by_key(|d| d.index);
    let Some(visible) = visible.map(str::trim) else {
        return Ok(GpuSelection {
            devices: all,
            cuda_visible_devices: None,
        });
    };
    if !names_gpus(visible) {
        return Ok(GpuSelection {
            devices: Vec::new(),
            cuda_visible_devices: Some(visible.to_string()),
        });
    }
    let mut order = Vec::new();
    for item in visible.split(',').map(str::trim) {
        let index: u32 = item.parse().map_err(|_| {
            InjectError::Gpu(format!(
                "CUDA_VISIBLE_DEVICES={visible}: {item:?} is not a GPU number (GPU UUIDs are not supported)"
            ))
        })?;
        if !all.iter().any(|d| d.index == index) {
            return Err(InjectError::Gpu(format!(
                "CUDA_VISIBLE_DEVICES={visible}: GPU {index} has no device node on this node (have: {}); \
                 name GPUs of this node, or add its node to the module's gpu_devices in the site config",
                numbers(&all)
            )));
        }
        if !order.contains(&index) {
            order.push(index);
        }
    }
    let devices: Vec<GpuDevice> = all
        .into_iter()
        .filter(|d| order.contains(&d.index))
        .collect();
    let mut selection = GpuSelection {
        devices,
        cuda_visible_devices: None,
    };
    selection.cuda_visible_devices = Some(selection.renumber(visible)?);
    Ok(selection)
}

impl GpuSelection {
    /// `CUDA_VISIBLE_DEVICES` inside for a list of host GPU numbers (the
    /// step's, or one task's when Slurm gives tasks their own): each number
    /// becomes its position among the bound devices.
    pub fn renumber(&self, visible: &str) -> Result<String, InjectError> {
        let mut inside = Vec::new();
        for item in visible.split(',').map(str::trim) {
            let index: u32 = item.parse().map_err(|_| {
                InjectError::Gpu(format!(
                    "CUDA_VISIBLE_DEVICES={visible}: {item:?} is not a GPU number"
                ))
            })?;
            let at = self.devices.iter().position(|d| d.index == index).ok_or_else(|| {
                InjectError::Gpu(format!(
                    "CUDA_VISIBLE_DEVICES={visible}: GPU {index} is not among the container's devices (the step's GPUs: {}); \
                     give the task only GPUs of its step",
                    numbers(&self.devices)
                ))
            })?;
            inside.push(at.to_string());
        }
        Ok(inside.join(","))
    }
}

/// Whose GPU numbers a task's `CUDA_VISIBLE_DEVICES` inside follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskGpus {
    /// The step's (or `shoal run`'s) GPUs, as [`select_gpus`] numbered them.
    Step,
    /// The task's own host numbers (Slurm's `--gpus-per-task`), within the
    /// step's: renumbered against the step's bound devices. A value that
    /// names no GPU (empty, `NoDevFiles`) means the step's.
    Host(String),
    /// Slurm numbered the GPUs locally already (`ConstrainDevices`:
    /// positions among the step's GPUs, the container's numbering): the
    /// job's values stay.
    Local,
}

/// The value `CUDA_VISIBLE_DEVICES` (and `GPU_DEVICE_ORDINAL`, where the
/// job has it) takes inside, or `None` to leave the job's values as they
/// are: no GPU module, a /dev that is not the minimal one (the host's
/// numbering holds there), Slurm's local numbers, or a value that names no
/// GPU. Pure; the one rule for GPU numbers.
pub fn visible_inside(gpus: Option<&GpuSelection>, minimal_dev: bool, task: &TaskGpus) -> Result<Option<String>, InjectError> {
    let Some(gpus) = gpus.filter(|_| minimal_dev) else {
        return Ok(None);
    };
    let inside = match task {
        TaskGpus::Local => return Ok(None),
        TaskGpus::Host(own) if names_gpus(own) => Some(gpus.renumber(own)?),
        TaskGpus::Host(_) | TaskGpus::Step => gpus.cuda_visible_devices.clone(),
    };
    Ok(inside.filter(|v| names_gpus(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: u32) -> Vec<GpuDevice> {
        (0..n)
            .map(|i| GpuDevice {
                index: i,
                host: format!("/dev/nvidia{i}").into(),
                target: format!("/dev/nvidia{i}").into(),
            })
            .collect()
    }

    #[test]
    fn renumbers_like_sarus() {
        let s = select_gpus(&gpus(6), Some("3,1,5")).unwrap();
        assert_eq!(s.cuda_visible_devices.as_deref(), Some("1,0,2"));
        let idx: Vec<u32> = s.devices.iter().map(|d| d.index).collect();
        assert_eq!(idx, [1, 3, 5]);
    }

    #[test]
    fn tasks_are_renumbered_against_the_steps_devices() {
        let step = select_gpus(&gpus(8), Some("6,2,4,5")).unwrap();
        assert_eq!(step.cuda_visible_devices.as_deref(), Some("3,0,1,2"));
        assert_eq!(step.renumber("4,5").unwrap(), "1,2");
        assert!(step
            .renumber("3")
            .unwrap_err()
            .to_string()
            .contains("GPU 3 is not among"));
    }

    #[test]
    fn unset_binds_all_and_leaves_the_variable() {
        let s = select_gpus(&gpus(2), None).unwrap();
        assert_eq!((s.devices.len(), s.cuda_visible_devices), (2, None));
    }

    #[test]
    fn no_dev_files_binds_nothing() {
        assert!(select_gpus(&gpus(2), Some("NoDevFiles"))
            .unwrap()
            .devices
            .is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        assert!(select_gpus(&gpus(2), Some("0,7"))
            .unwrap_err()
            .to_string()
            .contains("GPU 7"));
        assert!(select_gpus(&gpus(2), Some("GPU-abc"))
            .unwrap_err()
            .to_string()
            .contains("GPU-abc"));
    }

    #[test]
    fn the_value_inside_follows_the_task_within_the_step() {
        let step = select_gpus(&gpus(8), Some("6,2,4,5")).unwrap();
        let inside = |dev, task: TaskGpus| visible_inside(Some(&step), dev, &task);
        assert_eq!(inside(true, TaskGpus::Step).unwrap().as_deref(), Some("3,0,1,2"));
        assert_eq!(inside(true, TaskGpus::Host("5".into())).unwrap().as_deref(), Some("2"));
        // A task value naming no GPU: the step's.
        assert_eq!(inside(true, TaskGpus::Host("".into())).unwrap().as_deref(), Some("3,0,1,2"));
        assert!(inside(true, TaskGpus::Host("7".into())).unwrap_err().to_string().contains("GPU 7 is not among"));
        // Slurm's local numbers, or the host's /dev: the job's values stay.
        assert_eq!(inside(true, TaskGpus::Local).unwrap(), None);
        assert_eq!(inside(false, TaskGpus::Host("5".into())).unwrap(), None);
        // No GPU module; a step with NoDevFiles.
        assert_eq!(visible_inside(None, true, &TaskGpus::Step).unwrap(), None);
        let none = select_gpus(&gpus(2), Some("NoDevFiles")).unwrap();
        assert_eq!(visible_inside(Some(&none), true, &TaskGpus::Step).unwrap(), None);
    }

    #[test]
    fn index_from_name() {
        assert_eq!(device_index(Path::new("/dev/nvidia12")), Some(12));
        assert_eq!(device_index(Path::new("/dev/nvidiactl")), None);
    }
}
