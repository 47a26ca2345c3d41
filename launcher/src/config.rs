//! The site's settings: one TOML file, `/etc/shoal/shoal.toml` by default.
//!
//! Read by the `shoal` command and by the SPANK plugin in every Slurm context,
//! so a typo must be caught the same way everywhere: unknown keys and wrong
//! types are errors that name the file, the line and the key. The annotated
//! example is `packaging/shoal.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the site config lives unless plugstack.conf (`config=PATH`) or
/// `shoal --config PATH` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/shoal/shoal.toml";

/// Everything a site can set. Every section has defaults, so an empty file
/// (or no file at the default path) is a valid configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image: ImageConfig,
    pub store: StoreConfig,
    pub node: NodeConfig,
    /// Per-registry settings, keyed by `HOST[:PORT]` as written in image
    /// references (`docker.io` for Docker Hub).
    pub registries: BTreeMap<String, RegistryConfig>,
    pub launcher: LauncherConfig,
    pub mounts: MountsConfig,
    pub env: EnvConfig,
    /// How host libraries are matched against the image's (`[injection]`).
    pub injection: InjectionConfig,
    /// Named sets of host libraries, binaries, devices, environment and
    /// mounts (`[modules.NAME]`), selected with `--module=NAME[,NAME]`.
    pub modules: BTreeMap<String, ModuleConfig>,
    pub slurm: SlurmConfig,
    /// Per-node overrides of detected capabilities (`[nodes."NAME"]`),
    /// for nodes where detection is wrong, and for tests.
    pub nodes: BTreeMap<String, NodeOverride>,
    /// The site's image policy (`[policy]`): which images may run.
    pub policy: PolicyConfig,
}

/// Where the site's image policy lives (`[policy]`), a
/// containers-policy.json(5) file as podman and skopeo read it
/// ([`crate::image::trust`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The policy file. Unset: `/etc/containers/policy.json` when it exists,
    /// else every image is accepted. A file named here must exist. A user's
    /// `~/.config/containers/policy.json` is never read.
    pub file: Option<PathBuf>,
}

/// `[nodes."NAME"]`: facts of one node that replace what Shoal detects
/// there when it picks an image from an index (see `shoal select`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverride {
    /// OCI architecture (`amd64`, `arm64`).
    pub architecture: Option<String>,
    /// An archspec target (`x86_64_v3`, `icelake`, `zen4`): its vendor,
    /// ancestors and features become the node's.
    pub cpu_target: Option<String>,
    pub cpu_vendor: Option<String>,
    /// The CPU flags, as `/proc/cpuinfo` would list them.
    pub cpu_features: Option<Vec<String>>,
    /// The node's GPUs; `[]` for none.
    pub gpus: Option<Vec<GpuOverride>>,
}

/// One GPU of a `[nodes."NAME"]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuOverride {
    pub vendor: String,
    #[serde(default)]
    pub driver: Option<String>,
    /// The highest CUDA the driver runs; default: from the driver version.
    #[serde(default)]
    pub cuda: Option<String>,
}

/// What tasks inside an image need from the host to stay Slurm tasks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// Host paths bound read-only at the same place into every image step,
    /// so `srun`, `scontrol` and `sbatch` work inside (a batch script that
    /// runs in the image starts its steps with them). Paths missing on the
    /// node are skipped. The image's own C library must be able to run the
    /// host's Slurm client (same distribution family, glibc not older).
    pub host_paths: Vec<PathBuf>,
    /// Host paths bound read-only at the same place only into the
    /// containers of batch scripts and salloc's interactive step, where
    /// `srun` runs inside the image: Slurm's mpi/pmix plugin in srun
    /// dlopens the host's PMIx library by its host path. Never bound into
    /// the tasks of a step, which keep the image's own MPI and PMIx.
    pub launch_host_paths: Vec<PathBuf>,
    /// Register pyxis's `--container-*` options on srun, sbatch and salloc
    /// (with their `PYXIS_CONTAINER_*` defaults), so scripts written for
    /// pyxis run unchanged. Off by default: a site that still runs pyxis
    /// beside Shoal during a migration keeps these names for pyxis.
    pub pyxis_options: bool,
    /// Where named containers (`--container-name`) live: `job` (default)
    /// keeps one per job and node, removed by the job epilog; `global`
    /// keeps them per user and node across jobs, as pyxis's
    /// `container_scope=global`.
    pub container_scope: ContainerScope,
    /// Run the image's entrypoint (its `ENTRYPOINT`, with the task's
    /// command as its arguments) in every image step unless the user says
    /// `--no-container-entrypoint`, as pyxis's `execute_entrypoint`. Off by
    /// default: tasks run their command as given.
    pub execute_entrypoint: bool,
}

