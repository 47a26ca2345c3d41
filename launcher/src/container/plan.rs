//! Deciding: a [`RunRequest`] and the site [`Config`] become a [`Plan`], a
//! plain value that says everything the container will be (which image file
//! and how it is mounted, every mount in order with its flags, /etc entries,
//! environment, credentials, cwd, argv). `--dry-run` prints it.
//!
//! Pure: no syscalls, no filesystem access, so every decision is unit-tested
//! as data. Carrying a plan out is `rootfs.rs` / `mod.rs`.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use super::env;
use super::etc::Identity;
use super::inject::{self, SetupStep};
use super::policy::{self, PolicyError, UserMount};
use crate::config::Config;

/// The image to run, as the store (or a squashfs path) hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunImage {
    pub squashfs: PathBuf,
    pub config: ImageConfig,
    /// True only for files no user can have written (the site store: owned
    /// by root, not user-writable); only those may meet the kernel's
    /// squashfs parser. Re-checked on the opened file before a kernel mount.
    pub trusted_for_kernel_mount: bool,
}

/// The parts of an OCI image config the launcher uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `NAME=VALUE` entries.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
}

/// Everything the caller decides; [`plan`] adds the site's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub image: RunImage,
    /// CMD [ARGS...]; empty means the image's Cmd.
    pub argv: Vec<String>,
    /// Prepend the image's Entrypoint (`--entrypoint`).
    pub entrypoint: bool,
    /// Whom the container runs as.
    pub user: Identity,
    /// True when the caller is root acting for `user` (slurmstepd, or root
    /// running `shoal run`): privileged mode, no user namespace.
    pub privileged: bool,
    /// The caller's working directory.
    pub cwd: PathBuf,
    /// The caller's environment.
    pub host_env: Vec<(String, String)>,
    /// `--env` and `--env-file` settings, in order.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<UserMount>,
    /// Writable root (`--writable`): a tmpfs over the image, lost at exit.
    pub writable: bool,
    /// The caller's terminal (a pty on fd 0, 1 or 2), if any. Unprivileged,
    /// the container has its own devpts, so the terminal is bound at
    /// /dev/console, where ttyname() finds it.
    pub terminal: Option<PathBuf>,
}

/// How the container is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any user: new user namespace (uid and gid mapped to themselves) and
    /// mount namespace; image through squashfuse_ll.
    Unprivileged,
    /// Root acting for a user: new mount namespace only.
    Privileged,
}

/// How the squashfs image becomes a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageMount {
    /// `squashfuse_ll` as the user, served over a /dev/fuse descriptor
    /// (the kernel never parses the image).
    Fuse { squashfuse: PathBuf },
    /// Kernel squashfs on a read-only, auto-clearing loop device.
    KernelLoop,
}

/// The container's root: the image read-only under an overlay whose upper
/// layer is a tmpfs, so mount targets missing in the image are created in
/// the tmpfs; remounted read-only at the end unless `writable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    pub squashfs: PathBuf,
    pub via: ImageMount,
    /// Kernel mount of a file that must be checked trusted first (false only
    /// when the site allows kernel mounts of user images).
    pub verify_trust: bool,
    pub writable: bool,
    /// A writable root's upper layer on disk (job containers: node-local,
    /// kept for a named container) instead of a tmpfs lost at exit.
    pub upper: Option<UpperLayer>,
}

/// An upper layer on disk, prepared by root (the plugin) in a directory no
/// user can reach: `upper` is the container's root directory (owned by the
/// user), `work` overlayfs's own (root's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperLayer {
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The layer is new: give the user the image's root-owned directories
    /// (in the layer only), so they can create files anywhere in their
    /// writable container, as in an enroot container they unpacked.
    pub own_dirs: bool,
}

/// Who asked for a mount; extra kinds (ABI injection) use `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    System,
    Host,
    Home,
    Cwd,
    Site,
    User,
    Other(String),
}

/// What the container's /dev is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevLayout {
    /// A tmpfs holding only the basic nodes ([`DEV_NODES`]), the terminal
    /// pieces, a private /dev/shm and the devices of the selected modules:
    /// a GPU (or any other device) the job was not given is not there.
    Minimal,
    /// The host's whole /dev (`[launcher] host_dev = true`): every device
    /// node is visible, and `CUDA_VISIBLE_DEVICES` keeps the host numbering.
    Host,
}

