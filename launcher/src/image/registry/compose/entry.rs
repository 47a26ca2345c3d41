//! One entry resolved: the author's spec, the image's manifest and its
//! config made into the descriptor the index lists, every value checked
//! against what selection accepts. Pure.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::spec::EntrySpec;
use crate::image::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::image::registry::{FetchedManifest, RegistryError};
use crate::reference::{Digest, ImageRef};
use crate::select::capabilities::abi_family;
use crate::select::cpu;
use crate::select::index::{ANN_CUDA, ANN_GPU, ANN_MPI, ANN_MPI_VERSION, ANN_TARGET, ANN_WEIGHT};

/// Why an index was not built; the message names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("{0}")]
    Invalid(String),
    #[error("entry {image}: {reason}")]
    Entry { image: String, reason: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One entry as it will be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The image as the author named it.
    pub source: ImageRef,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Platform,
    pub annotations: BTreeMap<String, String>,
}

/// `platform` of a descriptor, fields in the image-spec's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}
impl Platform {
    /// The `os/architecture[/variant]` part, as the rest of Shoal names a
    /// platform.
    pub fn oci(&self) -> crate::image::platform::Platform {
        crate::image::platform::Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// `os/architecture[/variant]`, written as [`crate::image::platform::Platform`] writes it.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.oci().fmt(f)
    }
}

/// The media type of a fetched manifest: its `mediaType` field, else the
/// Content-Type the registry sent.
fn media_type_of(doc: &Value, content_type: Option<&str>) -> String {
    doc.get("mediaType")
        .and_then(Value::as_str)
        .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()))
        .unwrap_or("")
        .to_string()
}

/// Checks a fetched manifest: an image manifest (not an index), and its
/// config descriptor's digest (to fetch the config). Pure.
pub fn image_config_digest(
    image: &str,
    manifest: &FetchedManifest,
) -> Result<(String, Digest), ComposeError> {
    let bad = |reason: String| ComposeError::Entry {
        image: image.to_string(),
        reason,
    };
    let doc: Value = serde_json::from_slice(&manifest.body)
        .map_err(|e| bad(format!("its manifest is not JSON ({e})")))?;
    let media_type = media_type_of(&doc, manifest.content_type.as_deref());
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || doc.get("manifests").is_some() {
        return Err(bad(format!(
            "is an image index ({}), not one image; name one of its images by digest ({image}@sha256:...)",
            manifest.digest
        )));
    }
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(bad(format!(
            "is not an image manifest (media type {media_type:?}); entries must be OCI or Docker schema 2 images"
        )));
    }
    let config = doc
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad("its manifest has no sha256 config digest".into()))?;
    Ok((media_type, config))
}

