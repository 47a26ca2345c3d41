//! What a container is: the plain data a [`Plan`] is made of, shared by
//! deciding (`plan`, `inject_plan`), printing (`render`), lowering to
//! syscalls (`lower`) and doing (`rootfs`, `setup`, `exec`). No logic here
//! beyond small facts about the data.

use std::fmt;
use std::path::PathBuf;

use super::etc::Identity;
use super::policy::{PolicyError, UserMount};
use crate::image::store::Scope;
use crate::inject::{InjectionPlan, TaskGpus};

/// The image to run, as the store (or a squashfs path) hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunImage {
    pub squashfs: PathBuf,
    pub config: RunConfig,
    /// Whose image it is: only a site image (root-owned, no user can have
    /// written it) may meet the kernel's squashfs parser
    /// ([`Scope::kernel_mountable`]); re-checked on the opened file before a
    /// kernel mount.
    pub scope: Scope,
    /// Serve it checked against this hash tree as it is read (a store
    /// image used where it lies, `node.staging = "in-place"`): through
    /// Shoal's image server only, never the kernel or squashfuse_ll.
    pub verity: Option<crate::image::verity::Pinned>,
}

/// How an image runs: the parts of its OCI config (`image::manifest::ImageConfig`)
/// the launcher uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
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
    /// Bind the user's home (`--no-container-mount-home` clears it; a cwd
    /// under the home is then not bound either).
    pub mount_home: bool,
    /// Host paths a Slurm task inside needs (the SPANK plugin), bound
    /// read-only at the same path; the caller checked they exist.
    pub slurm: Vec<(PathBuf, SlurmPath)>,
    /// The step's PMIx directories (the SPANK plugin), bound read-write
    /// and opened as the user.
    pub pmix: Vec<(PathBuf, PmixDir)>,
    /// Host-library injection, already checked against the image.
    pub injection: Option<Injection>,
    /// A writable root's upper layer on disk (see [`UpperLayer`]), which
    /// root (the plugin) prepared.
    pub upper: Option<UpperLayer>,
}

/// Host-library injection for one task: the engine's plan for the step
/// and whose numbers the task's GPUs follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub plan: InjectionPlan,
    pub task_gpus: TaskGpus,
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
    /// A FUSE server as the user, over a /dev/fuse descriptor (the kernel
    /// never parses the image): Shoal's own, run by `shoal` (in its own
    /// process, or exec'd from the binary `shoal` names: the plugin's), or
    /// `squashfuse_ll` when `shoal` is `None` (the site's choice) and for
    /// images Shoal's server does not serve.
    Fuse { squashfuse: PathBuf, shoal: Option<PathBuf> },
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
    /// Every file of the image shown as owned by this uid and gid (FUSE
    /// only): `--container-remap-root` (see [`super::plan::remap_root`]).
    pub owner: Option<(u32, u32)>,
    /// Every read checked against this hash tree ([`RunImage::verity`]).
    pub verity: Option<crate::image::verity::Pinned>,
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

/// Who asked for a mount (printed by `--dry-run`). Closed: every source of
/// mounts is a field of the [`RunRequest`] and has its variant here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The container's own (/dev, /proc, /sys, scratch tmpfs).
    System,
    /// A host piece a node may lack (/etc/localtime, /dev/mqueue, the terminal).
    Host,
    Home,
    Cwd,
    /// `[mounts] site` in the config.
    Site,
    /// `--mount` / `--volume`.
    User,
    /// What a Slurm task inside needs from the host ([`RunRequest::slurm`]).
    Slurm(SlurmPath),
    /// A step's PMIx directory ([`RunRequest::pmix`]).
    Pmix(PmixDir),
    /// Host-library injection, with the engine's reason.
    Inject(String),
}

/// Why a Slurm path is bound in (see [`Origin::Slurm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmPath {
    /// The batch script's directory (in slurmd's spool).
    BatchScript,
    /// `slurm.host_paths`: the client, its config, the munge socket.
    Client,
    /// `slurm.launch_host_paths`: what srun's MPI plugins load.
    SrunMpiPlugin,
}

/// Which of a step's PMIx directories (see [`Origin::Pmix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmixDir {
    /// The PMIx server's tmpdir in slurmd's spool.
    ServerTmpdir,
    /// The client directory in TmpFS.
    ClientDir,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::System => f.write_str("system"),
            Origin::Host => f.write_str("host"),
            Origin::Home => f.write_str("home"),
            Origin::Cwd => f.write_str("cwd"),
            Origin::Site => f.write_str("site"),
            Origin::User => f.write_str("user"),
            Origin::Slurm(SlurmPath::BatchScript) => f.write_str("batch script"),
            Origin::Slurm(SlurmPath::Client) => f.write_str("Slurm client"),
            Origin::Slurm(SlurmPath::SrunMpiPlugin) => f.write_str("srun's MPI plugin"),
            Origin::Pmix(d) => f.write_str(d.what()),
            Origin::Inject(why) => write!(f, "inject: {why}"),
        }
    }
}

impl PmixDir {
    /// Its name in messages.
    pub fn what(self) -> &'static str {
        match self {
            PmixDir::ServerTmpdir => "PMIx server tmpdir",
            PmixDir::ClientDir => "PMIx client dir",
        }
    }
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
    /// A bind source that cannot be opened fails the build; when false
    /// (host pieces, home or cwd a node may lack), the mount is skipped.
    pub required: bool,
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
    /// Every mount, decided by `plan()` from the request (the injection's
    /// come last, in the engine's order); applied in order (see `lower`).
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
    #[error(transparent)]
    Injection(#[from] OrderError),
    #[error("{0}")]
    Gpu(String),
    #[error("no command to run: image {image} has no Cmd; give one after the image, e.g. `shoal run IMAGE -- /bin/sh`")]
    NoCommand { image: String },
    #[error("image {image} is used where it lies (`node.staging = \"in-place\"`), which needs Shoal's own image server to check it as it is read, but the site config sets [launcher] image_server = \"squashfuse\"; admins: set one of them back")]
    VerityNeedsShoal { image: String },
}

/// A step that needs the container's finished root; run in order by the
/// process that built the container, after pivot_root (see `setup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Give a tmpfs the plan mounted to the user (the image's `ldconfig`
    /// writes under it as the user).
    Own { path: PathBuf },
    /// Write a new file, as the user, creating its directories.
    WriteFile { path: PathBuf, contents: String },
    /// Write a program's config file, as the user, only where the image
    /// has its directory (the image has the program); a file already there
    /// with these contents (a named container's later step) is kept.
    Configure { path: PathBuf, contents: String },
    /// Run a program of the image as the user, no_new_privs, no
    /// capabilities, clean environment; it must exit 0.
    Run { argv: Vec<String>, why: String },
    /// Bind a regular file of the container over another path
    /// (ro,nosuid,nodev); the target exists in the skeleton.
    BindWithin { source: PathBuf, target: PathBuf, why: String },
}

impl Plan {
    /// Container paths the skeleton must hold as empty files for
    /// [`SetupStep::BindWithin`] targets (a bind needs an existing target,
    /// and the root is read-only once built).
    pub(crate) fn setup_bind_targets(&self) -> impl Iterator<Item = &std::path::Path> {
        self.setup.iter().filter_map(|s| match s {
            SetupStep::BindWithin { target, .. } => Some(target.as_path()),
            _ => None,
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Unprivileged => "unprivileged (user + mount namespace)",
            Mode::Privileged => "privileged (mount namespace, root acting for the user)",
        })
    }
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