/// How long a named container lives (`[slurm] container_scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerScope {
    #[default]
    Job,
    Global,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        let paths = [
            "/usr/bin/srun",
            "/usr/bin/sbatch",
            "/usr/bin/scontrol",
            "/usr/bin/squeue",
            "/usr/lib/x86_64-linux-gnu/slurm-wlm",
            "/usr/lib/x86_64-linux-gnu/libmunge.so.2",
            "/etc/slurm",
            "/run/munge",
            "/usr/lib/shoal",
            "/usr/local/lib/shoal",
            // The site config, so the plugin in an srun inside sees it.
            "/etc/shoal",
        ];
        SlurmConfig {
            host_paths: paths.iter().map(PathBuf::from).collect(),
            // Debian's libpmix-dev, where Debian's mpi_pmix_v4.so looks.
            launch_host_paths: vec![PathBuf::from("/usr/lib/x86_64-linux-gnu/pmix2")],
            pyxis_options: false,
            container_scope: ContainerScope::Job,
            execute_entrypoint: false,
        }
    }
}

/// How to reach one registry (`[registries."HOST:PORT"]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// PEM file of CA certificates trusted for this registry, in addition to
    /// the system bundle (or `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// `false` skips TLS certificate checks: for a lab registry only.
    pub tls_verify: bool,
    /// Mirrors (`HOST[:PORT]`, HTTPS) tried in order before the registry
    /// itself; any failure at a mirror falls through to the next.
    pub mirrors: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { ca_file: None, tls_verify: true, mirrors: Vec::new() }
    }
}

/// Settings of the host-library injection (`[injection]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectionConfig {
    /// Modules used when the user names none; `--module=none` turns them off.
    pub default_modules: Vec<String>,
    /// The version rule for a host library that replaces an image library.
    pub abi: AbiMode,
}

/// How strictly a host library must match the image's copy it replaces.
/// Both modes require the same SONAME major version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AbiMode {
    /// Host minor >= image minor is a full match; an older host minor is
    /// injected with a warning (the established MPI rule).
    #[default]
    Relaxed,
    /// Minors must be equal; anything else is refused.
    Strict,
}

/// One `[modules.NAME]` section: what the site injects when a job asks for it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleConfig {
    /// One line shown by `shoal abi-check` and in errors.
    pub description: Option<String>,
    /// Host libraries: absolute paths or globs. Each is matched against the
    /// image's copy by SONAME; its non-glibc dependencies come along.
    pub libraries: Vec<String>,
    /// Host programs (absolute paths or globs), bound into a directory put
    /// first on the container's PATH.
    pub binaries: Vec<String>,
    /// Device nodes always bound (absolute paths or globs), e.g.
    /// `/dev/nvidiactl`: each appears inside at its own path, or, written
    /// `HOST_GLOB:DIR` ([`DeviceSpec`]), in DIR under its own name.
    pub devices: Vec<String>,
    /// Per-GPU device nodes (globs, `HOST_GLOB[:DIR]` like `devices`); each
    /// name must end with the GPU's number (`/dev/nvidia[0-9]*`). Only the
    /// job's GPUs (CUDA_VISIBLE_DEVICES) are bound, and CUDA_VISIBLE_DEVICES
    /// is renumbered to match inside.
    pub gpu_devices: Vec<String>,
    /// Environment variables set in the container.
    pub env: BTreeMap<String, String>,
    /// Paths put in front of a `:`-separated variable (`PATH`, ...), in order.
    pub env_prepend: BTreeMap<String, Vec<String>>,
    /// Extra host directories or files bound into the container.
    pub mounts: Vec<ModuleMount>,
    /// Other SONAMEs a host library stands for: SONAME -> host path.
    /// Debian's MPICH is `libmpich.so.12`, which MPICH's ABI also calls
    /// `libmpi.so.12`: with `"libmpi.so.12" = ".../libmpich.so.12"` an image
    /// linked against libmpi.so.12 gets the host's library, and an image
    /// with another libmpi major (Open MPI's libmpi.so.40) is refused.
    pub aliases: BTreeMap<String, String>,
    /// Overrides `[injection] abi` for this module's libraries.
    pub abi: Option<AbiMode>,
    /// The MPI this module brings, when its library's SONAME and version
    /// string do not tell (`intel-mpi`, `cray-mpich`, ...); used to pick an
    /// index entry whose `org.supercontainers.mpi.implementation` fits.
    pub mpi_implementation: Option<String>,
    pub mpi_version: Option<String>,
}

