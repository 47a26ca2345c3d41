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
    pub store: StoreConfig,
    pub node: NodeConfig,
    /// Per-registry settings, keyed by `HOST[:PORT]` as written in image
    /// references (`docker.io` for Docker Hub).
    pub registries: BTreeMap<String, RegistryConfig>,
    pub launcher: LauncherConfig,
    pub mounts: MountsConfig,
    pub env: EnvConfig,
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cache_dir: PathBuf::from("/var/cache/shoal"),
            cache_size: Size(20 << 30),
            staging: Staging::Copy,
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
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            at: e.span().map(|s| locate(text, s.start)).unwrap_or_default(),
            message: e.message().trim().to_string(),
        })
    }
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
}