/// Host device nodes bound into every minimal /dev (binds, not mknod: no
/// privilege needed, and the host's permissions on the node stay in force).
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A fresh tmpfs with this mode; `noexec` on top of the mount's flags;
    /// `devices`: nodev left off even when hardened (a /dev that holds a
    /// node made by root; no one else can make one there).
    Tmpfs { mode: u32, noexec: bool, devices: bool },
    /// A new devpts instance (`newinstance,ptmxmode=0666`): ptys made
    /// inside live there, and /dev/ptmx points at its `ptmx`.
    Devpts,
    /// Not a mount: a symbolic link made in a tmpfs the plan mounted
    /// earlier (`/dev/fd -> /proc/self/fd`).
    Symlink { to: PathBuf },
    /// Not a mount: a character device node made by root (privileged mode
    /// only) in a tmpfs the plan mounted earlier with `devices`.
    CharDevice { major: u32, minor: u32, mode: u32 },
    /// A host file or directory. `as_user`: the source path is resolved
    /// with the user's credentials (user-given paths: root never follows
    /// them as root). `recursive`: submounts come along (/dev, /proc, /sys).
    Bind { source: PathBuf, recursive: bool, as_user: bool },
    /// Not a mount: a small host file's contents written into the root's
    /// own layer when the container is built (/etc/hosts: read-only like
    /// the rest of the root, and cheaper than a bind and its remount).
    Copy { source: PathBuf },
}

/// One mount, applied in order after the root exists and before pivot_root.
/// Targets are container paths; they are resolved inside the root (symlinks
/// in the image cannot lead out) and created on the root's tmpfs layer when
/// missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    pub kind: MountKind,
    pub read_only: bool,
    /// nosuid,nodev (every mount but the kernel interfaces /dev, /proc, /sys).
    pub harden: bool,
    pub origin: Origin,
}

/// The working directory inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cwd {
    /// Tried first: the caller's cwd, when it is bound in.
    pub preferred: Option<PathBuf>,
    /// The image's workdir (or `/`).
    pub fallback: PathBuf,
}

/// Everything the container will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub root: RootFs,
    /// Which /dev the container has (its mounts are in `mounts`).
    pub dev: DevLayout,
    /// Extend freely (ABI injection appends binds); applied in order.
    pub mounts: Vec<Mount>,
    pub identity: Identity,
    /// Supplementary gids for the final credentials.
    pub groups: Vec<u32>,
    /// Drop to the user's uid/gid/groups before exec (privileged mode).
    pub drop_privileges: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Cwd,
    pub argv: Vec<String>,
    /// Steps that need the finished root (host-library injection), run in
    /// order by the process that builds the container; see `inject.rs`.
    pub setup: Vec<SetupStep>,
    /// The command will make a user namespace where the user is uid 0
    /// (`--container-remap-root`): the capability bounding set is kept, so
    /// it has capabilities there, and only there (no host privilege: files
    /// it makes are the user's, ids outside are unchanged).
    pub remap_root: bool,
}

/// Why no plan could be made; each names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("site mount {entry:?} in the config is invalid: {reason}; fix [mounts] site in the Shoal config")]
    SiteMount { entry: String, reason: String },
    #[error("no command to run: image {image} has no Cmd; give one after the image, e.g. `shoal run IMAGE -- /bin/sh`")]
    NoCommand { image: String },
}

