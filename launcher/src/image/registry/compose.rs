//! `shoal index`: an image index composed from images already in a
//! registry, one entry per image with its platform (os, architecture,
//! variant, features) and the annotations Shoal's selection reads
//! (`crate::select::index`), then pushed to a tag.
//!
//! The platform comes from each image's config (os, architecture, variant,
//! `os.version`, `os.features`); what the author gives overrides it. An
//! explicit `io.archspec.cpu.target` without a variant gets the variant of
//! the target's generic level (`skylake_avx512` is `v4`), so runtimes that
//! read only the variant see the level too. Every value is checked here
//! against what selection accepts, so an index never carries an annotation
//! that would refuse its own entry everywhere.
//!
//! Runtimes other than Shoal take the *first* entry of their platform. So,
//! per os/architecture, the plainest entry (no GPU, lowest CPU level and
//! target, fewest features, no MPI) must come first: where it does not, it
//! is moved there and a warning says so.
//!
//! The index is written once ([`render`]); those very bytes are printed by
//! `--dry-run` and pushed, and their sha256 is the digest.
//!
//! [`parse_entry`], [`read_spec`], [`resolve`], [`order`] and [`render`]
//! are pure; [`build`] and [`push`] talk to registries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ClientOptions, FetchedManifest, Registry, RegistryError};
use crate::config::{Config, RegistryConfig};
use crate::image::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::reference::{Digest, ImageRef, ImageSpec};
use crate::select::capabilities::abi_family;
use crate::select::cpu;
use crate::select::index::{ANN_CUDA, ANN_GPU, ANN_MPI, ANN_MPI_VERSION, ANN_TARGET, ANN_WEIGHT};

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

fn invalid(s: impl Into<String>) -> ComposeError {
    ComposeError::Invalid(s.into())
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

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
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

/// How much an entry asks of a node, for ordering: the plainest (least)
/// entry of each platform must come first. GPU, CPU depth (archspec
/// ancestors of the target, else of the variant's generic level),
/// features, MPI.
fn demands(e: &Resolved) -> (bool, bool, usize, usize, bool) {
    let arch = e.platform.architecture.as_str();
    let depth_of = |t: &str| cpu::target(t).map_or(0, |m| m.ancestors().len());
    let cpu_depth = match e.annotations.get(ANN_TARGET) {
        Some(t) => depth_of(t),
        None => e
            .platform
            .variant
            .as_deref()
            .and_then(|v| cpu::variant_level(arch, v))
            .and_then(|l| cpu::variant_target(arch, l))
            .map_or(0, |t| depth_of(&t)),
    };
    (
        e.annotations.get(ANN_GPU).is_some_and(|v| v == "yes"),
        e.annotations.contains_key(ANN_CUDA),
        cpu_depth,
        e.platform.features.len(),
        e.annotations.contains_key(ANN_MPI),
    )
}

fn plain(e: &Resolved) -> bool {
    demands(e) == (false, false, 0, 0, false)
}

/// Puts the plainest entry of each os/architecture before the others of
/// that platform (the rest keep their order), with a warning for each move
/// and for a platform with no plain entry at all. Pure.
pub fn order(mut entries: Vec<Resolved>) -> (Vec<Resolved>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let key = (
            entries[i].platform.os.clone(),
            entries[i].platform.architecture.clone(),
        );
        if seen.contains(&key) {
            i += 1;
            continue;
        }
        seen.push(key.clone());
        let same = |e: &Resolved| {
            (e.platform.os.as_str(), e.platform.architecture.as_str())
                == (key.0.as_str(), key.1.as_str())
        };
        // The least demanding of this platform, first listed on ties.
        let mut best = i;
        for j in i..entries.len() {
            if same(&entries[j]) && demands(&entries[j]) < demands(&entries[best]) {
                best = j;
            }
        }
        if best != i {
            let e = entries.remove(best);
            warnings.push(format!(
                "moved {} ({}) before {} ({}): runtimes that take the first {}/{} entry would run that one on every node; the plainest build must come first",
                e.source,
                label(&e),
                entries[i].source,
                label(&entries[i]),
                key.0,
                key.1
            ));
            entries.insert(i, e);
        }
        if !plain(&entries[i]) {
            warnings.push(format!(
                "no {}/{} entry without CPU, GPU or MPI requirements: runtimes that take the first match run {} ({}) everywhere; add a generic build",
                key.0,
                key.1,
                entries[i].source,
                label(&entries[i])
            ));
        }
        i += 1;
    }
    (entries, warnings)
}

