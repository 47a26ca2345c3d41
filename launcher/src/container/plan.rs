//! Deciding: a [`RunRequest`] and the site [`Config`] become a [`Plan`], a
//! plain value that says everything the container will be (which image file
//! and how it is mounted, every mount in order with its flags, /etc entries,
//! environment, credentials, cwd, argv). `--dry-run` prints it (`render`).
//!
//! Pure: no syscalls, no filesystem access, so every decision is unit-tested
//! as data. Carrying a plan out is `lower` (the syscalls), `rootfs.rs` and
//! `mod.rs`.

use std::path::{Path, PathBuf};

use super::env;
use super::inject_plan;
use super::model::*;
use super::policy;
use crate::config::Config;
use crate::inject;

/// The image through FUSE, served as the site chose (`[launcher] image_server`).
fn fuse_mount(cfg: &Config) -> ImageMount {
    let shoal = match cfg.launcher.image_server {
        crate::config::ImageServer::Shoal => Some(cfg.launcher.shoal_path()),
        crate::config::ImageServer::Squashfuse => None,
    };
    ImageMount::Fuse { squashfuse: cfg.launcher.squashfuse_path(), shoal }
}

/// Where a remap-root container tells apt not to change users.
pub const APT_SANDBOX: &str = "/etc/apt/apt.conf.d/00shoal-remap-root";

/// `--container-remap-root` (the plugin): the task will be uid 0 of a user
/// namespace that maps only the user, so the image is served through FUSE
/// (a kernel squashfs mount cannot change owners) with every file shown as
/// the user's: inside, they are root's, and dpkg or apt can replace them in
/// a writable container. The user's view outside is of their own files in
/// a read-only, nosuid, nodev mount of an image they can read.
pub fn remap_root(plan: &mut Plan, cfg: &Config) {
    plan.remap_root = true;
    // apt drops to its `_apt` user to download, which the namespace does
    // not map (setgroups and setuid fail): as "root" in it, apt keeps the
    // user's own ids, as it does in Charliecloud and enroot containers.
    plan.setup.push(SetupStep::Configure { path: APT_SANDBOX.into(), contents: "APT::Sandbox::User \"root\";\n".into() });
    if plan.root.via == ImageMount::KernelLoop {
        plan.root.via = fuse_mount(cfg);
    }
    plan.root.owner = Some((plan.identity.uid, plan.identity.gid));
}