/// One entry from the author's spec, the image's manifest and its config
/// bytes: platform and annotations, every value checked. Pure.
pub fn resolve(
    spec: &EntrySpec,
    source: ImageRef,
    manifest: &FetchedManifest,
    media_type: String,
    config: &[u8],
) -> Result<Resolved, ComposeError> {
    let bad = |reason: String| ComposeError::Entry {
        image: spec.image.clone(),
        reason,
    };
    // Raw annotations Shoal reads are checked as the options are.
    let mut spec = spec.clone();
    let raw = &mut spec.annotations;
    if let Some(t) = raw.remove(ANN_TARGET) {
        spec.target.get_or_insert(t);
    }
    if let Some(m) = raw.remove(ANN_MPI) {
        spec.mpi.get_or_insert(m);
    }
    if let Some(c) = raw.remove(ANN_CUDA) {
        spec.cuda.get_or_insert(c);
    }
    if let Some(g) = raw.get(ANN_GPU) {
        if g != "yes" && g != "no" {
            return Err(bad(format!("{ANN_GPU} {g:?}: want yes or no")));
        }
    }
    let spec = &spec;
    let cfg: Value = serde_json::from_slice(config)
        .map_err(|e| bad(format!("its image config is not JSON ({e})")))?;
    let s = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        cfg.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut os, mut arch, mut variant) = (s("os"), s("architecture"), s("variant"));
    if let Some(p) = &spec.platform {
        let f: Vec<&str> = p.split('/').collect();
        if f.len() < 2 || f.len() > 3 || f.iter().any(|x| x.is_empty()) {
            return Err(bad(format!(
                "platform={p}: want OS/ARCH[/VARIANT], e.g. linux/amd64/v3"
            )));
        }
        os = Some(f[0].to_string());
        arch = Some(f[1].to_string());
        variant = f.get(2).map(|v| v.to_string());
    }
    if let Some(v) = &spec.variant {
        variant = Some(v.clone());
    }
    let (Some(os), Some(arch)) = (os, arch) else {
        return Err(bad(
            "its config names no os and architecture; give platform=OS/ARCH".into(),
        ));
    };
    let variant = variant.filter(|v| !v.is_empty());
    let mut ann = spec.annotations.clone();
    let family = cpu::family_of(&arch);
    let level = match &variant {
        Some(v) if family.is_some() && matches!(arch.as_str(), "amd64" | "arm64") => {
            Some(cpu::variant_level(&arch, v).ok_or_else(|| {
                bad(format!(
                    "variant {v:?} is not an {arch} level: want {}",
                    if arch == "amd64" {
                        "v1..v4"
                    } else {
                        "v8, v8.1..v8.9, v9, v9.N"
                    }
                ))
            })?)
        }
        _ => None,
    };
    let mut variant = variant;
    if let Some(t) = &spec.target {
        let m = cpu::target(t).ok_or_else(|| {
            bad(format!("target {t:?} is not an archspec target (names as in archspec's microarchitectures.json: haswell, icelake, zen4, neoverse_v1, ...)"))
        })?;
        if family != Some(m.family().name()) {
            return Err(bad(format!(
                "target {t} is for {} CPUs, the image is {os}/{arch}",
                m.family().name()
            )));
        }
        // The target's generic level: a variant above it contradicts it.
        let as_cpu = cpu::Cpu {
            architecture: arch.clone(),
            vendor: String::new(),
            target: t.clone(),
            ancestors: cpu::ancestors(m),
            features: Default::default(),
        };
        let generic = Some(cpu::node_level(&as_cpu));
        match (level, generic) {
            (Some(lv), Some(g)) if lv > g => {
                return Err(bad(format!(
                    "variant {} is above target {t}, whose level is {}",
                    variant.as_deref().unwrap_or(""),
                    cpu::level_name(&arch, g)
                )))
            }
            (None, Some(g)) if variant.is_none() && g > (1, 0) && g != (8, 0) => {
                variant = Some(cpu::level_name(&arch, g));
            }
            _ => {}
        }
        ann.insert(ANN_TARGET.into(), t.clone());
    }
    for f in &spec.features {
        if f.is_empty() || f.contains(char::is_whitespace) {
            return Err(bad(format!(
                "feature {f:?}: give CPU flags as /proc/cpuinfo names them (avx512f, sve)"
            )));
        }
    }
    if let Some(g) = spec.gpu {
        ann.insert(ANN_GPU.into(), if g { "yes" } else { "no" }.into());
    }
    if let Some(c) = &spec.cuda {
        if c.is_empty()
            || !c
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad(format!("cuda={c}: want a version like 12.2")));
        }
        ann.insert(ANN_CUDA.into(), c.clone());
    }
    if let Some(m) = &spec.mpi {
        if abi_family(m).is_none() {
            return Err(bad(format!(
                "mpi={m}: not an MPI whose ABI Shoal knows (mpich, intel-mpi, mvapich, cray-mpich, openmpi)"
            )));
        }
        ann.insert(ANN_MPI.into(), m.clone());
    }
    if let Some(v) = &spec.mpi_version {
        ann.insert(ANN_MPI_VERSION.into(), v.clone());
    }
    if let Some(w) = spec.weight {
        ann.insert(ANN_WEIGHT.into(), w.to_string());
    }
    if let Some(w) = ann.get(ANN_WEIGHT) {
        w.trim()
            .parse::<i64>()
            .map_err(|_| bad(format!("{ANN_WEIGHT} {w:?} is not an integer")))?;
    }
    Ok(Resolved {
        source,
        media_type,
        digest: manifest.digest.clone(),
        size: manifest.body.len() as u64,
        platform: Platform {
            architecture: arch,
            os,
            os_version: s("os.version"),
            os_features: list("os.features"),
            variant,
            features: spec.features.clone(),
        },
        annotations: ann,
    })
}