/// One `devices` or `gpu_devices` entry: `HOST_GLOB` (the nodes appear at
/// their own paths, the common case of a real /dev/nvidia*) or
/// `HOST_GLOB:DIR` (they appear in DIR under their own names: nodes kept
/// elsewhere on the host, e.g. `/opt/gpu/nvidia[0-9]*:/dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub pattern: String,
    pub dir: Option<PathBuf>,
}

impl DeviceSpec {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<DeviceSpec, String> {
        let (pattern, dir) = match entry.split_once(':') {
            Some((p, d)) => (p, Some(d)),
            None => (entry, None),
        };
        if !pattern.starts_with('/') {
            return Err(format!("{entry:?}: {pattern:?} is not an absolute path"));
        }
        glob::Pattern::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?;
        let dir = match dir {
            None => None,
            Some(d) if d.starts_with('/') && !d.contains(['*', '?', '[', ':']) && !d.split('/').any(|c| c == "..") => {
                Some(PathBuf::from(d))
            }
            Some(d) => {
                return Err(format!(
                    "{entry:?}: {d:?} is not a directory inside the container; write HOST_GLOB or HOST_GLOB:/dev"
                ))
            }
        };
        Ok(DeviceSpec { pattern: pattern.to_string(), dir })
    }

    /// Where the host node `host` appears inside.
    pub fn target(&self, host: &Path) -> PathBuf {
        match (&self.dir, host.file_name()) {
            (Some(d), Some(name)) => d.join(name),
            _ => host.to_path_buf(),
        }
    }
}

/// An extra bind mount of a module: read-only unless `writable = true`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleMount {
    pub source: PathBuf,
    pub target: PathBuf,
    #[serde(default)]
    pub writable: bool,
}

/// How pulled and imported images are written as squashfs files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// `zstd:N` (1-22), `gzip:N` (1-9) or `lz4`. Default `zstd:3`.
    pub compression: crate::image::convert::Compression,
    /// Squashfs block size in bytes, a power of two from 4096 to 1048576.
    pub block_size: u32,
    /// srun, sbatch and salloc pull an `--image` that is in neither store
    /// into the user's store before submitting, instead of failing with the
    /// `shoal pull` command to run.
    pub auto_pull: bool,
    /// The platforms (`linux/amd64`, `linux/arm64`) of this site's nodes:
    /// `shoal pull` of an image index converts every entry one of them
    /// could choose. Default: this machine's.
    pub platforms: Vec<String>,
    /// How the nodes of a multi-node job pick from an image index:
    /// `node` (each node its best entry) or `uniform` (the best entry every
    /// allocated node accepts). `--image-select` overrides it per job.
    pub select: crate::select::SelectMode,
}

impl Default for ImageConfig {
    fn default() -> Self {
        let o = crate::image::convert::SquashOptions::default();
        ImageConfig {
            compression: o.compression,
            block_size: o.block_size,
            auto_pull: false,
            platforms: Vec::new(),
            select: crate::select::SelectMode::Node,
        }
    }
}

impl ImageConfig {
    /// The writer options these settings stand for.
    pub fn squash_options(&self) -> crate::image::convert::SquashOptions {
        crate::image::convert::SquashOptions { compression: self.compression, block_size: self.block_size }
    }
}

/// Where images live.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Per-user store; `~` and `$XDG_DATA_HOME` style defaults apply when
    /// unset (`$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`).
    pub user_dir: Option<PathBuf>,
    /// Site store kept by the admins, read-only to users. Images here may be
    /// kernel-mounted by root because no user can have written them.
    pub site_dir: Option<PathBuf>,
}

