//! Host-library injection in the container: the [`crate::inject`] engine
//! decides, this module makes its [`InjectionPlan`] part of the launcher's
//! [`Plan`] and carries out what cannot be a plain mount.
//!
//! - Deciding ([`add_injection`], pure): the plan's tmpfs and binds become
//!   ordinary [`Mount`]s appended to `plan.mounts` (so the skeleton makes
//!   their mount points, new ones included, and `rootfs` binds and remounts
//!   them with their flags, targets resolved inside the root); what needs the
//!   finished root (chown of the Shoal tmpfs, generated files, the image's
//!   `ldconfig`, the cache bound over `/etc/ld.so.cache`) becomes
//!   `plan.setup`, in the engine's order; environment changes go into
//!   `plan.env`. `--dry-run` prints all of it.
//! - Reading the image ([`assess_modules`], [`assess_image`]): as the
//!   user, always.
//! - Doing ([`run_setup`]): called once per container, by the process that
//!   built it, after pivot_root and before anything of the user's runs.
//!
//! Must never: run a setup command with a capability or without
//! no_new_privs, write a generated file as root, or bind a path the user
//! could have swapped for a symlink.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{fstat, SFlag};

use super::exec;
use super::plan::{DevLayout, Mode, Mount, MountKind, Origin, Plan};
use super::rootfs::{skeleton_path, BuildError};
use super::sys;
use crate::config::Config;
use crate::inject::{
    self, Assessment, DirImage, EnvChange, InjectError, InjectionPlan, Request, SquashfsImage, Step,
};

/// A step that needs the container's finished root; run in order by the
/// process that built the container, after pivot_root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Give a tmpfs the plan mounted to the user (the image's `ldconfig`
    /// writes under it as the user).
    Own { path: PathBuf },
    /// Write a new file, as the user, creating its directories.
    WriteFile { path: PathBuf, contents: String },
    /// Run a program of the image as the user, no_new_privs, no
    /// capabilities, clean environment; it must exit 0.
    Run { argv: Vec<String>, why: String },
    /// Bind a regular file of the container over another path
    /// (ro,nosuid,nodev); the target exists in the skeleton.
    BindWithin { source: PathBuf, target: PathBuf, why: String },
}

/// The engine handed over a plan the launcher cannot carry out as given
/// (a bug in the injection engine, never the user's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("injection plan step {index} ({what}) comes after a step that needs the finished root; mounts must come first")]
    MountAfterSetup { index: usize, what: String },
    #[error("injection plan step {index} writes {path}, which is not on a tmpfs of the injection; generated files go only there")]
    WriteOutsideTmpfs { index: usize, path: PathBuf },
}

/// Appends an injection to a container plan (pure). Mounts keep the
/// engine's order after the plan's own; setup steps keep theirs.
pub fn add_injection(plan: &mut Plan, injection: &InjectionPlan) -> Result<(), OrderError> {
    let origin = |why: &str| Origin::Other(format!("inject: {why}"));
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
    if let Some(visible) = injection.gpus.as_ref().and_then(|g| g.cuda_visible_devices.as_deref()) {
        set_cuda_visible_devices(plan, visible);
    }
    Ok(())
}

/// Variables that number the job's GPUs like `CUDA_VISIBLE_DEVICES`: Slurm
/// sets `GPU_DEVICE_ORDINAL` (OpenCL) to the same list; renumbered with it
/// when present.
pub const GPU_LIST_VARIABLES: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"];

/// `CUDA_VISIBLE_DEVICES` inside, already renumbered for the bound GPUs:
/// set only where /dev holds them alone, and only to a list (Slurm's empty
/// value or `NoDevFiles` stays as the job has it).
fn set_cuda_visible_devices(plan: &mut Plan, inside: &str) {
    if plan.dev != DevLayout::Minimal || !inject::names_gpus(inside) {
        return;
    }
    apply_env(&mut plan.env, &EnvChange::Set { name: "CUDA_VISIBLE_DEVICES".into(), value: inside.into() });
    if let Some(slot) = plan.env.iter_mut().find(|(k, _)| k == GPU_LIST_VARIABLES[1]) {
        slot.1 = inside.into();
    }
}

