//! `[injection]` and `[modules.NAME]`: the host libraries and devices a
//! site offers to containers, as the config file writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
