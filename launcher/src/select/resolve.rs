//! From a name to the image a node runs, through its index when the
//! name is one: what `shoal run`, `shoal select` and the SPANK plugin call.

use std::path::{Path, PathBuf};

use super::capabilities::{self, JobRequest, NodeCapabilities};
use super::index::{self, Decision};
use crate::image::store::{Store, StoreError, StoreRoot, StoredImage, StoredIndex};
use crate::{Config, ImageSpec};

/// The image to run and, for an index, how it was chosen.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub image: StoredImage,
    pub chosen_from: Option<(StoredIndex, Decision)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{reference}: {message}")]
    Select { reference: String, message: String },
}

/// Where this node's detected capabilities are cached: in the node cache
/// for root (the plugin, `shoal` as root), in the user's cache otherwise.
pub fn capabilities_cache(config: &Config, node: &str) -> Option<PathBuf> {
    if nix::unistd::Uid::effective().is_root() {
        return Some(config.node.cache_dir.join(node).join("capabilities.json"));
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .filter(|h| h.starts_with('/'))
                .map(|h| Path::new(&h).join(".cache"))
        })?;
    Some(base.join("shoal").join(format!("capabilities-{node}.json")))
}

/// This node's capabilities: detected (cached), then the site's overrides.
pub fn this_node(config: &Config) -> Result<NodeCapabilities, String> {
    let node = capabilities::this_node_name();
    capabilities::node_capabilities(config, &node, capabilities_cache(config, &node).as_deref())
}

/// The job request of a module list as the user gave it (`[]`: the site's
/// default modules).
pub fn job_request(config: &Config, modules: &[String]) -> JobRequest {
    let names: Vec<String> = match crate::inject::select_modules(config, modules) {
        Ok(m) => m.into_iter().map(|(n, _)| n.to_string()).collect(),
        Err(_) => Vec::new(),
    };
    JobRequest {
        mpi: capabilities::job_mpi(config, &names),
    }
}

/// The image `spec` names for `nodes` (one node, or every node of a
/// uniform job): an index's chosen entry, else the image itself.
pub fn resolve(
    store: &Store,
    spec: &ImageSpec,
    nodes: &[NodeCapabilities],
    job: &JobRequest,
) -> Result<Resolved, ResolveError> {
    let Some((index, root)) = store.find_index(spec)? else {
        return Ok(Resolved {
            image: store.resolve(spec)?,
            chosen_from: None,
        });
    };
    let (image, decision) = choose(root, &index, nodes, job)?;
    Ok(Resolved {
        image,
        chosen_from: Some((index, decision)),
    })
}

/// Selection on a stored index, and the chosen entry's image from the
/// same store.
pub fn choose(
    root: &StoreRoot,
    index: &StoredIndex,
    nodes: &[NodeCapabilities],
    job: &JobRequest,
) -> Result<(StoredImage, Decision), ResolveError> {
    let select_err = |message: String| ResolveError::Select {
        reference: index.reference.clone(),
        message,
    };
    let decision =
        index::select_uniform(&index.bytes, nodes, job).map_err(|e| select_err(e.to_string()))?;
    let digest = decision.digest().map_err(|e| select_err(e.to_string()))?;
    let entry = decision.chosen_entry().expect("a digest means an entry");
    let d: crate::Digest = digest
        .parse()
        .map_err(|_| select_err(format!("entry digest {digest:?} is not sha256")))?;
    let image = root.image(&d)?.ok_or_else(|| {
        select_err(format!(
            "the entry for node {} is [{}] {} ({digest}), which is not in the {} store: it was not pulled for this site's \
             platforms; add `{}/{}` to `image.platforms` in the site config, or pull it with `--platform`",
            decision.nodes.join(", "),
            entry.position,
            entry.label(),
            root.scope(),
            entry.os.as_deref().unwrap_or("?"),
            entry.architecture.as_deref().unwrap_or("?"),
        ))
    })?;
    Ok((image, decision))
}

/// Where nodes publish their detected capabilities for uniform choices.
pub fn capabilities_dir(config: &Config) -> Option<PathBuf> {
    config
        .node
        .capabilities_dir
        .clone()
        .or_else(|| config.store.site_dir.as_ref().map(|d| d.join("nodes")))
}

/// Publishes this node's detected capabilities (root, best effort): what
/// the other nodes of a uniform job read.
pub fn publish(config: &Config, caps: &NodeCapabilities) -> Result<PathBuf, String> {
    let dir = capabilities_dir(config)
        .ok_or("no `node.capabilities_dir` and no `store.site_dir` to publish to")?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.json", caps.node));
    let tmp = dir.join(format!(".{}.new", crate::image::store::unique_name()));
    let text = serde_json::to_vec_pretty(caps).expect("serializes");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The capabilities of every node in `nodes`, as the site sees them: this
/// node's own (`this`), the others' as they published them, each with the
/// site's overrides for it.
pub fn all_nodes(
    config: &Config,
    nodes: &[String],
    this: &NodeCapabilities,
) -> Result<Vec<NodeCapabilities>, String> {
    let dir = capabilities_dir(config);
    nodes
        .iter()
        .map(|n| {
            if *n == this.node {
                return Ok(this.clone());
            }
            let dir = dir.as_ref().ok_or_else(|| {
                format!("--image-select=uniform needs node {n}'s capabilities, but there is no `node.capabilities_dir` or `store.site_dir` where nodes publish them")
            })?;
            let path = dir.join(format!("{n}.json"));
            let caps = capabilities::read_capabilities(&path).map_err(|e| {
                format!("--image-select=uniform needs node {n}'s capabilities: {e} (each node's slurmd publishes them when it starts, and every image job refreshes them; check that {} is shared and readable)", dir.display())
            })?;
            caps.apply(config.nodes.get(n.as_str()))
        })
        .collect()
}

/// Slurm's compact host lists (`n[1-3,5],gpu01`) as names.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            items.push(std::mem::take(&mut item));
        } else {
            item.push(c);
        }
    }
    items.push(item);
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        let Some((prefix, rest)) = item.split_once('[') else {
            out.push(item);
            continue;
        };
        let (ranges, suffix) = rest
            .split_once(']')
            .ok_or_else(|| format!("{list:?}: unbalanced `[` in a host list"))?;
        for r in ranges.split(',') {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let width = a.len();
            let (x, y): (u64, u64) = match (a.parse(), b.parse()) {
                (Ok(x), Ok(y)) if x <= y => (x, y),
                _ => return Err(format!("{list:?}: bad range {r:?} in a host list")),
            };
            for n in x..=y {
                out.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists() {
        assert_eq!(expand_hostlist("n[1-3]").unwrap(), ["n1", "n2", "n3"]);
        assert_eq!(expand_hostlist("n1").unwrap(), ["n1"]);
        assert_eq!(
            expand_hostlist("gpu[01-02,07],login").unwrap(),
            ["gpu01", "gpu02", "gpu07", "login"]
        );
        assert!(expand_hostlist("n[1-").is_err());
        assert!(expand_hostlist("n[3-1]").is_err());
    }
}