/// One task's GPUs: Slurm may give each task its own host numbers
/// (`--gpus-per-task`) within the step's, whose container the step's tasks
/// share. `task_visible` (the task's `CUDA_VISIBLE_DEVICES`, host numbers)
/// is renumbered against the GPUs the injection bound. No GPU module or no
/// value: nothing changes.
pub fn set_task_gpus(plan: &mut Plan, injection: &InjectionPlan, task_visible: Option<&str>) -> Result<(), InjectError> {
    let (Some(gpus), Some(visible)) = (&injection.gpus, task_visible) else {
        return Ok(());
    };
    if plan.dev != DevLayout::Minimal || !inject::names_gpus(visible) {
        return Ok(());
    }
    let inside = gpus.renumber(visible)?;
    set_cuda_visible_devices(plan, &inside);
    Ok(())
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

/// Container paths the skeleton must hold as empty files for
/// [`SetupStep::BindWithin`] targets (a bind needs an existing target, and
/// the root is read-only once built).
pub(crate) fn skeleton_files(plan: &Plan) -> impl Iterator<Item = &Path> {
    plan.setup.iter().filter_map(|s| match s {
        SetupStep::BindWithin { target, .. } => Some(target.as_path()),
        _ => None,
    })
}

/// The `--dry-run` lines for the setup steps.
pub(crate) fn render(plan: &Plan) -> String {
    let mut s = String::new();
    for (i, step) in plan.setup.iter().enumerate() {
        let _ = match step {
            SetupStep::Own { path } => writeln!(
                s,
                "setup {:>2} chown {} to uid {} gid {}",
                i + 1,
                path.display(),
                plan.identity.uid,
                plan.identity.gid
            ),
            SetupStep::WriteFile { path, contents } => {
                writeln!(s, "setup {:>2} write {} {:?} (as the user)", i + 1, path.display(), contents)
            }
            SetupStep::Run { argv, why } => writeln!(
                s,
                "setup {:>2} run {:?} as the user, no_new_privs, must exit 0  # {why}",
                i + 1,
                argv
            ),
            SetupStep::BindWithin { source, target, why } => writeln!(
                s,
                "setup {:>2} bind {} -> {} [ro,nosuid,nodev]  # {why}",
                i + 1,
                source.display(),
                target.display()
            ),
        };
    }
    s
}

/// The job's command as the container will look it up: its `argv[0]`
/// and the container's `PATH`.
#[derive(Debug, Clone, Copy)]
pub struct TaskCommand<'a> {
    pub argv0: &'a str,
    pub path: &'a str,
}

/// The program the loader will start for `cmd`, inside the image: `argv0`
/// when absolute, else the first file of that name on `PATH` (a script is
/// found too; it has no RUNPATH, which the check reads once, when it parses
/// the file). None when it is not in the image (a program in the bound cwd
/// or home, a relative path): the image's own library directories are still
/// all searched.
fn find_program(image: &dyn inject::ImageFs, cmd: TaskCommand<'_>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if cmd.argv0.contains('/') {
        vec![PathBuf::from(cmd.argv0)]
    } else {
        cmd.path.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(cmd.argv0)).collect()
    };
    candidates
        .into_iter()
        .filter(|p| p.is_absolute())
        .find(|p| inject::image::kind_of(image, p) == Some(inject::image::EntryKind::File))
}

/// Selects the requested modules (`--module` values; empty: the site's
/// `default_modules`) and checks them against the squashfs image at
/// `squashfs`, with the caller's current credentials. `None` when no module
/// is selected. `command`, when known, names the job's program, whose
/// RUNPATH copies of a library are then covered too. The SPANK plugin
/// calls this from slurmstepd's user context (effective ids already the
/// user's), once per step and node.
pub fn assess_image(
    squashfs: &Path,
    cfg: &Config,
    requested: &[String],
    cuda_visible_devices: Option<&str>,
    command: Option<TaskCommand<'_>>,
) -> Result<Option<Assessment>, InjectError> {
    let modules = inject::select_modules(cfg, requested)?;
    if modules.is_empty() {
        return Ok(None);
    }
    let image = SquashfsImage::open(squashfs).map_err(|e| InjectError::Image {
        image: squashfs.display().to_string(),
        message: e.to_string(),
    })?;
    let host = DirImage::new("/");
    let program = command.and_then(|c| find_program(&image, c));
    let request = Request {
        modules,
        default_abi: cfg.injection.abi,
        cuda_visible_devices,
        host: &host,
        program: program.as_deref(),
    };
    inject::assess(&image, &request).map(Some)
}

