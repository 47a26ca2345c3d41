//! Selection: every entry of an index gets a verdict against a node (and
//! a job); the best accepted entry is chosen.
//!
//! Refused, with the reason: not an image (attestations, nested indexes,
//! other artifacts); another os or architecture; a `platform.variant` above
//! the node's level (or one Shoal does not know); `platform.features` not
//! all present; an `io.archspec.cpu.target` that is neither the node's
//! target nor one of its ancestors (an unknown target too);
//! `org.supercontainers.hardware.gpu.available: "yes"` without a GPU, or
//! `org.supercontainers.hardware.gpu.cuda.version` above the driver's; an
//! `org.supercontainers.mpi.implementation` of another ABI family than the
//! job's MPI module (only when the job has one).
//!
//! Ranked, lexicographically: `org.supercontainers.compatibility.weight`
//! (integer, default 0), CPU depth (ancestors of the explicit target, else
//! of the variant's generic target), GPU fit, MPI fit (same implementation
//! and major 2, same ABI family 1), number of features; ties go to the
//! entry listed first.
//!
//! Pure: bytes and values in, a [`Decision`] out.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::capabilities::{abi_family, version_cmp, JobRequest, NodeCapabilities};
use super::cpu;
use crate::image::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

pub const ANN_TARGET: &str = "io.archspec.cpu.target";
pub const ANN_GPU: &str = "org.supercontainers.hardware.gpu.available";
pub const ANN_CUDA: &str = "org.supercontainers.hardware.gpu.cuda.version";
pub const ANN_MPI: &str = "org.supercontainers.mpi.implementation";
pub const ANN_MPI_VERSION: &str = "org.supercontainers.mpi.version";
pub const ANN_WEIGHT: &str = "org.supercontainers.compatibility.weight";

/// One entry as the index wrote it (read from the raw JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in `manifests`, from 0.
    pub position: usize,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub features: Vec<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Entry {
    /// `linux/amd64/v3 x86_64_v3 gpu` style label for messages.
    pub fn label(&self) -> String {
        let mut s = match (&self.os, &self.architecture) {
            (Some(o), Some(a)) => format!("{o}/{a}"),
            _ => "no platform".into(),
        };
        if let Some(v) = &self.variant {
            s.push('/');
            s.push_str(v);
        }
        if let Some(t) = self.annotations.get(ANN_TARGET) {
            s.push_str(&format!(" target={t}"));
        }
        if self.annotations.get(ANN_GPU).is_some_and(|v| v == "yes") {
            s.push_str(" gpu");
        }
        if let Some(m) = self.annotations.get(ANN_MPI) {
            s.push_str(&format!(" mpi={m}"));
        }
        if !self.features.is_empty() {
            s.push_str(&format!(" features={}", self.features.join(",")));
        }
        s
    }
}

/// The ranking key of an accepted entry (compared field by field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Score {
    pub weight: i64,
    pub cpu_depth: usize,
    pub gpu_fit: u8,
    pub mpi_fit: u8,
    pub features: usize,
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weight {} cpu-depth {} gpu {} mpi {} features {}",
            self.weight, self.cpu_depth, self.gpu_fit, self.mpi_fit, self.features
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    Accepted { score: Score },
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryVerdict {
    pub entry: Entry,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// What selection decided, and why, for every entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The nodes decided for (one, or all of a uniform job's).
    pub nodes: Vec<String>,
    /// Position of the chosen entry in the index.
    pub chosen: Option<usize>,
    pub entries: Vec<EntryVerdict>,
}

impl Decision {
    pub fn chosen_entry(&self) -> Option<&Entry> {
        self.chosen.map(|i| &self.entries[i].entry)
    }

    /// The chosen digest, or the refusal that lists every entry and why.
    pub fn digest(&self) -> Result<&str, SelectError> {
        self.chosen_entry()
            .map(|e| e.digest.as_str())
            .ok_or_else(|| SelectError::NothingFits(self.render_refusals()))
    }

    /// One line per entry: `  [2] linux/amd64/v4: chosen (weight 0 ...)`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (i, ev) in self.entries.iter().enumerate() {
            let what = match &ev.verdict {
                Verdict::Accepted { score } if Some(i) == self.chosen => {
                    format!("chosen ({score})")
                }
                Verdict::Accepted { score } => format!("accepted ({score})"),
                Verdict::Refused { reason } => format!("refused: {reason}"),
            };
            s.push_str(&format!(
                "  [{i}] {} {}: {what}\n",
                short(&ev.entry.digest),
                ev.entry.label()
            ));
        }
        s
    }

    fn render_refusals(&self) -> String {
        let mut s = format!(
            "no entry of the image index fits node {}:\n",
            self.nodes.join(", ")
        );
        s.push_str(&self.render());
        s
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Why nothing was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("not an image index: {0}")]
    NotAnIndex(String),
    /// Every entry and its reason, one per line.
    #[error("{0}")]
    NothingFits(String),
}

