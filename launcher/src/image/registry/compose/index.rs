//! The index itself: its entries ordered so that the plainest of each
//! platform comes first, and written once ([`render`]). Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::entry::{Platform, Resolved};
use crate::image::manifest::OCI_INDEX;
use crate::select::cpu;
use crate::select::index::{ANN_CUDA, ANN_GPU, ANN_MPI, ANN_TARGET, ANN_WEIGHT};

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