/// Makes the plan: pure, decides everything.
pub fn plan(req: &RunRequest, cfg: &Config) -> Result<Plan, PlanError> {
    let mode = if req.privileged { Mode::Privileged } else { Mode::Unprivileged };
    // A checked image is read through Shoal's server: the kernel and
    // squashfuse_ll would read it unchecked.
    let checked = req.image.verity.is_some();
    if checked && cfg.launcher.image_server == crate::config::ImageServer::Squashfuse {
        return Err(PlanError::VerityNeedsShoal { image: req.image.squashfs.display().to_string() });
    }
    let kernel = mode == Mode::Privileged
        && !checked
        && (req.image.scope.kernel_mountable() || cfg.launcher.allow_kernel_mount_of_user_images);
    let root = RootFs {
        squashfs: req.image.squashfs.clone(),
        via: if kernel {
            ImageMount::KernelLoop
        } else {
            fuse_mount(cfg)
        },
        verify_trust: !cfg.launcher.allow_kernel_mount_of_user_images,
        writable: req.writable,
        upper: None,
        owner: None,
        verity: req.image.verity.clone(),
    };

    let mut mounts = Vec::new();
    let sys = |target: &str, kind: MountKind, harden: bool| Mount {
        target: target.into(),
        kind,
        read_only: false,
        harden,
        origin: Origin::System,
        required: true,
    };
    let host_bind = |p: &str| MountKind::Bind { source: p.into(), recursive: true, as_user: false };
    let dev = if cfg.launcher.host_dev { DevLayout::Host } else { DevLayout::Minimal };
    match dev {
        DevLayout::Host => mounts.push(sys("/dev", host_bind("/dev"), false)),
        DevLayout::Minimal => mounts.extend(minimal_dev(mode, req.terminal.as_deref())),
    }
    mounts.push(sys("/proc", host_bind("/proc"), false));
    mounts.push(sys("/sys", host_bind("/sys"), false));
    for t in ["/tmp", "/var/tmp"] {
        mounts.push(sys(t, MountKind::Tmpfs { mode: 0o1777, noexec: false, devices: false }, true));
    }
    mounts.push(sys("/run", MountKind::Tmpfs { mode: 0o755, noexec: false, devices: false }, true));
    for f in ["/etc/hosts", "/etc/resolv.conf", "/etc/localtime"] {
        mounts.push(Mount {
            target: f.into(),
            kind: MountKind::Copy { source: f.into() },
            read_only: true,
            harden: true,
            origin: Origin::Host,
            required: false,
        });
    }

    let home = PathBuf::from(&req.user.home);
    let home_bound = policy::same_path_bind_allowed(&home) && home.is_absolute();
    if home_bound && req.mount_home {
        mounts.push(Mount {
            target: home.clone(),
            kind: MountKind::Bind { source: home.clone(), recursive: false, as_user: true },
            read_only: false,
            harden: true,
            origin: Origin::Home,
            required: false,
        });
    }
    let cwd_norm = policy::normalize(&req.cwd);
    let mut cwd_visible = false;
    if let Some(cwd) = &cwd_norm {
        if home_bound && cwd.starts_with(&home) {
            cwd_visible = true;
        } else if policy::same_path_bind_allowed(cwd) {
            mounts.push(Mount {
                target: cwd.clone(),
                kind: MountKind::Bind { source: cwd.clone(), recursive: false, as_user: true },
                read_only: false,
                harden: true,
                origin: Origin::Cwd,
                required: false,
            });
            cwd_visible = true;
        }
    }

    for m in &cfg.mounts.site {
        // The admin's own paths (parsed with the config): trusted, and allowed anywhere.
        mounts.push(Mount {
            target: m.target.clone(),
            kind: MountKind::Bind { source: m.source.clone(), recursive: true, as_user: false },
            read_only: m.read_only,
            harden: true,
            origin: Origin::Site,
            required: true,
        });
    }
    for m in &req.mounts {
        m.check(&cfg.mounts.allowed_targets)?;
        mounts.push(Mount {
            target: m.target.clone(),
            kind: MountKind::Bind { source: m.source.clone(), recursive: true, as_user: true },
            read_only: m.read_only,
            harden: true,
            origin: Origin::User,
            required: true,
        });
    }

    for (path, what) in &req.slurm {
        mounts.push(Mount {
            target: path.clone(),
            kind: MountKind::Bind { source: path.clone(), recursive: false, as_user: false },
            read_only: true,
            harden: true,
            origin: Origin::Slurm(*what),
            required: true,
        });
    }
    for (path, what) in &req.pmix {
        // Read-write: clients take locks in the store and write session files.
        mounts.push(Mount {
            target: path.clone(),
            kind: MountKind::Bind { source: path.clone(), recursive: false, as_user: true },
            read_only: false,
            harden: true,
            origin: Origin::Pmix(*what),
            required: true,
        });
    }

    let ic = &req.image.config;
    let mut argv = Vec::new();
    if req.entrypoint {
        argv.extend(ic.entrypoint.iter().cloned());
    }
    if req.argv.is_empty() {
        argv.extend(ic.cmd.iter().cloned());
    } else {
        argv.extend(req.argv.iter().cloned());
    }
    if argv.is_empty() {
        return Err(PlanError::NoCommand { image: req.image.squashfs.display().to_string() });
    }

    let identity_env = vec![
        ("HOME".to_string(), req.user.home.clone()),
        ("USER".to_string(), req.user.name.clone()),
        ("LOGNAME".to_string(), req.user.name.clone()),
    ];
    let env = env::compose(&req.host_env, &ic.env, &req.env, &cfg.env.deny, &identity_env);

    let mut plan = Plan {
        mode,
        root: RootFs { upper: req.upper.clone(), ..root },
        dev,
        mounts,
        identity: req.user.clone(),
        groups: req.user.groups.iter().map(|(_, g)| *g).collect(),
        drop_privileges: mode == Mode::Privileged,
        env,
        cwd: Cwd {
            // Without the home (`mount_home` off), a cwd under it is not there.
            preferred: cwd_norm.filter(|c| cwd_visible && (req.mount_home || !c.starts_with(&home))),
            fallback: ic
                .workdir
                .as_deref()
                .and_then(|w| policy::normalize(Path::new(w)))
                .unwrap_or_else(|| "/".into()),
        },
        argv,
        setup: Vec::new(),
        remap_root: false,
    };
    if let Some(inj) = &req.injection {
        // After every other mount, in the engine's order.
        inject_plan::extend(&mut plan, &inj.plan)?;
        let minimal = plan.dev == DevLayout::Minimal;
        let inside = inject::visible_inside(inj.plan.gpus.as_ref(), minimal, &inj.task_gpus)
            .map_err(|e| PlanError::Gpu(e.to_string()))?;
        inject_plan::set_gpu_list(&mut plan.env, inside.as_deref());
    }
    Ok(plan)
}