/// Reads the entries of an index from its raw bytes.
pub fn entries(index: &[u8]) -> Result<Vec<Entry>, SelectError> {
    let doc: Value = serde_json::from_slice(index)
        .map_err(|e| SelectError::NotAnIndex(format!("not JSON ({e})")))?;
    let list = doc
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| SelectError::NotAnIndex("no `manifests` list".into()))?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(list
        .iter()
        .enumerate()
        .map(|(position, m)| {
            let p = m.get("platform");
            let annotations = m
                .get("annotations")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Entry {
                position,
                digest: s(m, "digest").unwrap_or_default(),
                media_type: s(m, "mediaType").unwrap_or_default(),
                size: m.get("size").and_then(Value::as_u64).unwrap_or(0),
                os: p.and_then(|p| s(p, "os")),
                architecture: p.and_then(|p| s(p, "architecture")),
                variant: p.and_then(|p| s(p, "variant")).filter(|v| !v.is_empty()),
                features: p
                    .and_then(|p| p.get("features"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                annotations,
            }
        })
        .collect())
}

/// Whether `index` (raw bytes, with the registry's content type) is an
/// index rather than an image manifest.
pub fn is_index(bytes: &[u8], content_type: Option<&str>) -> bool {
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return false,
    };
    match doc
        .get("mediaType")
        .and_then(Value::as_str)
        .or(content_type)
    {
        Some(t) if t.starts_with(OCI_INDEX) || t.starts_with(DOCKER_LIST) => true,
        Some(t) if t.starts_with(OCI_MANIFEST) || t.starts_with(DOCKER_MANIFEST) => false,
        _ => doc.get("manifests").is_some(),
    }
}

/// The verdict of one entry for one node.
pub fn judge(e: &Entry, node: &NodeCapabilities, job: &JobRequest) -> Verdict {
    match judge_inner(e, node, job) {
        Ok(score) => Verdict::Accepted { score },
        Err(reason) => Verdict::Refused { reason },
    }
}

fn judge_inner(e: &Entry, node: &NodeCapabilities, job: &JobRequest) -> Result<Score, String> {
    let ann = |k: &str| e.annotations.get(k).map(String::as_str);
    // Not an image: attestations (BuildKit writes them as unknown/unknown
    // with a reference type), nested indexes, other artifacts.
    if ann("vnd.docker.reference.type").is_some() || e.os.as_deref() == Some("unknown") {
        return Err("not an image (attestation or other artifact)".into());
    }
    if e.media_type != OCI_MANIFEST && e.media_type != DOCKER_MANIFEST {
        return Err(format!(
            "not an image manifest (media type {:?})",
            e.media_type
        ));
    }
    if e.digest.parse::<crate::Digest>().is_err() {
        return Err(format!("digest {:?} is not sha256", e.digest));
    }
    let (Some(os), Some(arch)) = (e.os.as_deref(), e.architecture.as_deref()) else {
        return Err("no platform: it does not say which machine it is for".into());
    };
    let c = &node.cpu;
    if os != node.os || arch != c.architecture {
        return Err(format!(
            "for {os}/{arch}, the node is {}/{}",
            node.os, c.architecture
        ));
    }
    let node_level = cpu::node_level(c);
    let mut depth_target = cpu::variant_target(arch, (if arch == "arm64" { 8 } else { 1 }, 0));
    if let Some(v) = &e.variant {
        let Some(level) = cpu::variant_level(arch, v) else {
            return Err(format!("variant {v:?} is not a {arch} level Shoal knows"));
        };
        if level > node_level {
            return Err(format!(
                "variant {v} is above the node's level {}",
                cpu::level_name(arch, node_level)
            ));
        }
        depth_target = cpu::variant_target(arch, level);
    }
    let family = cpu::family_of(arch).unwrap_or(arch);
    let missing: Vec<&str> = e
        .features
        .iter()
        .filter(|f| !cpu::has_feature(&c.features, family, f))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "needs CPU features the node lacks: {}",
            missing.join(", ")
        ));
    }
    if let Some(t) = ann(ANN_TARGET) {
        if cpu::target(t).is_none() {
            return Err(format!(
                "{ANN_TARGET} {t:?} is not an archspec target Shoal knows"
            ));
        }
        if t != c.target && !c.ancestors.iter().any(|a| a == t) {
            return Err(format!(
                "built for {t}, which the node's {} is not (nor descends from)",
                c.target
            ));
        }
        depth_target = Some(t.to_string());
    }
    let cpu_depth = depth_target
        .as_deref()
        .and_then(cpu::target)
        .map_or(0, |t| t.ancestors().len());

    let wants_gpu = ann(ANN_GPU).is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if wants_gpu && node.gpus.is_empty() {
        return Err("needs a GPU, the node has none".into());
    }
    if let Some(need) = ann(ANN_CUDA) {
        match node.cuda() {
            None => {
                return Err(format!(
                    "needs CUDA {need}, the node has no NVIDIA driver that tells its CUDA version"
                ))
            }
            Some(have) if version_cmp(need, have).is_gt() => {
                return Err(format!(
                    "needs CUDA {need}, the node's driver runs CUDA up to {have}"
                ))
            }
            Some(_) => {}
        }
    }
    let gpu_fit = u8::from(wants_gpu && !node.gpus.is_empty());

    let mut mpi_fit = 0;
    if let (Some(imp), Some(mpi)) = (ann(ANN_MPI), &job.mpi) {
        let Some(family) = abi_family(imp) else {
            return Err(format!(
                "{ANN_MPI} {imp:?} is not an MPI Shoal knows the ABI of"
            ));
        };
        if family != mpi.abi {
            return Err(format!(
                "MPI {imp} ({family} ABI), the job's MPI module is {} ({} ABI)",
                mpi.implementation, mpi.abi
            ));
        }
        let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
        let same_major = match (ann(ANN_MPI_VERSION), &mpi.version) {
            (Some(a), Some(b)) => major(a) == major(b),
            _ => false,
        };
        let same_impl = abi_name(imp) == abi_name(&mpi.implementation);
        mpi_fit = if same_impl && same_major { 2 } else { 1 };
    }
    let weight = match ann(ANN_WEIGHT) {
        None => 0,
        Some(w) => w
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{ANN_WEIGHT} {w:?} is not an integer"))?,
    };
    Ok(Score {
        weight,
        cpu_depth,
        gpu_fit,
        mpi_fit,
        features: e.features.len(),
    })
}