/// [`assess_image`] on the plan's image and command (`argv[0]` on the
/// plan's `PATH`), always with the user's credentials: in unprivileged mode the caller is the user; in privileged
/// mode (root for a user) this thread's effective ids are the user's for
/// the whole check, so an image is read only if the user may read it, and
/// the module's host files are read as the user will load them.
pub fn assess_modules(
    plan: &Plan,
    cfg: &Config,
    requested: &[String],
    cuda_visible_devices: Option<&str>,
) -> Result<Option<Assessment>, InjectError> {
    let path = plan.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(super::env::DEFAULT_PATH);
    let command = plan.argv.first().map(|argv0| TaskCommand { argv0, path });
    let check = || assess_image(&plan.root.squashfs, cfg, requested, cuda_visible_devices, command);
    if plan.mode == Mode::Privileged && plan.identity.uid != 0 {
        let saved: Vec<u32> = nix::unistd::getgroups()
            .map_err(|e| InjectError::Module(format!("cannot read root's groups: {e}")))?
            .iter()
            .map(|g| g.as_raw())
            .collect();
        sys::thread_set_effective(plan.identity.uid, plan.identity.gid, &plan.groups).map_err(|e| {
            InjectError::Module(format!("cannot take uid {}'s credentials to read the image: {e}", plan.identity.uid))
        })?;
        let r = check();
        sys::thread_restore_root(&saved).expect("restoring root's ids after reading the image as the user");
        r
    } else {
        check()
    }
}

fn step_err(what: String) -> impl FnOnce(io::Error) -> BuildError {
    move |err| BuildError::Step { what, err }
}

/// Runs `f` as the user (this thread's effective ids) when root builds for
/// one; the process is single-threaded here.
fn as_user<T>(plan: &Plan, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if plan.mode != Mode::Privileged || plan.identity.uid == 0 {
        return f();
    }
    let saved: Vec<u32> = nix::unistd::getgroups()?.iter().map(|g| g.as_raw()).collect();
    sys::thread_set_effective(plan.identity.uid, plan.identity.gid, &plan.groups)?;
    let r = f();
    sys::thread_restore_root(&saved).expect("restoring root's ids after writing as the user");
    r
}