/// How compute nodes stage images before a job's tasks start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node-local cache; each Slurm node keeps its images in
    /// `<cache_dir>/<node name>/`.
    pub cache_dir: PathBuf,
    /// Upper bound of one node's cache, e.g. `"20G"`; unused images are
    /// evicted least-recently-used first to stay under it.
    pub cache_size: Size,
    pub staging: Staging,
    /// Where each node publishes its detected capabilities
    /// (`NAME.json`), so that `--image-select=uniform` can choose for all
    /// of a job's nodes: a directory every node can read, written by root.
    /// Default: `<store.site_dir>/nodes` when a site store is set.
    pub capabilities_dir: Option<PathBuf>,
    /// Node-local directory for the writable layers of job containers
    /// (`--writable`, `--container-writable`, named containers), kept per
    /// Slurm node name in `<container_dir>/<node name>/`. Must not be on
    /// overlayfs or NFS (it is an overlay upper layer).
    pub container_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cache_dir: PathBuf::from("/var/cache/shoal"),
            cache_size: Size(20 << 30),
            staging: Staging::Copy,
            capabilities_dir: None,
            container_dir: PathBuf::from("/var/lib/shoal/containers"),
        }
    }
}

/// Where a node reads a job's image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// Copy into the node cache (verified), then mount the local copy: the
    /// shared filesystem is read once per node, not once per file access.
    Copy,
    /// Mount straight from the store on the shared filesystem.
    Direct,
}

/// A byte count written as `"512M"`, `"20G"`, `"1T"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => parse_size(&s).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: write a number with an optional K, M, G or T suffix, e.g. \"20G\""
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// How `shoal run` and the plugin build containers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherConfig {
    /// The `squashfuse_ll` binary; default: found on the usual system paths.
    pub squashfuse: Option<PathBuf>,
    /// Let root mount images from users' stores or paths with the kernel's
    /// squashfs driver. Off by default: the kernel parser then only ever
    /// sees site-store files no user can have written.
    pub allow_kernel_mount_of_user_images: bool,
    /// Bind the host's whole /dev into containers instead of a minimal
    /// /dev (basic nodes, terminal, private /dev/shm, and the devices of the
    /// selected modules). Every device node, every GPU included, is then
    /// visible, and `CUDA_VISIBLE_DEVICES` keeps the host's numbering;
    /// module devices must then be at their container paths on the host.
    pub host_dev: bool,
}

impl LauncherConfig {
    /// The configured `squashfuse_ll`, else the first one on the system paths.
    pub fn squashfuse_path(&self) -> PathBuf {
        if let Some(p) = &self.squashfuse {
            return p.clone();
        }
        ["/usr/bin/squashfuse_ll", "/usr/local/bin/squashfuse_ll", "/bin/squashfuse_ll"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/squashfuse_ll"))
    }
}

/// Site mounts and the policy for user mounts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountsConfig {
    /// `SRC:DST[:ro]` binds added to every container.
    pub site: Vec<String>,
    /// Target prefixes users may mount over although they are reserved
    /// (/etc, /usr, /proc, /sys, /dev, /lib*, /bin, /sbin).
    pub allowed_targets: Vec<PathBuf>,
}

/// Environment rules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Host variables never carried into containers, besides `LD_*` and
    /// `PATH`; a trailing `*` matches a prefix.
    pub deny: Vec<String>,
}

/// A config file that could not be used; the message names the file, and
/// for bad content the line and key, so an admin can fix it directly.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read Shoal config {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid Shoal config {path}{at}: {message}")]
    Invalid {
        path: PathBuf,
        at: Location,
        message: String,
    },
}

