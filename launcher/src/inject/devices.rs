//! Host device nodes a module binds into the container: `devices` (always
//! bound) and `gpu_devices` (numbered, then chosen by the job's
//! `CUDA_VISIBLE_DEVICES` in [`super::steps`]). Every host read goes through
//! the host seam ([`super::Request::host`]), so these rules are unit-tested
//! with a made-up `/dev`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::{DeviceSpec, ModuleConfig};

use super::decide::expand;
use super::gpu::{device_index, GpuDevice};
use super::image::{follow, kind_of, EntryKind, ImageFs};
use super::plan::{BindMount, MountKind, Step};
use super::InjectError;

pub(super) fn device_spec(
    module: &str,
    field: &str,
    entry: &str,
) -> Result<DeviceSpec, InjectError> {
    DeviceSpec::parse(entry)
        .map_err(|e| InjectError::Module(format!("[modules.{module}] {field}: {e}")))
}

/// A host device node bound at `target` (nosuid; device access allowed).
pub(super) fn device_bind(
    module: &str,
    dev: &Path,
    target: PathBuf,
    image: &dyn ImageFs,
    host: &dyn ImageFs,
) -> Result<Step, InjectError> {
    let (_, kind) = follow(host, dev).map_err(|e| InjectError::Host {
        path: dev.to_path_buf(),
        message: format!("[modules.{module}] {e}"),
    })?;
    if kind != EntryKind::Device {
        return Err(InjectError::Host {
            path: dev.to_path_buf(),
            message: format!("[modules.{module}] not a device node"),
        });
    }
    Ok(Step::Bind(BindMount {
        source: dev.to_path_buf(),
        target_in_image: kind_of(image, &target).is_some(),
        target,
        kind: MountKind::Device,
        read_only: false,
        nosuid: true,
        nodev: false,
        why: format!("device of module {module}"),
    }))
}

/// The binds of module `name`'s `devices`, each target once across modules
/// (`bound` holds the targets bound so far).
pub(super) fn module_devices(
    name: &str,
    module: &ModuleConfig,
    image: &dyn ImageFs,
    host: &dyn ImageFs,
    bound: &mut BTreeSet<PathBuf>,
) -> Result<Vec<Step>, InjectError> {
    let mut steps = Vec::new();
    for entry in &module.devices {
        let spec = device_spec(name, "devices", entry)?;
        for dev in expand(host, name, "devices", &spec.pattern)? {
            let target = spec.target(&dev);
            if bound.insert(target.clone()) {
                steps.push(device_bind(name, &dev, target, image, host)?);
            }
        }
    }
    Ok(steps)
}

