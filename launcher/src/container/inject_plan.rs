//! Host-library injection made part of the container plan (pure): the
//! [`crate::inject`] engine decides, [`add_injection`] turns its
//! [`InjectionPlan`] into the launcher's [`Plan`]: the plan's tmpfs and
//! binds become ordinary [`Mount`]s appended to `plan.mounts` (so the
//! skeleton makes their mount points, new ones included, and the lowering
//! binds and remounts them with their flags, targets resolved inside the
//! root); what needs the finished root (chown of the Shoal tmpfs, generated
//! files, the image's `ldconfig`, the cache bound over `/etc/ld.so.cache`)
//! becomes `plan.setup`, in the engine's order (carried out by `setup`);
//! environment changes go into `plan.env`. `--dry-run` prints all of it.
//!
//! Reading the image for the engine is `assess` (as the user, always).

use super::model::{DevLayout, Mount, MountKind, OrderError, Origin, Plan, SetupStep};
use crate::inject::{self, EnvChange, InjectionPlan, Step, TaskGpus};

/// Appends an injection to a container plan (pure). Mounts keep the
/// engine's order after the plan's own; setup steps keep theirs.
/// The job's GPU variables keep the step's numbering (see
/// [`inject::visible_inside`]); `plan()` does this with the task's own GPUs
/// for a request that carries an injection.
pub fn add_injection(plan: &mut Plan, injection: &InjectionPlan) -> Result<(), OrderError> {
    extend(plan, injection)?;
    // The step's numbers were made by `select_gpus`: renumbering cannot fail.
    let inside = inject::visible_inside(injection.gpus.as_ref(), plan.dev == DevLayout::Minimal, &TaskGpus::Step).unwrap_or(None);
    set_gpu_list(&mut plan.env, inside.as_deref());
    Ok(())
}

/// The injection's mounts, setup steps and environment changes, appended
/// to the plan; the GPU variables are left to the caller.
pub(crate) fn extend(plan: &mut Plan, injection: &InjectionPlan) -> Result<(), OrderError> {
    let origin = |why: &str| Origin::Inject(why.to_string());
    let mut setup_started = false;
    for (i, step) in injection.steps.iter().enumerate() {
        let mount = match step {
            Step::Tmpfs { target } => {
                plan.setup.push(SetupStep::Own { path: target.clone() });
                Some(Mount {
                    target: target.clone(),
                    kind: MountKind::Tmpfs { mode: 0o755, noexec: false, devices: false },
                    read_only: false,
                    harden: true,
                    origin: origin("Shoal directory"),
                    required: true,
                })
            }
            Step::Bind(b) => Some(Mount {
                target: b.target.clone(),
                // Site paths from the admin's module config, resolved by
                // the engine: opened with the launcher's credentials.
                kind: MountKind::Bind { source: b.source.clone(), recursive: false, as_user: false },
                read_only: b.read_only,
                // A device bind keeps nodev off; nosuid means nothing on a
                // lone device node, so it goes with it (Mount has one switch).
                harden: b.nosuid && b.nodev,
                origin: origin(&b.why),
                required: true,
            }),
            Step::WriteFile { path, contents } => {
                let on_tmpfs = injection.steps[..i]
                    .iter()
                    .any(|s| matches!(s, Step::Tmpfs { target } if path.starts_with(target) && path != target));
                if !on_tmpfs {
                    return Err(OrderError::WriteOutsideTmpfs { index: i + 1, path: path.clone() });
                }
                plan.setup.push(SetupStep::WriteFile { path: path.clone(), contents: contents.clone() });
                None
            }
            Step::RunInContainer { argv, why } => {
                plan.setup.push(SetupStep::Run { argv: argv.clone(), why: why.clone() });
                None
            }
            Step::BindWithin { source, target, why, .. } => {
                plan.setup.push(SetupStep::BindWithin {
                    source: source.clone(),
                    target: target.clone(),
                    why: why.clone(),
                });
                None
            }
        };
        match mount {
            Some(m) if setup_started => {
                return Err(OrderError::MountAfterSetup { index: i + 1, what: format!("mount {}", m.target.display()) })
            }
            Some(m) => plan.mounts.push(m),
            None => setup_started = true,
        }
    }
    for change in &injection.env {
        apply_env(&mut plan.env, change);
    }
    Ok(())
}

/// Variables that number the job's GPUs like `CUDA_VISIBLE_DEVICES`: Slurm
/// sets `GPU_DEVICE_ORDINAL` (OpenCL) to the same list; renumbered with it
/// when present.
pub const GPU_LIST_VARIABLES: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"];