/// Line and key of a config error, shown as ` line 3 (key `store.user_dir`)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: Option<usize>,
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, " (key `{key}`)")?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path`. When `path` is the default and the file does not exist,
    /// the defaults are used: a node needs no config file to work.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            at: e.span().map(|s| locate(text, s.start)).unwrap_or_default(),
            message: e.message().trim().to_string(),
        })?;
        config.check_modules().map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            at: Location { line: find_key_line(text, &key), key: Some(key) },
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: module names, absolute paths, and that
    /// `default_modules` names configured modules. Returns the dotted key.
    fn check_modules(&self) -> Result<(), (String, String)> {
        for (name, module) in &self.modules {
            if name.is_empty()
                || name == "none"
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err((
                    format!("modules.{name}"),
                    format!("module name {name:?} must be letters, digits, `-`, `_` or `.` and not `none`"),
                ));
            }
            for (field, list) in [("devices", &module.devices), ("gpu_devices", &module.gpu_devices)] {
                if let Some(e) = list.iter().find_map(|d| DeviceSpec::parse(d).err()) {
                    return Err((format!("modules.{name}.{field}"), e));
                }
            }
            let lists = [("libraries", &module.libraries), ("binaries", &module.binaries)];
            for (field, list) in lists {
                if let Some(bad) = list.iter().find(|p| !p.starts_with('/')) {
                    return Err((
                        format!("modules.{name}.{field}"),
                        format!("{bad:?} is not an absolute path"),
                    ));
                }
                if let Some((bad, e)) = list
                    .iter()
                    .find_map(|p| glob::Pattern::new(p).err().map(|e| (p, e)))
                {
                    return Err((format!("modules.{name}.{field}"), format!("bad glob {bad:?}: {e}")));
                }
            }
            let vars = module.env.keys().map(|k| ("env", k));
            for (field, var) in vars.chain(module.env_prepend.keys().map(|k| ("env_prepend", k))) {
                // LD_* stays out: the loader must find the injected libraries
                // through the plan, never through a variable the image can reset.
                if var.is_empty() || var.contains('=') || var.starts_with("LD_") {
                    return Err((
                        format!("modules.{name}.{field}"),
                        format!("{var:?} cannot be set by a module (empty, contains `=`, or an LD_* loader variable)"),
                    ));
                }
            }
            for (alias, path) in &module.aliases {
                if !alias.contains(".so.") || alias.contains('/') || !path.starts_with('/') {
                    return Err((
                        format!("modules.{name}.aliases"),
                        format!("{alias:?} = {path:?}: want a SONAME like \"libmpi.so.12\" and an absolute host path"),
                    ));
                }
            }
            for m in &module.mounts {
                if !m.source.is_absolute() || !m.target.is_absolute() {
                    return Err((
                        format!("modules.{name}.mounts"),
                        format!("{} -> {}: source and target must be absolute", m.source.display(), m.target.display()),
                    ));
                }
            }
        }
        if let Some(bad) = self
            .injection
            .default_modules
            .iter()
            .find(|m| !self.modules.contains_key(m.as_str()))
        {
            return Err((
                "injection.default_modules".into(),
                format!("{bad:?} is not a configured module (configured: {})", module_names(self)),
            ));
        }
        Ok(())
    }
}

/// The configured module names, for error messages: `gpu, mpich` or `none`.
pub fn module_names(config: &Config) -> String {
    if config.modules.is_empty() {
        "none".into()
    } else {
        config.modules.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// The line of a dotted key found after parsing (`modules.mpich.libraries`):
/// the `[modules.mpich]` header, then the key's own line under it.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let mut parts: Vec<&str> = key.split('.').collect();
    while !parts.is_empty() {
        let (table, last) = (parts[..parts.len() - 1].join("."), parts[parts.len() - 1]);
        let header = format!("[{}]", parts.join("."));
        let mut in_table = table.is_empty();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.starts_with('[') {
                if l.replace(' ', "") == header {
                    return Some(i + 1);
                }
                in_table = l.trim_matches(|c| c == '[' || c == ']').trim() == table;
            } else if in_table && l.split_once('=').map(|(k, _)| k.trim().trim_matches('"')) == Some(last) {
                return Some(i + 1);
            }
        }
        parts.pop();
    }
    None
}

/// Finds the line number and dotted key of the byte offset `at` in `text`,
/// so "invalid type: integer, expected a string" can say which key it was.
fn locate(text: &str, at: usize) -> Location {
    let at = at.min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let Some(line) = lines.get(line_no - 1) else {
        return Location { line: Some(line_no), key: None };
    };
    let table = lines[..line_no - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = match line.trim() {
        l if l.starts_with('[') => Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_string()),
        l => l.split_once('=').map(|(k, _)| {
            let k = k.trim().trim_matches('"');
            match &table {
                Some(t) => format!("{t}.{k}"),
                None => k.to_string(),
            }
        }),
    };
    Location { line: Some(line_no), key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/shoal/shoal.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", Path::new("x")).unwrap(), Config::default());
    }

    #[test]
    fn image_compression_parses_and_bad_values_name_the_key() {
        let c = Config::parse("[image]\ncompression = \"lz4\"\nblock_size = 65536\n", Path::new("x")).unwrap();
        assert_eq!(c.image.squash_options().compression.to_string(), "lz4");
        assert_eq!(c.image.block_size, 65536);
        assert_eq!(Config::default().image.compression.to_string(), "zstd:3");
        let e = err("[image]\ncompression = \"zstd:99\"\n");
        assert!(e.contains("line 2 (key `image.compression`)") && e.contains("zstd:N"), "{e}");
    }

    #[test]
    fn policy_file_parses() {
        let c = Config::parse("[policy]\nfile = \"/etc/site/policy.json\"\n", Path::new("x")).unwrap();
        assert_eq!(c.policy.file.as_deref(), Some(Path::new("/etc/site/policy.json")));
        assert_eq!(Config::default().policy.file, None);
        let e = err("[policy]\npath = \"/x\"\n");
        assert!(e.contains("path") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn store_paths_parse() {
        let c = Config::parse(
            "[store]\nuser_dir = \"/home/u/.shoal\"\nsite_dir = \"/srv/shoal\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.store.site_dir.as_deref(), Some(Path::new("/srv/shoal")));
        assert_eq!(c.store.user_dir.as_deref(), Some(Path::new("/home/u/.shoal")));
    }

    #[test]
    fn node_section_sizes_and_staging() {
        let c = Config::parse(
            "[node]\ncache_dir = \"/local/shoal\"\ncache_size = \"512M\"\nstaging = \"direct\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.node.cache_size, Size(512 << 20));
        assert_eq!(c.node.staging, Staging::Direct);
        assert_eq!(Config::default().node.staging, Staging::Copy);
        let c = Config::parse("[node]\ncache_size = 4096\n", Path::new("x")).unwrap();
        assert_eq!(c.node.cache_size, Size(4096));
        let e = err("[node]\ncache_size = \"lots\"\n");
        assert!(e.contains("node.cache_size") && e.contains("\"lots\""), "{e}");
        let e = err("[node]\nstaging = \"teleport\"\n");
        assert!(e.contains("node.staging") && e.contains("teleport"), "{e}");
    }

    #[test]
    fn documented_registry_example_parses_when_uncommented() {
        let example = include_str!("../../packaging/shoal.toml");
        let block: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# [registries."))
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&block, Path::new("packaging/shoal.toml")).unwrap();
        let r = &c.registries["registry.example.org:5000"];
        assert!(r.tls_verify && r.ca_file.is_some() && r.mirrors.len() == 1, "{block}");
    }

    #[test]
    fn registry_sections_parse() {
        let c = Config::parse(
            "[registries.\"lab.example:5000\"]\ntls_verify = false\nmirrors = [\"m1:5000\"]\n\
             [registries.\"docker.io\"]\nca_file = \"/etc/ca.pem\"\n",
            Path::new("x"),
        )
        .unwrap();
        let lab = &c.registries["lab.example:5000"];
        assert!(!lab.tls_verify);
        assert_eq!(lab.mirrors, vec!["m1:5000"]);
        let hub = &c.registries["docker.io"];
        assert!(hub.tls_verify, "TLS is verified unless turned off");
        assert_eq!(hub.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        let e = err("[registries.\"x\"]\ntls_verfy = false\n");
        assert!(e.contains("tls_verfy"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_line_and_file() {
        let e = err("[store]\nsite_dir = \"/srv\"\nsite_dri = \"/srv\"\n");
        assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("site_dri"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = err("[stor]\nsite_dir = \"/srv\"\n");
        assert!(e.contains("stor"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("# site\n[store]\nsite_dir = 42\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("store.site_dir"), "{e}");
        assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(&missing).unwrap_err(),
            ConfigError::Read { .. }
        ));
    }

    #[test]
    fn launcher_sections_parse() {
        let c = Config::parse(
            "[launcher]\nallow_kernel_mount_of_user_images = true\nsquashfuse = \"/opt/sq\"\n\
             [mounts]\nsite = [\"/apps:/apps:ro\"]\nallowed_targets = [\"/etc/site\"]\n\
             [env]\ndeny = [\"SECRET_*\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(c.launcher.allow_kernel_mount_of_user_images);
        assert_eq!(c.launcher.squashfuse_path(), PathBuf::from("/opt/sq"));
        assert_eq!(c.mounts.site, ["/apps:/apps:ro"]);
        assert_eq!(c.env.deny, ["SECRET_*"]);
    }

    const MODULES: &str = r#"
[injection]
default_modules = ["mpich"]
abi = "strict"

[modules.mpich]
description = "Debian MPICH"
libraries = ["/usr/lib/x86_64-linux-gnu/libmpich.so.12*"]
binaries = ["/usr/bin/mpichversion"]
env = { MPICH_SITE = "1" }
env_prepend = { PATH = ["/opt/site/bin"] }
mounts = [{ source = "/etc/site-net", target = "/etc/site-net" }]

[modules.gpu]
libraries = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
devices = ["/dev/nvidiactl", "/dev/nvidia-uvm"]
gpu_devices = ["/dev/nvidia[0-9]*"]
abi = "relaxed"
"#;

    #[test]
    fn modules_parse() {
        let c = Config::parse(MODULES, Path::new("x")).unwrap();
        assert_eq!(c.injection.default_modules, ["mpich"]);
        assert_eq!(c.injection.abi, AbiMode::Strict);
        let mpich = &c.modules["mpich"];
        assert_eq!(mpich.libraries, ["/usr/lib/x86_64-linux-gnu/libmpich.so.12*"]);
        assert_eq!(mpich.env["MPICH_SITE"], "1");
        assert_eq!(mpich.env_prepend["PATH"], ["/opt/site/bin"]);
        assert_eq!(mpich.mounts[0].target, Path::new("/etc/site-net"));
        assert!(!mpich.mounts[0].writable);
        assert_eq!(c.modules["gpu"].abi, Some(AbiMode::Relaxed));
        assert_eq!(c.modules["gpu"].gpu_devices, ["/dev/nvidia[0-9]*"]);
        assert_eq!(Config::default().injection.abi, AbiMode::Relaxed);
    }

    #[test]
    fn bad_module_input_names_the_key() {
        let e = err("[modules.mpich]\nlibraries = [\"libmpich.so.12\"]\n");
        assert!(e.contains("modules.mpich.libraries") && e.contains("line 2") && e.contains("absolute"), "{e}");
        let e = err("[modules.mpich]\nlibaries = []\n");
        assert!(e.contains("libaries") && e.contains("line 2"), "{e}");
        let e = err("[injection]\nabi = \"loose\"\n");
        assert!(e.contains("injection.abi") && e.contains("loose"), "{e}");
        let e = err("[injection]\ndefault_modules = [\"mpi\"]\n[modules.mpich]\n");
        assert!(e.contains("injection.default_modules") && e.contains("configured: mpich"), "{e}");
        let e = err("[modules.gpu]\nenv = { LD_LIBRARY_PATH = \"/x\" }\n");
        assert!(e.contains("modules.gpu.env") && e.contains("LD_"), "{e}");
        let e = err("[modules.none]\n");
        assert!(e.contains("modules.none"), "{e}");
        let e = err("[modules.x]\nmounts = [{ source = \"rel\", target = \"/t\" }]\n");
        assert!(e.contains("modules.x.mounts") && e.contains("line 2"), "{e}");
        let e = err("[modules.gpu]\ngpu_devices = [\"/opt/gpu/nvidia[0-9]*:dev\"]\n");
        assert!(e.contains("modules.gpu.gpu_devices") && e.contains("line 2") && e.contains("HOST_GLOB:/dev"), "{e}");
    }

    #[test]
    fn device_entries_say_where_nodes_appear_inside() {
        let d = DeviceSpec::parse("/dev/nvidia[0-9]*").unwrap();
        assert_eq!((d.pattern.as_str(), d.dir.as_deref()), ("/dev/nvidia[0-9]*", None));
        assert_eq!(d.target(Path::new("/dev/nvidia3")), Path::new("/dev/nvidia3"));
        let d = DeviceSpec::parse("/var/lib/gpu/nvidia[0-9]*:/dev").unwrap();
        assert_eq!(d.pattern, "/var/lib/gpu/nvidia[0-9]*");
        assert_eq!(d.target(Path::new("/var/lib/gpu/nvidia3")), Path::new("/dev/nvidia3"));
        for bad in ["dev/nvidia0", "/dev/nvidia0:", "/x:/dev/../etc", "/x:/dev/*", "/x[:/dev"] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
        let c = Config::parse("[launcher]\nhost_dev = true\n", Path::new("x")).unwrap();
        assert!(c.launcher.host_dev && !Config::default().launcher.host_dev);
    }
}