/// Adds module `name`'s `gpu_devices` to `gpus`, each with the number its
/// name ends with; two device files with one number are a config error.
pub(super) fn module_gpus(
    name: &str,
    module: &ModuleConfig,
    host: &dyn ImageFs,
    gpus: &mut Vec<GpuDevice>,
) -> Result<(), InjectError> {
    for entry in &module.gpu_devices {
        let spec = device_spec(name, "gpu_devices", entry)?;
        for dev in expand(host, name, "gpu_devices", &spec.pattern)? {
            let index = device_index(&dev).ok_or_else(|| {
                InjectError::Module(format!(
                    "[modules.{name}] gpu_devices: {} does not end with a GPU number; fix the glob in the site config",
                    dev.display()
                ))
            })?;
            if let Some(other) = gpus.iter().find(|g| g.index == index && g.host != dev) {
                return Err(InjectError::Module(format!(
                    "[modules.{name}] gpu_devices: {} and {} are both GPU {index}; fix the glob in the site config",
                    other.host.display(),
                    dev.display()
                )));
            }
            if !gpus.iter().any(|g| g.host == dev) {
                let target = spec.target(&dev);
                gpus.push(GpuDevice {
                    index,
                    host: dev,
                    target,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{AbiMode, Config};
    use crate::inject::mem_image::MemImage;
    use crate::inject::assess;
    use crate::inject::plan::{BindMount, InjectionPlan, MountKind, Request, Step};
    use crate::inject::InjectError;

    /// The plan for one module `m` (TOML body) on a made-up host and image.
    fn plan(
        module: &str,
        host: &MemImage,
        image: &MemImage,
        cuda: Option<&str>,
    ) -> Result<InjectionPlan, InjectError> {
        let config = Config::parse(&format!("[modules.m]\n{module}"), Path::new("x")).unwrap();
        let req = Request {
            modules: vec![("m", &config.modules["m"])],
            default_abi: AbiMode::Relaxed,
            cuda_visible_devices: cuda,
            host,
            program: None,
        };
        assess(image, &req)?.into_plan()
    }

    fn binds(plan: &InjectionPlan) -> Vec<&BindMount> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// The error planning module `m` on `host` (and an empty image) ends in.
    fn refusal(module: &str, host: &MemImage) -> String {
        plan(module, host, &MemImage::new(), None)
            .unwrap_err()
            .to_string()
    }

    fn host_dev() -> MemImage {
        MemImage::new()
            .device("/dev/infiniband/uverbs0")
            .device("/dev/infiniband/uverbs1")
            .file("/dev/infiniband/README", b"")
            .device("/dev/nvidia0")
            .device("/dev/nvidia1")
            .device("/dev/nvidia2")
            .device("/dev/nvidiactl")
            .link("/dev/gpu1", "nvidia1")
    }

    #[test]
    fn devices_bind_every_match_rw_nosuid_with_device_access() {
        let image = MemImage::new().dir("/dev/infiniband");
        let plan = plan(
            "devices = [\"/dev/infiniband/uverbs*\", \"/dev/nvidiactl:/dev/extra\"]\n",
            &host_dev(),
            &image,
            None,
        )
        .unwrap();
        let b = binds(&plan);
        let targets: Vec<&Path> = b.iter().map(|b| b.target.as_path()).collect();
        assert_eq!(
            targets,
            [
                Path::new("/dev/infiniband/uverbs0"),
                Path::new("/dev/infiniband/uverbs1"),
                Path::new("/dev/extra/nvidiactl")
            ]
        );
        for b in &b {
            assert_eq!(b.kind, MountKind::Device);
            assert!(!b.read_only && b.nosuid && !b.nodev, "{b:?}");
            // The image has no such node: the launcher makes the mount point.
            assert!(!b.target_in_image, "{b:?}");
        }
        assert!(plan.gpus.is_none() && plan.env.is_empty());
    }

    #[test]
    fn a_device_glob_that_matches_a_plain_file_or_nothing_is_refused() {
        let e = refusal("devices = [\"/dev/infiniband/*\"]\n", &host_dev());
        assert!(
            e.contains("/dev/infiniband/README") && e.contains("not a device node"),
            "{e}"
        );
        let e = refusal("devices = [\"/dev/hfi1_*\"]\n", &host_dev());
        assert!(
            e.contains("[modules.m] devices") && e.contains("matches no file on this node"),
            "{e}"
        );
    }

    #[test]
    fn the_jobs_gpus_alone_are_bound_and_renumbered() {
        let image = MemImage::new();
        let plan = plan(
            "gpu_devices = [\"/dev/nvidia[0-9]*\"]\n",
            &host_dev(),
            &image,
            Some("2,1"),
        )
        .unwrap();
        let targets: Vec<&Path> = binds(&plan).iter().map(|b| b.target.as_path()).collect();
        assert_eq!(
            targets,
            [Path::new("/dev/nvidia1"), Path::new("/dev/nvidia2")]
        );
        let gpus = plan.gpus.unwrap();
        assert_eq!(gpus.cuda_visible_devices.as_deref(), Some("1,0"));
    }

    #[test]
    fn two_device_files_with_one_gpu_number_are_a_config_error() {
        let e = refusal(
            "gpu_devices = [\"/dev/nvidia1\", \"/dev/gpu1\"]\n",
            &host_dev(),
        );
        assert!(e.contains("are both GPU 1"), "{e}");
        let e = refusal("gpu_devices = [\"/dev/nvidiactl\"]\n", &host_dev());
        assert!(e.contains("does not end with a GPU number"), "{e}");
    }

    #[test]
    fn module_mounts_follow_the_hosts_symlinks_and_are_read_only_unless_writable() {
        let host = MemImage::new()
            .dir("/opt/site/etc")
            .link("/etc/site", "/opt/site/etc")
            .file("/opt/site/hosts", b"");
        let image = MemImage::new().dir("/etc/site");
        let plan = plan(
            "mounts = [{ source = \"/etc/site\", target = \"/etc/site\" },\n\
             { source = \"/opt/site/hosts\", target = \"/etc/site-hosts\", writable = true }]\n",
            &host,
            &image,
            None,
        )
        .unwrap();
        let b = binds(&plan);
        assert_eq!(
            (
                b[0].source.as_path(),
                b[0].kind,
                b[0].read_only,
                b[0].target_in_image
            ),
            (Path::new("/opt/site/etc"), MountKind::Dir, true, true)
        );
        assert_eq!(
            (
                b[1].source.as_path(),
                b[1].kind,
                b[1].read_only,
                b[1].target_in_image
            ),
            (Path::new("/opt/site/hosts"), MountKind::File, false, false)
        );
        assert!(b.iter().all(|b| b.nosuid && b.nodev));
        // Nothing lands under the Shoal directory, so no tmpfs.
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::Tmpfs { .. })));
        let e = refusal(
            "mounts = [{ source = \"/nowhere\", target = \"/x\" }]\n",
            &host,
        );
        assert!(
            e.contains("/nowhere") && e.contains("[modules.m] mounts"),
            "{e}"
        );
    }
}