/// Carries out `plan.setup` in the container the current process just
/// built (root pivoted, cwd `/`). Still the builder's credentials.
pub(crate) fn run_setup(plan: &Plan) -> Result<(), BuildError> {
    if plan.setup.is_empty() {
        return Ok(());
    }
    let root = sys::openat(None, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(step_err("open the container root".into()))?;
    for step in &plan.setup {
        match step {
            SetupStep::Own { path } => {
                let what = format!("give {} to uid {}", path.display(), plan.identity.uid);
                let fd = sys::open_in_root(root.as_fd(), path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                nix::unistd::fchown(
                    fd.as_fd(),
                    Some(nix::unistd::Uid::from_raw(plan.identity.uid)),
                    Some(nix::unistd::Gid::from_raw(plan.identity.gid)),
                )
                .map_err(|e| step_err(what)(e.into()))?;
            }
            SetupStep::WriteFile { path, contents } => {
                let what = format!("write {}", path.display());
                as_user(plan, || {
                    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                        return Err(io::ErrorKind::InvalidInput.into());
                    };
                    skeleton_path(root.as_fd(), dir, true)?;
                    let dir = sys::open_in_root(root.as_fd(), dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    let fd = sys::openat(
                        Some(dir.as_fd()),
                        Path::new(name),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o644,
                    )?;
                    std::fs::File::from(fd).write_all(contents.as_bytes())
                })
                .map_err(step_err(what))?;
            }
            SetupStep::Run { argv, why } => run_as_user(plan, argv, why)?,
            SetupStep::BindWithin { source, target, .. } => {
                let what = format!("bind {} over {}", source.display(), target.display());
                // The user's ldconfig wrote the source: no symlink, a
                // regular file, resolved inside the container.
                let src = sys::open_in_root(root.as_fd(), source, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                let st = fstat(src.as_fd()).map_err(|e| step_err(what.clone())(e.into()))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(step_err(what)(io::Error::other("not a regular file")));
                }
                if st.st_uid != plan.identity.uid {
                    return Err(step_err(what)(io::Error::other(format!(
                        "owned by uid {}, not by the user whose setup step wrote it",
                        st.st_uid
                    ))));
                }
                let dst = sys::open_in_root(root.as_fd(), target, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                sys::mount(Some(&sys::fd_path(src.as_fd())), &sys::fd_path(dst.as_fd()), None, libc::MS_BIND, None)
                    .map_err(step_err(what.clone()))?;
                let top = sys::open_in_root(root.as_fd(), target, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(step_err(what.clone()))?;
                let keep = sys::locked_flags(src.as_fd()).map_err(step_err(what.clone()))?;
                let flags = libc::MS_REMOUNT | libc::MS_BIND | keep | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                sys::mount(None, &sys::fd_path(top.as_fd()), None, flags, None)
                    .map_err(step_err(format!("remount {} ro,nosuid,nodev", target.display())))?;
            }
        }
    }
    Ok(())
}

/// Runs a program of the image as the user: credentials dropped (in
/// privileged mode), no_new_privs, no capabilities, a clean environment.
fn run_as_user(plan: &Plan, argv: &[String], why: &str) -> Result<(), BuildError> {
    let what = format!("run {} ({why})", argv.join(" "));
    let Some((prog, args)) = argv.split_first() else {
        return Err(step_err(what)(io::ErrorKind::InvalidInput.into()));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().env("PATH", super::env::DEFAULT_PATH).current_dir("/");
    let child_plan = plan.clone();
    // SAFETY: runs in the forked child before exec; the launcher is
    // single-threaded here, so no lock can be held by a vanished thread.
    unsafe {
        cmd.pre_exec(move || {
            exec::harden().map_err(io::Error::other)?;
            exec::become_user(&child_plan).map_err(io::Error::other)
        });
    }
    let out = cmd.output().map_err(step_err(what.clone()))?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        if detail.len() > 400 {
            detail.truncate(400);
            detail.push_str("...");
        }
        return Err(step_err(what)(io::Error::other(format!(
            "{}{}",
            out.status,
            if detail.is_empty() { String::new() } else { format!("; it printed: {detail}") }
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{plan as make_plan, Identity, ImageConfig, RunImage, RunRequest};
    use crate::inject::{BindMount, MountKind as InjectKind};

    fn base() -> Plan {
        let req = RunRequest {
            image: RunImage {
                squashfs: "/home/alice/img.sqfs".into(),
                config: ImageConfig { env: vec!["PATH=/usr/bin:/bin".into()], ..Default::default() },
                trusted_for_kernel_mount: false,
            },
            argv: vec!["mpi_app".into()],
            entrypoint: false,
            user: Identity {
                name: "alice".into(),
                uid: 1001,
                gid: 1001,
                home: "/home/alice".into(),
                shell: "/bin/sh".into(),
                groups: vec![("alice".into(), 1001)],
            },
            privileged: true,
            cwd: "/home/alice".into(),
            host_env: vec![("CUDA_VISIBLE_DEVICES".into(), "3,1".into())],
            env: vec![],
            mounts: vec![],
            writable: false,
            terminal: None,
        };
        make_plan(&req, &Config::default()).unwrap()
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
        assert_eq!(skeleton_files(&plan).collect::<Vec<_>>(), [Path::new("/etc/ld.so.cache")]);
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
        // A task of the step with its own host GPU 3.
        set_task_gpus(&mut plan, &inj, Some("3")).unwrap();
        assert_eq!(get(&plan, "CUDA_VISIBLE_DEVICES").as_deref(), Some("1"));
        assert!(set_task_gpus(&mut plan, &inj, Some("2")).unwrap_err().to_string().contains("GPU 2 is not among"));
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
