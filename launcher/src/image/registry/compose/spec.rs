//! What the author asks for: `--entry REF,KEY=VALUE,...` or a TOML spec
//! file's `[[entry]]` tables. Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What the author asks for one entry (`--entry REF,KEY=VALUE,...` or an
/// `[[entry]]` table of a spec file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EntrySpec {
    /// The image, in a registry: `REGISTRY/REPO:TAG` or `...@sha256:...`.
    pub image: String,
    /// `OS/ARCH[/VARIANT]`, instead of what the image config says.
    pub platform: Option<String>,
    /// `platform.variant`: `v2`..`v4` (amd64), `v8`, `v8.N`, `v9` (arm64).
    pub variant: Option<String>,
    /// `platform.features`: CPU flags as `/proc/cpuinfo` names them.
    #[serde(default)]
    pub features: Vec<String>,
    /// `io.archspec.cpu.target`.
    pub target: Option<String>,
    /// `org.supercontainers.hardware.gpu.available`.
    pub gpu: Option<bool>,
    /// `org.supercontainers.hardware.gpu.cuda.version`.
    pub cuda: Option<String>,
    /// `org.supercontainers.mpi.implementation`.
    pub mpi: Option<String>,
    /// `org.supercontainers.mpi.version`.
    pub mpi_version: Option<String>,
    /// `org.supercontainers.compatibility.weight`.
    pub weight: Option<i64>,
    /// Any other annotations, as given.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A spec file: the index's tag (or given on the command line), its own
/// annotations, and its entries in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    pub index: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "entry")]
    pub entries: Vec<EntrySpec>,
}

const ENTRY_KEYS: &str = "platform, variant, features (joined with +), target, gpu (yes/no), cuda, mpi, mpi-version, weight, annotation (KEY=VALUE)";

/// Parses `REF[,KEY=VALUE]...` (`REF,variant=v3,target=haswell,gpu=yes`).
pub fn parse_entry(s: &str) -> Result<EntrySpec, String> {
    let mut parts = s.split(',');
    let image = parts.next().unwrap_or("").trim();
    if image.is_empty() {
        return Err(format!(
            "--entry {s:?}: no image; write `--entry REGISTRY/REPO:TAG[,KEY=VALUE...]`"
        ));
    }
    let mut e = EntrySpec {
        image: image.to_string(),
        ..EntrySpec::default()
    };
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!(
                "--entry {s:?}: {p:?} is not KEY=VALUE (keys: {ENTRY_KEYS})"
            ));
        };
        let v = v.trim().to_string();
        match k.trim() {
            "platform" => e.platform = Some(v),
            "variant" => e.variant = Some(v),
            "features" => e.features = v.split('+').map(|f| f.trim().to_string()).collect(),
            "target" => e.target = Some(v),
            "gpu" => {
                e.gpu = Some(match v.as_str() {
                    "yes" | "true" => true,
                    "no" | "false" => false,
                    _ => return Err(format!("--entry {s:?}: gpu={v}: want yes or no")),
                })
            }
            "cuda" => e.cuda = Some(v),
            "mpi" => e.mpi = Some(v),
            "mpi-version" | "mpi_version" => e.mpi_version = Some(v),
            "weight" => {
                e.weight = Some(v.parse().map_err(|_| {
                    format!("--entry {s:?}: weight={v}: want an integer (higher ranks first)")
                })?)
            }
            "annotation" => {
                let (ak, av) = v.split_once('=').ok_or_else(|| {
                    format!("--entry {s:?}: annotation={v}: want annotation=KEY=VALUE")
                })?;
                e.annotations.insert(ak.to_string(), av.to_string());
            }
            other => {
                return Err(format!(
                    "--entry {s:?}: unknown key {other:?} (keys: {ENTRY_KEYS})"
                ))
            }
        }
    }
    Ok(e)
}

/// Reads a TOML spec file's text (`path` for messages).
pub fn read_spec(text: &str, path: &str) -> Result<IndexSpec, String> {
    toml::from_str(text).map_err(|e| format!("{path}: {e}"))
}