fn abi_name(imp: &str) -> String {
    imp.to_ascii_lowercase()
        .replace(['_', ' '], "-")
        .replace("open-mpi", "openmpi")
}

/// The best accepted entry: highest score, first listed on ties.
fn best(scores: &[Option<Score>]) -> Option<usize> {
    let mut chosen: Option<(usize, Score)> = None;
    for (i, s) in scores.iter().enumerate() {
        if let Some(s) = s {
            if chosen.is_none_or(|(_, b)| *s > b) {
                chosen = Some((i, *s));
            }
        }
    }
    chosen.map(|(i, _)| i)
}

/// Chooses an entry of `index` for `node` running `job`.
pub fn select(
    index: &[u8],
    node: &NodeCapabilities,
    job: &JobRequest,
) -> Result<Decision, SelectError> {
    select_uniform(index, std::slice::from_ref(node), job)
}

/// Chooses the best entry every node of `nodes` accepts: an entry refused
/// by one node is refused (the reason names the node); an accepted entry
/// scores as it does on the node where it fits least.
pub fn select_uniform(
    index: &[u8],
    nodes: &[NodeCapabilities],
    job: &JobRequest,
) -> Result<Decision, SelectError> {
    let list = entries(index)?;
    let mut verdicts = Vec::with_capacity(list.len());
    for e in list {
        let mut worst: Option<Score> = None;
        let mut refused = None;
        for n in nodes {
            match judge(&e, n, job) {
                Verdict::Accepted { score } => worst = Some(worst.map_or(score, |w| w.min(score))),
                Verdict::Refused { reason } => {
                    refused = Some(if nodes.len() > 1 {
                        format!("{}: {reason}", n.node)
                    } else {
                        reason
                    });
                    break;
                }
            }
        }
        let verdict = match (refused, worst) {
            (Some(reason), _) => Verdict::Refused { reason },
            (None, Some(score)) => Verdict::Accepted { score },
            (None, None) => Verdict::Refused {
                reason: "no node to run on".into(),
            },
        };
        verdicts.push(EntryVerdict { entry: e, verdict });
    }
    let scores: Vec<Option<Score>> = verdicts
        .iter()
        .map(|v| match v.verdict {
            Verdict::Accepted { score } => Some(score),
            Verdict::Refused { .. } => None,
        })
        .collect();
    Ok(Decision {
        nodes: nodes.iter().map(|n| n.node.clone()).collect(),
        chosen: best(&scores),
        entries: verdicts,
    })
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