/// Makes the plan: pure, decides everything.
pub fn plan(req: &RunRequest, cfg: &Config) -> Result<Plan, PlanError> {
    let mode = if req.privileged { Mode::Privileged } else { Mode::Unprivileged };
    let kernel = mode == Mode::Privileged
        && (req.image.trusted_for_kernel_mount || cfg.launcher.allow_kernel_mount_of_user_images);
    let root = RootFs {
        squashfs: req.image.squashfs.clone(),
        via: if kernel {
            ImageMount::KernelLoop
        } else {
            ImageMount::Fuse { squashfuse: cfg.launcher.squashfuse_path() }
        },
        verify_trust: !cfg.launcher.allow_kernel_mount_of_user_images,
        writable: req.writable,
        upper: None,
    };

    let mut mounts = Vec::new();
    let sys = |target: &str, kind: MountKind, harden: bool| Mount {
        target: target.into(),
        kind,
        read_only: false,
        harden,
        origin: Origin::System,
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
        });
    }

    let home = PathBuf::from(&req.user.home);
    let home_bound = policy::same_path_bind_allowed(&home) && home.is_absolute();
    if home_bound {
        mounts.push(Mount {
            target: home.clone(),
            kind: MountKind::Bind { source: home.clone(), recursive: false, as_user: true },
            read_only: false,
            harden: true,
            origin: Origin::Home,
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

    Ok(Plan {
        mode,
        root,
        dev,
        mounts,
        identity: req.user.clone(),
        groups: req.user.groups.iter().map(|(_, g)| *g).collect(),
        drop_privileges: mode == Mode::Privileged,
        env,
        cwd: Cwd {
            preferred: if cwd_visible { cwd_norm } else { None },
            fallback: ic
                .workdir
                .as_deref()
                .and_then(|w| policy::normalize(Path::new(w)))
                .unwrap_or_else(|| "/".into()),
        },
        argv,
        setup: Vec::new(),
        remap_root: false,
    })
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
        }
    };
    let mut v = vec![Mount {
        target: "/dev".into(),
        kind: MountKind::Tmpfs { mode: 0o755, noexec: true, devices: root_made_nodes },
        read_only: false,
        harden: true,
        origin: Origin::System,
    }];
    v.extend(DEV_NODES.iter().map(|n| node(n, false)));
    if root_made_nodes {
        v.push(node("pts", false));
    } else {
        v.push(Mount { target: "/dev/pts".into(), kind: MountKind::Devpts, read_only: false, harden: false, origin: Origin::System });
        if let Some(tty) = terminal {
            v.push(Mount {
                target: "/dev/console".into(),
                kind: MountKind::Bind { source: tty.into(), recursive: false, as_user: true },
                read_only: false,
                harden: false,
                origin: Origin::Host,
            });
        }
    }
    v.push(Mount {
        target: "/dev/shm".into(),
        kind: MountKind::Tmpfs { mode: 0o1777, noexec: false, devices: false },
        read_only: false,
        harden: true,
        origin: Origin::System,
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
        });
    }
    v
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Unprivileged => "unprivileged (user + mount namespace)",
            Mode::Privileged => "privileged (mount namespace, root acting for the user)",
        })
    }
}

impl Mount {
    fn flags(&self) -> String {
        let mut f = vec![if self.read_only { "ro" } else { "rw" }];
        if self.harden {
            f.push("nosuid");
            if !matches!(self.kind, MountKind::Tmpfs { devices: true, .. }) {
                f.push("nodev");
            }
        }
        if let MountKind::Tmpfs { noexec: true, .. } = self.kind {
            f.push("noexec");
        }
        if self.kind == MountKind::Devpts {
            // Its ptys are device nodes: nodev would stop them.
            f.extend(["nosuid", "noexec"]);
        }
        if let MountKind::Bind { recursive: true, .. } = self.kind {
            f.push("rec");
        }
        f.join(",")
    }
}