/// `linux/amd64/v4 target=zen4 gpu` style label.
pub fn label(e: &Resolved) -> String {
    let mut s = e.platform.to_string();
    for (k, name) in [
        (ANN_TARGET, "target"),
        (ANN_MPI, "mpi"),
        (ANN_CUDA, "cuda"),
        (ANN_WEIGHT, "weight"),
    ] {
        if let Some(v) = e.annotations.get(k) {
            s.push_str(&format!(" {name}={v}"));
        }
    }
    if e.annotations.get(ANN_GPU).is_some_and(|v| v == "yes") {
        s.push_str(" gpu");
    }
    if !e.platform.features.is_empty() {
        s.push_str(&format!(" features={}", e.platform.features.join("+")));
    }
    s
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<DescriptorDoc<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorDoc<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    platform: &'a Platform,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// The index document, written once: these bytes are printed, pushed and
/// hashed. Pure and deterministic (same entries, same bytes).
pub fn render(entries: &[Resolved], annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let doc = IndexDoc {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: entries
            .iter()
            .map(|e| DescriptorDoc {
                media_type: &e.media_type,
                digest: e.digest.as_str(),
                size: e.size,
                platform: &e.platform,
                annotations: &e.annotations,
            })
            .collect(),
        annotations,
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("an index serializes");
    bytes.push(b'\n');
    bytes
}

/// A built index: its bytes and digest, the entries as ordered, and the
/// warnings of [`order`].
pub struct Built {
    pub target: ImageRef,
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub entries: Vec<Resolved>,
    pub warnings: Vec<String>,
    /// The manifest bytes of each entry (by digest), to copy them.
    manifests: HashMap<Digest, FetchedManifest>,
    clients: Clients,
}

/// One client per registry, made on first use.
struct Clients {
    opts: ClientOptions,
    registries: BTreeMap<String, RegistryConfig>,
    made: HashMap<String, Registry>,
}

impl Clients {
    fn get(&mut self, name: &str) -> Result<&Registry, RegistryError> {
        if !self.made.contains_key(name) {
            let cfg = self.registries.get(name).cloned().unwrap_or_default();
            self.made
                .insert(name.to_string(), Registry::new(name, &cfg, &self.opts)?);
        }
        Ok(&self.made[name])
    }
}

/// Parses an image reference that must be in a registry.
pub fn registry_ref(s: &str, what: &str) -> Result<ImageRef, ComposeError> {
    match s
        .parse::<ImageSpec>()
        .map_err(|e| invalid(format!("{what}: {e}")))?
    {
        ImageSpec::Registry(r) => Ok(r),
        _ => Err(invalid(format!(
            "{what} {s:?}: not a registry image (REGISTRY/REPO:TAG)"
        ))),
    }
}

/// Reads every entry's manifest and config from its registry and writes
/// the index for `target` (not pushed yet).
pub fn build(
    config: &Config,
    opts: &ClientOptions,
    target: &str,
    specs: &[EntrySpec],
    annotations: &BTreeMap<String, String>,
) -> Result<Built, ComposeError> {
    let target = registry_ref(target, "index")?;
    if target.digest().is_some() || target.tag().is_none() {
        return Err(invalid(format!(
            "index {target}: name the tag to push it to (REGISTRY/REPO:TAG); its digest is what gets computed"
        )));
    }
    if specs.is_empty() {
        return Err(invalid("no entries: give --entry REF[,KEY=VALUE...] once per image, or a spec file with [[entry]] tables"));
    }
    let mut clients = Clients {
        opts: opts.clone(),
        registries: config.registries.clone(),
        made: HashMap::new(),
    };
    let mut entries = Vec::new();
    let mut manifests = HashMap::new();
    for spec in specs {
        let source = registry_ref(&spec.image, "entry")?;
        let reg = clients.get(source.registry())?;
        let reference = match (source.digest(), source.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let fetched = reg.manifest_at_origin(source.repository(), &reference)?;
        let (media_type, config_digest) = image_config_digest(&spec.image, &fetched)?;
        let cfg = reg.blob_bytes(source.repository(), &config_digest)?;
        let e = resolve(spec, source, &fetched, media_type, &cfg)?;
        manifests.insert(fetched.digest.clone(), fetched);
        entries.push(e);
    }
    let (entries, warnings) = order(entries);
    let bytes = render(&entries, annotations);
    let digest = super::sha256_digest(&bytes);
    Ok(Built {
        target,
        bytes,
        digest,
        entries,
        warnings,
        manifests,
        clients,
    })
}

/// What a push did per entry (for the summary) and the index digest.
pub struct Pushed {
    pub digest: Digest,
    /// Per entry in index order: `None` when it is in the target
    /// repository already, else how it was copied there.
    pub copies: Vec<Option<super::push::CopyReport>>,
}

/// Copies each entry into the target repository where it lives elsewhere
/// (blobs mounted within a registry, streamed across registries), then
/// PUTs the index bytes under the target's tag.
pub fn push(mut built: Built) -> Result<Pushed, ComposeError> {
    let target = built.target.clone();
    built.clients.get(target.registry())?;
    let mut copies = Vec::new();
    for e in &built.entries {
        if e.source.registry() == target.registry() && e.source.repository() == target.repository()
        {
            copies.push(None);
            continue;
        }
        let m = &built.manifests[&e.digest];
        let dst = &built.clients.made[target.registry()];
        let src = &built.clients.made[e.source.registry()];
        let report = dst.copy_image(
            target.repository(),
            src,
            e.source.repository(),
            m,
            &e.media_type,
        )?;
        copies.push(Some(report));
    }
    let dst = &built.clients.made[target.registry()];
    let tag = target.tag().expect("build checked the tag");
    let digest = dst.put_manifest(target.repository(), tag, &built.bytes, OCI_INDEX)?;
    debug_assert_eq!(digest, built.digest);
    Ok(Pushed { digest, copies })
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;
