//! Each node's choice from an image index, before it stages anything.
//!
//! A job pinned to an index (`Pin::index`) carries the index's digest; in
//! slurmstepd's `user_init` (the user's effective ids) every node reads the
//! index's bytes from the store the pin names, checks them against the
//! digest, and chooses with its own capabilities (`shoal::select`): per
//! node, or with `--image-select=uniform` the best entry every node of the
//! job accepts (the other nodes' capabilities as they published them). The
//! chosen entry then becomes the step's pin, so staging and entering the
//! image work as for any image.
//!
//! Root never reads a user's store here: as root, only capabilities are
//! detected and published (slurmd start, prolog).

use std::path::{Path, PathBuf};

use shoal::image::store::StoreRoot;
use shoal::select::{capabilities, resolve, JobRequest, NodeCapabilities, SelectMode};
use shoal::{Config, Digest};

use crate::pin::{Pin, Scope};

/// Where root caches this node's detected capabilities.
fn cache_path(config: &Config, node: &str) -> PathBuf {
    config.node.cache_dir.join(node).join("capabilities.json")
}

/// As root (slurmd start, prolog): detects (or reads the cache of) this
/// node's capabilities and publishes them for uniform jobs. Best effort:
/// returns what went wrong for the log.
pub fn refresh(config: &Config, node: &str) -> Result<PathBuf, String> {
    let detected = capabilities::detect_cached(node, Some(&cache_path(config, node)));
    resolve::publish(config, &detected)
}

/// This node's capabilities, any context: the root-written cache when it
/// is current, else a fresh detection; then the site's overrides.
fn this_node(config: &Config, node: &str) -> Result<NodeCapabilities, String> {
    capabilities::node_capabilities(config, node, Some(&cache_path(config, node)))
}

/// The store root an index pin names: the site store of this node's
/// config, or the user store holding the pinned file
/// (`ROOT/indexes/sha256/HEX`).
fn root_of(config: &Config, pin: &Pin, digest: &Digest) -> Result<StoreRoot, String> {
    match pin.scope {
        Scope::Site => {
            let dir = config.store.site_dir.clone().ok_or_else(|| {
                format!("image {} is a site image index, but this node's Shoal config has no `store.site_dir`", pin.requested)
            })?;
            Ok(StoreRoot::new(dir, Scope::Site))
        }
        Scope::User => {
            let p: &Path = &pin.squashfs;
            let root = p
                .parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .filter(|_| {
                    p.file_name().is_some_and(|n| n == digest.hex())
                        && p.parent().is_some_and(|d| d.ends_with("indexes/sha256"))
                });
            let root = root.ok_or_else(|| {
                format!(
                    "image {}: {} is not an index in an image store",
                    pin.requested,
                    p.display()
                )
            })?;
            Ok(StoreRoot::new(root.to_path_buf(), Scope::User))
        }
    }
}

/// The entry this node runs from the index `pin` names, as a pin of its
/// own. Called with the user's effective ids. `job_nodes` is the job's
/// node list (`SLURM_JOB_NODELIST`), used in uniform mode.
pub fn choose(
    config: &Config,
    pin: &Pin,
    node: &str,
    job_nodes: Option<&str>,
    job: &JobRequest,
) -> Result<(Pin, String), String> {
    let digest: Digest = pin.digest.clone();
    let root = root_of(config, pin, &digest)?;
    let bytes = root
        .index_bytes(&digest)
        .map_err(|e| format!("image {}: {e}", pin.requested))?
        .ok_or_else(|| {
            format!(
                "image {}: index {} is not in the {} store {} on node {node}; pull it again with `shoal pull`",
                pin.requested,
                pin.digest,
                root.scope(),
                root.dir().display()
            )
        })?;
    let index = shoal::image::store::StoredIndex {
        digest: digest.clone(),
        bytes,
        path: root.index_path(&digest),
        scope: root.scope(),
        variants: Default::default(),
        reference: pin.requested.clone(),
    };
    let this = this_node(config, node)?;
    let nodes = match pin.select {
        SelectMode::Node => vec![this],
        SelectMode::Uniform => {
            let list = job_nodes.ok_or("--image-select=uniform: the job's node list (SLURM_JOB_NODELIST) is not known here")?;
            let names = resolve::expand_hostlist(list)?;
            resolve::all_nodes(config, &names, &this)?
        }
    };
    let (image, decision) =
        resolve::choose(&root, &index, &nodes, job).map_err(|e| e.to_string())?;
    let entry = decision.chosen_entry().expect("chosen");
    let how = format!(
        "node {node} chose entry [{}] {} ({}) of index {}{}",
        entry.position,
        entry.label(),
        image.digest,
        pin.digest,
        if pin.select == SelectMode::Uniform {
            format!(", uniform over {}", decision.nodes.join(","))
        } else {
            String::new()
        }
    );
    let chosen = Pin {
        requested: pin.requested.clone(),
        digest: image.digest.clone(),
        scope: pin.scope,
        squashfs: image.squashfs.clone(),
        sha256: image.squashfs_sha256.clone(),
        size: image.size,
        index: false,
        select: pin.select,
        // Root checks the chosen entry against the site policy with these
        // (a signature of the index covers every entry it lists).
        identity: pin.identity.clone(),
        signatures: pin.signatures.clone(),
        verity: image.verity_root.clone(),
    };
    Ok((chosen, how))
}
