//! The site's settings: one TOML file, `/etc/shoal/shoal.toml` by default.
//!
//! Read by the `shoal` command and by the SPANK plugin in every Slurm context,
//! so a typo must be caught the same way everywhere: unknown keys and wrong
//! types are errors that name the file, the line and the key. The annotated
//! example is `packaging/shoal.toml`.

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod modules;
pub use modules::{AbiMode, DeviceSpec, InjectionConfig, ModuleConfig, ModuleMount};

/// Where the site config lives unless plugstack.conf (`config=PATH`) or
/// `shoal --config PATH` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/shoal/shoal.toml";

/// Everything a site can set. Every section has defaults, so an empty file
/// (or no file at the default path) is a valid configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image: ImageSettings,
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

/// `[image]`: how pulled and imported images are written as squashfs files,
/// pulled at submission and chosen from an index. (Not an image's own
/// config: that is [`crate::image::manifest::ImageConfig`].)
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
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

impl Default for ImageSettings {
    fn default() -> Self {
        let o = crate::image::convert::SquashOptions::default();
        ImageSettings {
            compression: o.compression,
            block_size: o.block_size,
            auto_pull: false,
            platforms: Vec::new(),
            select: crate::select::SelectMode::Node,
        }
    }
}

impl ImageSettings {
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
    /// Seconds a copy into the node cache waits for its source's next
    /// byte before it fails the job (a hung filesystem, a stopped FUSE
    /// server): Slurm 22.05 cannot cancel a task while it stages.
    pub stall_timeout: u64,
}

/// `node.stall_timeout`'s default, in seconds (also the node cache's own,
/// `stage::DEFAULT_STALL_TIMEOUT`). Here, not in `stage`: `stage` reads the
/// store, which reads the config, so the config must not import `stage`.
pub const DEFAULT_STALL_SECS: u64 = 60;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cache_dir: PathBuf::from("/var/cache/shoal"),
            cache_size: Size(20 << 30),
            staging: Staging::Copy,
            capabilities_dir: None,
            container_dir: PathBuf::from("/var/lib/shoal/containers"),
            stall_timeout: DEFAULT_STALL_SECS,
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
    /// Mount straight from the store on the shared filesystem, unchecked.
    Direct,
    /// Serve the image where it lies in the store through Shoal's image
    /// server, every read checked against the hash tree recorded at pull
    /// time (`image::verity`); images without a tree are copied.
    #[serde(rename = "in-place")]
    InPlace,
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
    /// What serves images through FUSE (see [`ImageServer`]).
    pub image_server: ImageServer,
    /// The `shoal` binary the plugin execs to serve images; default: found
    /// on the usual system paths.
    pub shoal: Option<PathBuf>,
}

/// `[launcher] image_server`: Shoal's own server (default), or
/// `squashfuse_ll` for the plugin's and shared containers' images (`shoal
/// run` alone serves with Shoal's in its own process either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageServer {
    #[default]
    Shoal,
    Squashfuse,
}

impl LauncherConfig {
    /// The configured `shoal` binary, else the first one on the system paths.
    pub fn shoal_path(&self) -> PathBuf {
        if let Some(p) = &self.shoal {
            return p.clone();
        }
        ["/usr/local/bin/shoal", "/usr/bin/shoal"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/shoal"))
    }

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
    /// `SRC:DST[:ro]` binds added to every container, parsed when the
    /// config is read (a bad entry fails `shoal config check`, not a job).
    pub site: Vec<SiteMount>,
    /// Target prefixes users may mount over although they are reserved
    /// (/etc, /usr, /proc, /sys, /dev, /lib*, /bin, /sbin).
    pub allowed_targets: Vec<PathBuf>,
}

/// One `[mounts] site` entry: the admin's own bind, trusted and allowed
/// over any target. Same syntax as a user's `--mount`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct SiteMount {
    /// The entry as written, for messages.
    pub entry: String,
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for SiteMount {
    type Err = String;

    fn from_str(entry: &str) -> Result<SiteMount, String> {
        let m = crate::mount_spec::UserMount::parse(entry, Path::new("/"))
            .map_err(|e| format!("[mounts] site: {e}"))?;
        Ok(SiteMount {
            entry: entry.to_string(),
            source: m.source,
            target: m.target,
            read_only: m.read_only,
        })
    }
}

impl TryFrom<String> for SiteMount {
    type Error = String;

    fn try_from(entry: String) -> Result<SiteMount, String> {
        entry.parse()
    }
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
        if config.node.stall_timeout == 0 {
            let key = "node.stall_timeout".to_string();
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                at: Location { line: find_key_line(text, &key), key: Some(key) },
                message: "must be at least 1 (seconds without a byte before a copy fails)".into(),
            });
        }
        if config.node.staging == Staging::InPlace && config.launcher.image_server == ImageServer::Squashfuse {
            let key = "node.staging".to_string();
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                at: Location { line: find_key_line(text, &key), key: Some(key) },
                message: "\"in-place\" checks every read against the image's hash tree, which only Shoal's own image server does, but [launcher] image_server = \"squashfuse\": set one of them back".into(),
            });
        }
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
mod tests;
