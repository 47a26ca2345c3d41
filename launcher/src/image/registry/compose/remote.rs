//! Building an index from the registries its entries are in, and pushing
//! it (entries copied into the target repository first).

use std::collections::{BTreeMap, HashMap};

use super::entry::{image_config_digest, resolve, ComposeError, Resolved};
use super::index::{order, render};
use super::spec::EntrySpec;
use crate::config::{Config, RegistryConfig};
use crate::image::manifest::OCI_INDEX;
use crate::image::registry::{push::CopyReport, sha256_digest, ClientOptions, FetchedManifest, Registry, RegistryError};
use crate::reference::{Digest, ImageRef, ImageSpec};

fn invalid(s: impl Into<String>) -> ComposeError {
    ComposeError::Invalid(s.into())
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
    let digest = sha256_digest(&bytes);
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
    pub copies: Vec<Option<CopyReport>>,
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