/// The minimal /dev, in mount order. Device nodes come from the host's
/// /dev as single-node binds (nodev cannot apply to them). New ptys come
/// from /dev/ptmx, and the kernel looks for the devpts at `pts` beside the
/// ptmx node, in the node's own mount (so a bind of the host's node cannot
/// work):
/// - privileged (root for a user, the plugin): /dev/pts is the host's
///   devpts, bound, so the caller's terminal (`srun --pty`) keeps its name,
///   and root makes a ptmx node (5:2) in /dev itself;
/// - unprivileged: no node can be made, and the host's `pts/ptmx` is mode
///   000 on most distributions (Debian's `ptmxmode=000`), so /dev/pts is a
///   new devpts instance with a usable ptmx, /dev/ptmx links to it, and the
///   caller's terminal, which that instance does not hold, is bound at
///   /dev/console (ttyname() and `tty` then name it there).
///
/// /dev/shm is a tmpfs of this container: the tasks of a node share one
/// container, so they share it.
fn minimal_dev(mode: Mode, terminal: Option<&Path>) -> Vec<Mount> {
    let root_made_nodes = mode == Mode::Privileged;
    let node = |name: &str, optional: bool| {
        let p = format!("/dev/{name}");
        Mount {
            target: p.clone().into(),
            kind: MountKind::Bind { source: p.into(), recursive: false, as_user: false },
            read_only: false,
            harden: false,
            // Host pieces a node may lack are skipped (see `rootfs`).
            origin: if optional { Origin::Host } else { Origin::System },
            required: !optional,
        }
    };
    let mut v = vec![Mount {
        target: "/dev".into(),
        kind: MountKind::Tmpfs { mode: 0o755, noexec: true, devices: root_made_nodes },
        read_only: false,
        harden: true,
        origin: Origin::System,
        required: true,
    }];
    v.extend(DEV_NODES.iter().map(|n| node(n, false)));
    if root_made_nodes {
        v.push(node("pts", false));
    } else {
        v.push(Mount { target: "/dev/pts".into(), kind: MountKind::Devpts, read_only: false, harden: false, origin: Origin::System, required: true });
        if let Some(tty) = terminal {
            v.push(Mount {
                target: "/dev/console".into(),
                kind: MountKind::Bind { source: tty.into(), recursive: false, as_user: true },
                read_only: false,
                harden: false,
                origin: Origin::Host,
                required: false,
            });
        }
    }
    v.push(Mount {
        target: "/dev/shm".into(),
        kind: MountKind::Tmpfs { mode: 0o1777, noexec: false, devices: false },
        read_only: false,
        harden: true,
        origin: Origin::System,
        required: true,
    });
    // POSIX message queues, where the host has them mounted (no device
    // nodes there: nosuid,nodev).
    v.push(Mount { harden: true, ..node("mqueue", true) });
    let system = |target: &str, kind: MountKind| Mount {
        target: target.into(),
        kind,
        read_only: false,
        harden: false,
        origin: Origin::System,
        required: true,
    };
    v.push(if root_made_nodes {
        system("/dev/ptmx", MountKind::CharDevice { major: 5, minor: 2, mode: 0o666 })
    } else {
        system("/dev/ptmx", MountKind::Symlink { to: "pts/ptmx".into() })
    });
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        v.push(Mount {
            target: format!("/dev/{link}").into(),
            kind: MountKind::Symlink { to: to.into() },
            read_only: false,
            harden: false,
            origin: Origin::System,
            required: true,
        });
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::container::Identity;
    use crate::container::policy::UserMount;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            groups: vec![("alice".into(), 1001)],
        }
    }

    /// The request behind [`plain_plan`].
    pub(crate) fn alice_request() -> RunRequest {
        req()
    }

    fn req() -> RunRequest {
        RunRequest {
            image: RunImage {
                squashfs: "/home/alice/img.sqfs".into(),
                config: RunConfig {
                    env: vec!["PATH=/usr/bin:/bin".into()],
                    entrypoint: vec!["/entry".into()],
                    cmd: vec!["/bin/sh".into()],
                    workdir: Some("/work".into()),
                },
                scope: crate::image::store::Scope::User,
                verity: None,
            },
            argv: vec!["id".into()],
            entrypoint: false,
            user: alice(),
            privileged: false,
            cwd: "/home/alice/proj".into(),
            host_env: vec![("LD_PRELOAD".into(), "x".into()), ("TERM".into(), "dumb".into())],
            env: vec![],
            mounts: vec![],
            writable: false,
            terminal: None,
            mount_home: true,
            slurm: vec![],
            pmix: vec![],
            injection: None,
            upper: None,
        }
    }

    /// A `shoal run` plan for alice, unprivileged.
    pub(crate) fn plain_plan() -> Plan {
        plan(&req(), &Config::default()).unwrap()
    }

    /// The flags plan mount `i` gets from the lowering, as `--dry-run` prints them.
    fn flags(p: &Plan, i: usize) -> String {
        crate::container::lower::flags_text(&crate::container::lower(p, &crate::container::Facts::as_planned(p)), i).unwrap()
    }

    fn targets(p: &Plan) -> Vec<String> {
        p.mounts.iter().map(|m| m.target.display().to_string()).collect()
    }

    #[test]
    fn unprivileged_plan_uses_fuse_and_binds_home() {
        let p = plan(&req(), &Config::default()).unwrap();
        assert_eq!(p.mode, Mode::Unprivileged);
        assert!(matches!(p.root.via, ImageMount::Fuse { .. }));
        assert!(!p.drop_privileges);
        assert_eq!(
            targets(&p),
            [
                "/dev", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/ptmx", "/dev/fd", "/dev/stdin", "/dev/stdout",
                "/dev/stderr", "/proc", "/sys", "/tmp", "/var/tmp", "/run", "/etc/hosts",
                "/etc/resolv.conf", "/etc/localtime", "/home/alice"
            ]
        );
        // cwd under $HOME needs no bind of its own.
        assert_eq!(p.cwd.preferred.as_deref(), Some(Path::new("/home/alice/proj")));
        assert_eq!(p.cwd.fallback, PathBuf::from("/work"));
        assert_eq!(p.argv, ["id"]);
        assert!(!p.env.iter().any(|(k, _)| k == "LD_PRELOAD"));
        assert!(p.mounts.iter().filter(|m| m.origin != Origin::System).all(|m| m.harden));
    }

    #[test]
    fn the_callers_terminal_is_dev_console_when_the_container_has_its_own_devpts() {
        let mut r = req();
        r.terminal = Some("/dev/pts/7".into());
        let p = plan(&r, &Config::default()).unwrap();
        let console = p.mounts.iter().find(|m| m.target == Path::new("/dev/console")).unwrap();
        assert_eq!(console.kind, MountKind::Bind { source: "/dev/pts/7".into(), recursive: false, as_user: true });
        // Root's container binds the host's devpts: the terminal keeps its name.
        r.privileged = true;
        let p = plan(&r, &Config::default()).unwrap();
        assert!(!p.mounts.iter().any(|m| m.target == Path::new("/dev/console")));
    }

    #[test]
    fn dev_is_minimal_unless_the_site_wants_the_hosts() {
        for privileged in [false, true] {
            let mut r = req();
            r.privileged = privileged;
            let p = plan(&r, &Config::default()).unwrap();
            assert_eq!(p.dev, DevLayout::Minimal);
            let dev = &p.mounts[0];
            assert_eq!(dev.kind, MountKind::Tmpfs { mode: 0o755, noexec: true, devices: privileged });
            // Root's own ptmx node needs device access on /dev; unprivileged, a link.
            assert_eq!(flags(&p, 0), if privileged { "rw,nosuid,noexec" } else { "rw,nosuid,nodev,noexec" });
            let ptmx = p.mounts.iter().find(|m| m.target == Path::new("/dev/ptmx")).unwrap();
            let pts = p.mounts.iter().find(|m| m.target == Path::new("/dev/pts")).unwrap();
            if privileged {
                assert_eq!(ptmx.kind, MountKind::CharDevice { major: 5, minor: 2, mode: 0o666 });
                assert_eq!(pts.kind, MountKind::Bind { source: "/dev/pts".into(), recursive: false, as_user: false });
            } else {
                assert_eq!(ptmx.kind, MountKind::Symlink { to: "pts/ptmx".into() });
                assert_eq!(pts.kind, MountKind::Devpts);
                assert_eq!(flags(&p, p.mounts.iter().position(|m| m.target == Path::new("/dev/pts")).unwrap()), "rw,nosuid,noexec");
            }
            // Only single host nodes: no recursive bind brings the rest of /dev.
            for m in p.mounts.iter().filter(|m| m.target.starts_with("/dev")) {
                if let MountKind::Bind { source, recursive, as_user } = &m.kind {
                    assert_eq!((source, *recursive, *as_user), (&m.target, false, false), "{m:?}");
                    assert_eq!(m.harden, m.target.ends_with("mqueue"), "device nodes must stay usable: {m:?}");
                }
            }
            let shm = p.mounts.iter().find(|m| m.target == Path::new("/dev/shm")).unwrap();
            assert_eq!(shm.kind, MountKind::Tmpfs { mode: 0o1777, noexec: false, devices: false });
            let fd = p.mounts.iter().find(|m| m.target == Path::new("/dev/fd")).unwrap();
            assert_eq!(fd.kind, MountKind::Symlink { to: "/proc/self/fd".into() });
            // Only /dev/mqueue may be missing on a node.
            let optional: Vec<_> = p.mounts.iter().filter(|m| m.origin == Origin::Host && m.target.starts_with("/dev")).collect();
            assert_eq!(optional.len(), 1);
            assert_eq!(optional[0].target, Path::new("/dev/mqueue"));
        }
        let mut cfg = Config::default();
        cfg.launcher.host_dev = true;
        let p = plan(&req(), &cfg).unwrap();
        assert_eq!(p.dev, DevLayout::Host);
        assert_eq!(p.mounts.iter().filter(|m| m.target.starts_with("/dev")).count(), 1);
        assert!(p.render().contains("mount  1 /dev <- bind /dev [rw,rec] (system)"));
    }

    #[test]
    fn a_checked_image_is_served_by_shoal_never_the_kernel_or_squashfuse() {
        let mut r = req();
        r.privileged = true;
        r.image.scope = crate::image::store::Scope::Site;
        r.image.verity = Some(crate::image::verity::Pinned { file: "/site/x/image.verity".into(), root: "ab".repeat(32) });
        let mut cfg = Config::default();
        let p = plan(&r, &cfg).unwrap();
        assert!(matches!(p.root.via, ImageMount::Fuse { shoal: Some(_), .. }), "{:?}", p.root.via);
        assert_eq!(p.root.verity, r.image.verity);
        cfg.launcher.image_server = crate::config::ImageServer::Squashfuse;
        let e = plan(&r, &cfg).unwrap_err().to_string();
        assert!(e.contains("in-place") && e.contains("image_server"), "{e}");
    }

    #[test]
    fn kernel_mount_only_for_trusted_images_as_root() {
        let mut r = req();
        r.privileged = true;
        let cfg = Config::default();
        assert!(matches!(plan(&r, &cfg).unwrap().root.via, ImageMount::Fuse { .. }));
        r.image.scope = crate::image::store::Scope::Site;
        let p = plan(&r, &cfg).unwrap();
        assert_eq!(p.root.via, ImageMount::KernelLoop);
        assert!(p.drop_privileges);
        // Unprivileged callers never get a kernel mount, trusted or not.
        r.privileged = false;
        assert!(matches!(plan(&r, &cfg).unwrap().root.via, ImageMount::Fuse { .. }));
        // The site may opt in to kernel mounts of user images.
        let mut cfg = Config::default();
        cfg.launcher.allow_kernel_mount_of_user_images = true;
        r.privileged = true;
        r.image.scope = crate::image::store::Scope::User;
        assert_eq!(plan(&r, &cfg).unwrap().root.via, ImageMount::KernelLoop);
    }

    #[test]
    fn cwd_outside_home_is_bound_unless_reserved() {
        let mut r = req();
        r.cwd = "/scratch/run1".into();
        let p = plan(&r, &Config::default()).unwrap();
        let m = p.mounts.last().unwrap();
        assert_eq!((m.target.to_str().unwrap(), &m.origin), ("/scratch/run1", &Origin::Cwd));
        r.cwd = "/usr/share".into();
        let p = plan(&r, &Config::default()).unwrap();
        assert_eq!(p.cwd.preferred, None);
        assert_eq!(p.cwd.fallback, PathBuf::from("/work"));
    }

    #[test]
    fn user_mounts_are_checked_and_come_last_as_the_user() {
        let mut r = req();
        r.mounts = vec![UserMount::parse("/scratch:/data:ro", Path::new("/")).unwrap()];
        let mut cfg = Config::default();
        cfg.mounts.site = vec!["/shared/apps:/apps:ro".parse().unwrap()];
        let p = plan(&r, &cfg).unwrap();
        let n = p.mounts.len();
        assert_eq!(p.mounts[n - 2].origin, Origin::Site);
        assert_eq!(p.mounts[n - 1].origin, Origin::User);
        assert!(p.mounts[n - 1].read_only);
        assert!(matches!(p.mounts[n - 1].kind, MountKind::Bind { as_user: true, .. }));
        assert!(matches!(p.mounts[n - 2].kind, MountKind::Bind { as_user: false, .. }));

        r.mounts = vec![UserMount::parse("/x:/etc/passwd", Path::new("/")).unwrap()];
        let e = plan(&r, &cfg).unwrap_err().to_string();
        assert!(e.contains("refused by site policy"), "{e}");
    }

    #[test]
    fn the_plugins_binds_and_layer_are_request_fields_decided_here() {
        let mut r = req();
        r.privileged = true;
        r.mount_home = false;
        r.slurm = vec![("/etc/slurm".into(), SlurmPath::Client), ("/var/spool/slurmd/job7".into(), SlurmPath::BatchScript)];
        r.pmix = vec![("/var/spool/slurmd/pmix.7.0".into(), PmixDir::ServerTmpdir)];
        let layer = UpperLayer { upper: "/l/upper".into(), work: "/l/work".into(), own_dirs: false };
        r.upper = Some(layer.clone());
        let p = plan(&r, &Config::default()).unwrap();
        // No home, and the cwd under it is not there either.
        assert!(!p.mounts.iter().any(|m| m.origin == Origin::Home || m.origin == Origin::Cwd));
        assert_eq!(p.cwd.preferred, None);
        assert_eq!(p.root.upper, Some(layer));
        let n = p.mounts.len();
        let tail: Vec<_> = p.mounts[n - 3..].iter().map(|m| (m.target.to_str().unwrap(), m.read_only, m.required, &m.kind)).collect();
        let bind = |s: &str, as_user| MountKind::Bind { source: s.into(), recursive: false, as_user };
        assert_eq!(
            tail,
            [
                ("/etc/slurm", true, true, &bind("/etc/slurm", false)),
                ("/var/spool/slurmd/job7", true, true, &bind("/var/spool/slurmd/job7", false)),
                ("/var/spool/slurmd/pmix.7.0", false, true, &bind("/var/spool/slurmd/pmix.7.0", true)),
            ]
        );
        let text = p.render();
        assert!(text.contains("/etc/slurm <- bind /etc/slurm [ro,nosuid,nodev] (Slurm client)"), "{text}");
        assert!(text.contains("(batch script)") && text.contains("(opened as the user) [rw,nosuid,nodev] (PMIx server tmpdir)"), "{text}");
        // Only host pieces, home and cwd may be missing on a node.
        let optional: Vec<_> = plan(&req(), &Config::default()).unwrap().mounts.into_iter().filter(|m| !m.required).map(|m| m.origin).collect();
        assert!(optional.iter().all(|o| matches!(o, Origin::Host | Origin::Home | Origin::Cwd)), "{optional:?}");
    }

    #[test]
    fn argv_rules() {
        let mut r = req();
        r.entrypoint = true;
        assert_eq!(plan(&r, &Config::default()).unwrap().argv, ["/entry", "id"]);
        r.argv.clear();
        assert_eq!(plan(&r, &Config::default()).unwrap().argv, ["/entry", "/bin/sh"]);
        r.entrypoint = false;
        assert_eq!(plan(&r, &Config::default()).unwrap().argv, ["/bin/sh"]);
        r.image.config.cmd.clear();
        assert!(matches!(plan(&r, &Config::default()), Err(PlanError::NoCommand { .. })));
    }

    #[test]
    fn a_kept_layer_and_remap_root_show_in_the_plan() {
        let mut r = req();
        r.writable = true;
        let mut p = plan(&r, &Config::default()).unwrap();
        assert!(p.render().contains("root     overlay(image, tmpfs) nosuid,nodev, writable (changes lost at exit)"));
        p.root.upper = Some(UpperLayer { upper: "/var/lib/shoal/containers/n1/job-7/step-0/layer/upper".into(), work: "/w".into(), own_dirs: true });
        p.remap_root = true;
        let text = p.render();
        assert!(text.contains("overlay(image, /var/lib/shoal/containers/n1/job-7/step-0/layer/upper)"), "{text}");
        assert!(text.contains("the image's directories made the user's"), "{text}");
        assert!(text.contains("userns   uid 0 inside = uid 1001 outside"), "{text}");
    }

    #[test]
    fn render_lists_mounts_in_order_with_flags() {
        let text = plan(&req(), &Config::default()).unwrap().render();
        assert!(text.contains("mount  1 /dev <- tmpfs mode=755 [rw,nosuid,nodev,noexec] (system)"), "{text}");
        assert!(text.contains("mount  2 /dev/null <- bind /dev/null [rw] (system)"), "{text}");
        assert!(text.contains("link  12 /dev/fd -> /proc/self/fd"), "{text}");
        assert!(text.contains("link  11 /dev/ptmx -> pts/ptmx"), "{text}");
        assert!(text.contains("/home/alice <- bind /home/alice (opened as the user) [rw,nosuid,nodev]"), "{text}");
        assert!(text.contains("ids      uid=1001 gid=1001"), "{text}");
        assert!(text.contains("argv     [\"id\"]"), "{text}");
    }
}