/// Sets the job's GPU list variables to `inside` (see
/// [`inject::visible_inside`]; `None` leaves them): `CUDA_VISIBLE_DEVICES`
/// always, `GPU_DEVICE_ORDINAL` where the job has it.
pub(crate) fn set_gpu_list(env: &mut Vec<(String, String)>, inside: Option<&str>) {
    let Some(inside) = inside else { return };
    apply_env(env, &EnvChange::Set { name: GPU_LIST_VARIABLES[0].into(), value: inside.into() });
    if let Some(slot) = env.iter_mut().find(|(k, _)| k == GPU_LIST_VARIABLES[1]) {
        slot.1 = inside.into();
    }
}

fn apply_env(env: &mut Vec<(String, String)>, change: &EnvChange) {
    let (name, value) = match change {
        EnvChange::Set { name, value } => (name, value.clone()),
        EnvChange::Prepend { name, entries } => {
            let mut v = entries.join(":");
            if let Some((_, old)) = env.iter().find(|(k, _)| k == name) {
                if !old.is_empty() {
                    v = format!("{v}:{old}");
                }
            }
            (name, v)
        }
    };
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.clone(), value)),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;
    use crate::container::{plan as make_plan, RunConfig, RunRequest};
    use crate::inject::{BindMount, MountKind as InjectKind};

    fn base() -> Plan {
        make_plan(&base_req(), &Config::default()).unwrap()
    }

    /// plan.rs's request for alice, as a privileged (plugin) task of an MPI
    /// program with GPUs 3 and 1 given to the job.
    fn base_req() -> RunRequest {
        let mut r = crate::container::plan::tests::alice_request();
        r.image.config = RunConfig { env: vec!["PATH=/usr/bin:/bin".into()], ..Default::default() };
        r.argv = vec!["mpi_app".into()];
        r.user.shell = "/bin/sh".into();
        r.privileged = true;
        r.cwd = "/home/alice".into();
        r.host_env = vec![("CUDA_VISIBLE_DEVICES".into(), "3,1".into())];
        r
    }

    fn bind(source: &str, target: &str, kind: InjectKind, in_image: bool) -> Step {
        Step::Bind(BindMount {
            source: source.into(),
            target: target.into(),
            kind,
            read_only: kind != InjectKind::Device,
            nosuid: true,
            nodev: kind != InjectKind::Device,
            target_in_image: in_image,
            why: "host libfoo.so.1 replaces the image's (foo)".into(),
        })
    }

    fn injection() -> InjectionPlan {
        InjectionPlan {
            steps: vec![
                Step::Tmpfs { target: "/.shoal".into() },
                bind("/usr/lib/libfoo.so.1.2", "/usr/lib/x/libfoo.so.1.0", InjectKind::File, true),
                bind("/usr/lib/libbar.so.3", "/.shoal/lib/libbar.so.3", InjectKind::File, false),
                bind("/dev/nvidia3", "/dev/nvidia3", InjectKind::Device, false),
                Step::WriteFile { path: "/.shoal/etc/ld.so.conf".into(), contents: "/.shoal/lib\n".into() },
                Step::RunInContainer {
                    argv: vec!["/sbin/ldconfig".into(), "-X".into()],
                    why: "cache".into(),
                },
                Step::BindWithin {
                    source: "/.shoal/etc/ld.so.cache".into(),
                    target: "/etc/ld.so.cache".into(),
                    target_in_image: true,
                    why: "cache".into(),
                },
            ],
            env: vec![
                EnvChange::Prepend { name: "PATH".into(), entries: vec!["/.shoal/bin".into()] },
                EnvChange::Set { name: "CUDA_VISIBLE_DEVICES".into(), value: "1,0".into() },
                EnvChange::Prepend { name: "NEW".into(), entries: vec!["a".into(), "b".into()] },
            ],
            gpus: None,
        }
    }

    #[test]
    fn mounts_follow_the_plans_own_and_setup_keeps_the_engines_order() {
        let mut plan = base();
        let before = plan.mounts.len();
        add_injection(&mut plan, &injection()).unwrap();
        let added: Vec<_> = plan.mounts[before..].iter().map(|m| (m.target.to_str().unwrap(), m.read_only, m.harden)).collect();
        assert_eq!(
            added,
            [
                ("/.shoal", false, true),
                ("/usr/lib/x/libfoo.so.1.0", true, true),
                ("/.shoal/lib/libbar.so.3", true, true),
                ("/dev/nvidia3", false, false),
            ]
        );
        assert!(matches!(plan.mounts[before].kind, MountKind::Tmpfs { mode: 0o755, .. }));
        assert!(matches!(
            &plan.mounts[before + 1].kind,
            MountKind::Bind { recursive: false, as_user: false, source } if source == Path::new("/usr/lib/libfoo.so.1.2")
        ));
        assert!(matches!(&plan.setup[0], SetupStep::Own { path } if path == Path::new("/.shoal")));
        assert!(matches!(&plan.setup[1], SetupStep::WriteFile { .. }));
        assert!(matches!(&plan.setup[2], SetupStep::Run { .. }));
        assert!(matches!(&plan.setup[3], SetupStep::BindWithin { .. }));
        assert_eq!(plan.setup_bind_targets().collect::<Vec<_>>(), [Path::new("/etc/ld.so.cache")]);
    }

    #[test]
    fn environment_changes_apply_on_top() {
        let mut plan = base();
        add_injection(&mut plan, &injection()).unwrap();
        let get = |k: &str| plan.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/.shoal/bin:/usr/bin:/bin"));
        assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some("1,0"));
        assert_eq!(get("NEW"), Some("a:b"));
    }

    #[test]
    fn gpus_are_renumbered_only_in_a_minimal_dev() {
        let devices: Vec<_> = (0..4)
            .map(|i| crate::inject::GpuDevice {
                index: i,
                host: format!("/g/nvidia{i}").into(),
                target: format!("/dev/nvidia{i}").into(),
            })
            .collect();
        let inj = InjectionPlan { gpus: Some(crate::inject::select_gpus(&devices, Some("3,1")).unwrap()), ..Default::default() };
        let get = |p: &Plan, k: &str| p.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut plan = base();
        plan.env.push(("GPU_DEVICE_ORDINAL".into(), "3,1".into()));
        add_injection(&mut plan, &inj).unwrap();
        assert_eq!(get(&plan, "CUDA_VISIBLE_DEVICES").as_deref(), Some("1,0"));
        assert_eq!(get(&plan, "GPU_DEVICE_ORDINAL").as_deref(), Some("1,0"));
        // A task of the step with its own host GPU 3, its injection in the request.
        let mut req = base_req();
        req.host_env.push(("GPU_DEVICE_ORDINAL".into(), "3".into()));
        let task = |own: &str| Some(crate::container::Injection { plan: inj.clone(), task_gpus: TaskGpus::Host(own.into()) });
        req.injection = task("3");
        let plan = make_plan(&req, &Config::default()).unwrap();
        assert_eq!(get(&plan, "CUDA_VISIBLE_DEVICES").as_deref(), Some("1"));
        assert_eq!(get(&plan, "GPU_DEVICE_ORDINAL").as_deref(), Some("1"));
        req.injection = task("2");
        assert!(make_plan(&req, &Config::default()).unwrap_err().to_string().contains("GPU 2 is not among"));
        // Slurm's local numbers: the job's values stay.
        req.injection = Some(crate::container::Injection { plan: inj.clone(), task_gpus: TaskGpus::Local });
        let plan = make_plan(&req, &Config::default()).unwrap();
        assert_eq!(get(&plan, "CUDA_VISIBLE_DEVICES").as_deref(), Some("3,1"));
        // The host's whole /dev: CUDA numbers the GPUs as on the host.
        let mut plan = base();
        plan.dev = DevLayout::Host;
        add_injection(&mut plan, &inj).unwrap();
        assert_eq!(get(&plan, "CUDA_VISIBLE_DEVICES").as_deref(), Some("3,1"), "left as the job has it");
    }

    #[test]
    fn a_mount_after_a_setup_step_is_refused() {
        let mut inj = injection();
        inj.steps.push(bind("/x", "/y", InjectKind::File, true));
        let e = add_injection(&mut base(), &inj).unwrap_err();
        assert!(matches!(e, OrderError::MountAfterSetup { index: 8, .. }), "{e}");
    }

    #[test]
    fn generated_files_go_only_on_the_injections_tmpfs() {
        let mut inj = injection();
        inj.steps[4] = Step::WriteFile { path: "/etc/ld.so.conf".into(), contents: String::new() };
        let e = add_injection(&mut base(), &inj).unwrap_err();
        assert_eq!(e, OrderError::WriteOutsideTmpfs { index: 5, path: "/etc/ld.so.conf".into() });
    }

    #[test]
    fn dry_run_shows_mounts_and_setup() {
        let mut plan = base();
        add_injection(&mut plan, &injection()).unwrap();
        let text = plan.render();
        assert!(text.contains("/.shoal <- tmpfs mode=755 [rw,nosuid,nodev] (inject: Shoal directory)"), "{text}");
        assert!(text.contains("/usr/lib/x/libfoo.so.1.0 <- bind /usr/lib/libfoo.so.1.2 [ro,nosuid,nodev]"), "{text}");
        assert!(text.contains("setup  1 chown /.shoal to uid 1001 gid 1001"), "{text}");
        assert!(text.contains("setup  3 run [\"/sbin/ldconfig\", \"-X\"] as the user, no_new_privs"), "{text}");
        assert!(text.contains("setup  4 bind /.shoal/etc/ld.so.cache -> /etc/ld.so.cache [ro,nosuid,nodev]"), "{text}");
    }
}
