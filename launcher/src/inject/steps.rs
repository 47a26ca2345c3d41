//! The plan's steps, from the decision table and the modules' mounts,
//! devices and environment: binds, the Shoal tmpfs, the loader cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::ModuleMount;

use super::decide::Builder;
use super::devices::{device_bind, module_devices, module_gpus};
use super::gpu::{select_gpus, GpuDevice};
use super::image::{follow, kind_of, EntryKind, ImageFs};
use super::plan::{
    Action, BindMount, EnvChange, InjectionPlan, MountKind, ObjectKind, Request, Step, SHOAL_DIR,
};
use super::InjectError;

impl Builder<'_> {
    pub(super) fn plan(&mut self, image: &dyn ImageFs, req: &Request) -> Result<InjectionPlan, InjectError> {
        let shoal = Path::new(SHOAL_DIR);
        let mut steps = Vec::new();
        let mut env = Vec::new();
        let ro_bind = |source: &Path, target: PathBuf, kind, target_in_image, why: String| {
            Step::Bind(BindMount {
                source: source.to_path_buf(),
                target,
                kind,
                read_only: true,
                nosuid: true,
                nodev: true,
                target_in_image,
                why,
            })
        };
        let adds_library = self
            .rows
            .iter()
            .any(|r| r.kind == ObjectKind::Library && r.action == Action::Add);
        if adds_library && self.image.ldconfig.is_none() {
            for r in self
                .rows
                .iter_mut()
                .filter(|r| r.kind == ObjectKind::Library && r.action == Action::Add)
            {
                r.action = Action::Refuse;
                r.reason = format!(
                    "the image has no {} and no ldconfig to make host {} visible to its loader (it would need LD_LIBRARY_PATH, which the image can override)",
                    r.name,
                    r.host.as_deref().unwrap_or(Path::new("?")).display()
                );
            }
        }
        for r in &self.rows {
            let (Some(host), Action::Replace | Action::Add) = (&r.host, r.action) else {
                continue;
            };
            let step = match (r.kind, &r.image) {
                (ObjectKind::Library, Some(target)) if r.action == Action::Replace => ro_bind(
                    host,
                    target.clone(),
                    MountKind::File,
                    true,
                    format!("host {} replaces the image's ({})", r.name, r.module),
                ),
                (ObjectKind::Program, _) => ro_bind(
                    host,
                    shoal.join("bin").join(&r.name),
                    MountKind::File,
                    false,
                    format!("program of module {}", r.module),
                ),
                _ => ro_bind(
                    host,
                    shoal.join("lib").join(&r.name),
                    MountKind::File,
                    false,
                    format!("host {} added ({})", r.name, r.module),
                ),
            };
            steps.push(step);
        }
        let mut gpu_devices: Vec<GpuDevice> = Vec::new();
        let mut gpus = None;
        let mut bound_devices = BTreeSet::new();
        let mut sets: BTreeMap<String, String> = BTreeMap::new();
        for (name, module) in &req.modules {
            for m in &module.mounts {
                steps.push(module_mount(name, m, image, req.host)?);
            }
            for step in module_devices(name, module, image, req.host, &mut bound_devices)? {
                steps.push(step);
            }
            module_gpus(name, module, req.host, &mut gpu_devices)?;
            for (k, v) in &module.env {
                sets.insert(k.clone(), v.clone());
            }
            for (k, entries) in &module.env_prepend {
                env.push(EnvChange::Prepend {
                    name: k.clone(),
                    entries: entries.clone(),
                });
            }
        }
        if !gpu_devices.is_empty() {
            let selection = select_gpus(&gpu_devices, req.cuda_visible_devices)?;
            for dev in &selection.devices {
                if bound_devices.insert(dev.target.clone()) {
                    let module = req
                        .modules
                        .iter()
                        .find(|(_, m)| !m.gpu_devices.is_empty())
                        .map(|(n, _)| *n)
                        .unwrap_or("?");
                    steps.push(device_bind(module, &dev.host, dev.target.clone(), image, req.host)?);
                }
            }
            // `CUDA_VISIBLE_DEVICES` is not set here: the renumbered list
            // (`selection.cuda_visible_devices`) is right only in a /dev
            // holding the bound GPUs alone, which the launcher decides
            // (`container::add_injection` applies it to a minimal /dev).
            gpus = Some(selection);
        }
        if self
            .rows
            .iter()
            .any(|r| r.kind == ObjectKind::Program && r.action != Action::Refuse)
        {
            env.push(EnvChange::Prepend {
                name: "PATH".into(),
                entries: vec![format!("{SHOAL_DIR}/bin")],
            });
        }
        env.extend(
            sets.into_iter()
                .map(|(name, value)| EnvChange::Set { name, value }),
        );
        if adds_library {
            if let Some(ldconfig) = &self.image.ldconfig {
                let conf = shoal.join("etc/ld.so.conf");
                let cache = shoal.join("etc/ld.so.cache");
                steps.push(Step::WriteFile {
                    path: conf.clone(),
                    contents: format!("{SHOAL_DIR}/lib\ninclude /etc/ld.so.conf\n"),
                });
                steps.push(Step::RunInContainer {
                    argv: vec![
                        ldconfig.display().to_string(),
                        "-X".into(), // no link updates: the image is read-only
                        "-f".into(),
                        conf.display().to_string(),
                        "-C".into(),
                        cache.display().to_string(),
                    ],
                    why: "the image's own ldconfig writes a loader cache that lists the added libraries".into(),
                });
                steps.push(Step::BindWithin {
                    source: cache,
                    target: "/etc/ld.so.cache".into(),
                    target_in_image: kind_of(image, Path::new("/etc/ld.so.cache"))
                        == Some(EntryKind::File),
                    why: "the image's loader reads the generated cache".into(),
                });
            }
        }
        // The tmpfs first, when anything goes under it (added libraries,
        // programs, generated files, a module mount aimed there).
        let under_shoal = |p: &Path| p.starts_with(shoal);
        if steps.iter().any(|s| match s {
            Step::Bind(b) => under_shoal(&b.target),
            Step::WriteFile { path, .. } => under_shoal(path),
            _ => false,
        }) {
            steps.insert(
                0,
                Step::Tmpfs {
                    target: shoal.to_path_buf(),
                },
            );
        }
        Ok(InjectionPlan { steps, env, gpus })
    }
}

/// A module's `mounts` entry: the host path (symlinks followed, through the
/// host seam) bound at its container path, read-only unless `writable`.
pub(super) fn module_mount(
    name: &str,
    m: &ModuleMount,
    image: &dyn ImageFs,
    host: &dyn ImageFs,
) -> Result<Step, InjectError> {
    let (source, kind) = follow(host, &m.source).map_err(|e| InjectError::Host {
        path: m.source.clone(),
        message: format!("[modules.{name}] mounts: {e}"),
    })?;
    Ok(Step::Bind(BindMount {
        source,
        target: m.target.clone(),
        kind: if kind == EntryKind::Dir {
            MountKind::Dir
        } else {
            MountKind::File
        },
        read_only: !m.writable,
        nosuid: true,
        nodev: true,
        target_in_image: kind_of(image, &m.target).is_some(),
        why: format!("mount of module {name}"),
    }))
}