impl Plan {
    /// The `--dry-run` text: one fact per line, mounts in order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "mode     {}", self.mode);
        let via = match &self.root.via {
            ImageMount::Fuse { squashfuse } => format!(
                "FUSE as uid {} (Shoal's image server; squashfuse_ll {} for shared containers and xz/lzo/xattr images)",
                self.identity.uid,
                squashfuse.display()
            ),
            ImageMount::KernelLoop => "kernel squashfs on a read-only loop device".into(),
        };
        let _ = writeln!(s, "image    {} via {via}, ro,nosuid,nodev", self.root.squashfs.display());
        let _ = writeln!(
            s,
            "root     overlay(image, {}) nosuid,nodev, {} after setup",
            self.root.upper.as_ref().map_or("tmpfs".to_string(), |u| u.upper.display().to_string()),
            match (&self.root.upper, self.root.writable) {
                (_, false) => "read-only",
                (None, true) => "writable (changes lost at exit)",
                (Some(u), true) if u.own_dirs => "writable (changes kept in the layer; the image's directories made the user's)",
                (Some(_), true) => "writable (changes kept in the layer)",
            }
        );
        if self.remap_root {
            let _ = writeln!(s, "userns   uid 0 inside = uid {} outside (--container-remap-root)", self.identity.uid);
        }
        for (i, m) in self.mounts.iter().enumerate() {
            let what = match &m.kind {
                MountKind::Tmpfs { mode, .. } => format!("tmpfs mode={mode:o}"),
                MountKind::Devpts => "devpts newinstance,ptmxmode=0666".into(),
                MountKind::Symlink { to } => {
                    let _ = writeln!(s, "link  {:>2} {} -> {}", i + 1, m.target.display(), to.display());
                    continue;
                }
                MountKind::Copy { source } => {
                    let _ = writeln!(s, "copy  {:>2} {} <- {} (its contents, read-only) (host)", i + 1, m.target.display(), source.display());
                    continue;
                }
                MountKind::CharDevice { major, minor, mode } => {
                    let _ = writeln!(s, "node  {:>2} {} char {major}:{minor} mode {mode:o} (made by root)", i + 1, m.target.display());
                    continue;
                }
                MountKind::Bind { source, as_user, .. } => format!(
                    "bind {}{}",
                    source.display(),
                    if *as_user { " (opened as the user)" } else { "" }
                ),
            };
            let origin = match &m.origin {
                Origin::System => "system".to_string(),
                Origin::Host => "host".into(),
                Origin::Home => "home".into(),
                Origin::Cwd => "cwd".into(),
                Origin::Site => "site".into(),
                Origin::User => "user".into(),
                Origin::Other(o) => o.clone(),
            };
            let _ = writeln!(
                s,
                "mount {:>2} {} <- {what} [{}] ({origin})",
                i + 1,
                m.target.display(),
                m.flags()
            );
        }
        s.push_str(&inject::render(self));
        let _ = writeln!(s, "etc      /etc/passwd += {}", self.identity.passwd_line());
        let _ = writeln!(
            s,
            "etc      /etc/group += {}",
            self.identity
                .groups
                .iter()
                .map(|(n, g)| format!("{n}:{g}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            s,
            "ids      uid={} gid={} groups={}{}",
            self.identity.uid,
            self.identity.gid,
            self.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            if self.drop_privileges { " (dropped from root before exec)" } else { " (as outside)" }
        );
        let _ = writeln!(s, "security no_new_privs, all capabilities cleared (bounding set too)");
        match &self.cwd.preferred {
            Some(p) => {
                let _ = writeln!(s, "cwd      {} (else {})", p.display(), self.cwd.fallback.display());
            }
            None => {
                let _ = writeln!(s, "cwd      {}", self.cwd.fallback.display());
            }
        }
        for (k, v) in &self.env {
            let _ = writeln!(s, "env      {k}={v}");
        }
        let _ = writeln!(s, "argv     {:?}", self.argv);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn req() -> RunRequest {
        RunRequest {
            image: RunImage {
                squashfs: "/home/alice/img.sqfs".into(),
                config: ImageConfig {
                    env: vec!["PATH=/usr/bin:/bin".into()],
                    entrypoint: vec!["/entry".into()],
                    cmd: vec!["/bin/sh".into()],
                    workdir: Some("/work".into()),
                },
                trusted_for_kernel_mount: false,
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
        }
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
            assert_eq!(dev.flags(), if privileged { "rw,nosuid,noexec" } else { "rw,nosuid,nodev,noexec" });
            let ptmx = p.mounts.iter().find(|m| m.target == Path::new("/dev/ptmx")).unwrap();
            let pts = p.mounts.iter().find(|m| m.target == Path::new("/dev/pts")).unwrap();
            if privileged {
                assert_eq!(ptmx.kind, MountKind::CharDevice { major: 5, minor: 2, mode: 0o666 });
                assert_eq!(pts.kind, MountKind::Bind { source: "/dev/pts".into(), recursive: false, as_user: false });
            } else {
                assert_eq!(ptmx.kind, MountKind::Symlink { to: "pts/ptmx".into() });
                assert_eq!(pts.kind, MountKind::Devpts);
                assert_eq!(pts.flags(), "rw,nosuid,noexec");
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
    fn kernel_mount_only_for_trusted_images_as_root() {
        let mut r = req();
        r.privileged = true;
        let cfg = Config::default();
        assert!(matches!(plan(&r, &cfg).unwrap().root.via, ImageMount::Fuse { .. }));
        r.image.trusted_for_kernel_mount = true;
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
        r.image.trusted_for_kernel_mount = false;
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
