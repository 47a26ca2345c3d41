//! Fetching an image's cosign signatures from its registry.
//!
//! Key-based cosign signatures live, on registries without the OCI 1.1
//! referrers API (Debian's docker-registry 2.8 among them), in the image's
//! own repository under the tag `sha256-HEX.sig`: an OCI manifest whose
//! layers are simple-signing payloads, each with its signature in the
//! `dev.cosignproject.cosign/signature` annotation. That is what cosign
//! writes with `--new-bundle-format=false` (cosign 2's default).
//!
//! cosign 3's default, a sigstore bundle (a DSSE envelope over an in-toto
//! statement), is attached as an OCI 1.1 referrer: found through the
//! referrers API, or without one, in the index under the tag `sha256-HEX`
//! (the referrers tag schema), and judged by [`super::bundle`].

use super::bundle;
use super::sigstore::{
    IndexDocument, Signature, SignatureSet, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE,
};
use crate::image::registry::{Registry, RegistryError};
use crate::reference::Digest;

/// At most this many signatures are read from one `.sig` manifest.
const MAX_SIGNATURES: usize = 64;

/// The signatures of `image` and, when it was chosen from an index
/// (`index` = its digest and bytes), of that index.
pub fn fetch(
    registry: &Registry,
    repository: &str,
    image: &Digest,
    index: Option<(&Digest, &[u8])>,
) -> Result<SignatureSet, RegistryError> {
    let mut set = SignatureSet {
        index: index.map(|(d, body)| IndexDocument {
            digest: d.clone(),
            body: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, body),
        }),
        fetched_at: crate::image::pull::now(),
        ..SignatureSet::default()
    };
    let mut targets = vec![image.clone()];
    if let Some((d, _)) = index {
        if d != image {
            targets.insert(0, d.clone());
        }
    }
    for target in &targets {
        fetch_sig_tag(registry, repository, target, &mut set)?;
        fetch_bundles(registry, repository, target, &mut set)?;
    }
    Ok(set)
}

/// Reads `sha256-HEX.sig`; a missing tag is no signature.
fn fetch_sig_tag(
    registry: &Registry,
    repository: &str,
    target: &Digest,
    set: &mut SignatureSet,
) -> Result<(), RegistryError> {
    let tag = format!("sha256-{}.sig", target.hex());
    let manifest = match registry.manifest(repository, &tag) {
        Ok(m) => m,
        Err(RegistryError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let doc: serde_json::Value = match serde_json::from_slice(&manifest.body) {
        Ok(v) => v,
        Err(e) => {
            set.problems
                .push(format!("signature manifest {tag} is not JSON ({e})"));
            return Ok(());
        }
    };
    let Some(layers) = doc.get("layers").and_then(|l| l.as_array()) else {
        set.problems
            .push(format!("signature manifest {tag} has no `layers` list"));
        return Ok(());
    };
    for layer in layers.iter().take(MAX_SIGNATURES) {
        if layer.get("mediaType").and_then(|m| m.as_str()) != Some(SIMPLE_SIGNING_MEDIA_TYPE) {
            continue;
        }
        let digest = layer
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Digest>().ok());
        let signature = layer
            .get("annotations")
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .and_then(|s| s.as_str());
        let (Some(digest), Some(signature)) = (digest, signature) else {
            set.problems.push(format!("signature manifest {tag}: a payload layer without a sha256 digest or a {SIGNATURE_ANNOTATION} annotation"));
            continue;
        };
        // blob_bytes checks the payload against its digest.
        let payload = registry.blob_bytes(repository, &digest)?;
        set.signatures.push(Signature::new(&payload, signature));
    }
    Ok(())
}

/// Reads the sigstore bundles attached to `target`: the referrers API
/// first, and where the registry has none (404), the referrers tag schema
/// (`sha256-HEX`, an index of referrers), which is where cosign 3 puts
/// them on such a registry. Each bundle is stored as served; unreadable
/// referrers are noted as problems.
fn fetch_bundles(
    registry: &Registry,
    repository: &str,
    target: &Digest,
    set: &mut SignatureSet,
) -> Result<(), RegistryError> {
    let tag = format!("sha256-{}", target.hex());
    let (listing, source) =
        match registry.referrers(repository, target, bundle::BUNDLE_MEDIA_TYPE)? {
            Some(m) => (m, "the referrers API".to_string()),
            None => match registry.manifest(repository, &tag) {
                Ok(m) => (m, format!("tag {tag}")),
                Err(RegistryError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
    let candidates = match bundle::referrer_candidates(&listing.body) {
        Ok(c) => c,
        Err(e) => {
            set.problems
                .push(format!("referrers of {target} ({source}): {e}"));
            return Ok(());
        }
    };
    for digest in candidates {
        let manifest = match registry.manifest(repository, digest.as_str()) {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => {
                set.problems.push(format!(
                    "referrer {digest} of {target} ({source}) is missing"
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        let layer = match bundle::bundle_layer(&manifest.body) {
            Ok(Some((layer, _))) => layer,
            Ok(None) => continue,
            Err(e) => {
                set.problems
                    .push(format!("referrer {digest} of {target} ({source}): {e}"));
                continue;
            }
        };
        // blob_bytes checks the bundle against its digest. Anyone who can
        // push may list a referrer: one whose bundle is missing or too
        // large is a problem noted, not a failed pull.
        let body = match registry.blob_bytes(repository, &layer) {
            Ok(b) => b,
            Err(e @ (RegistryError::NotFound { .. } | RegistryError::TooLarge { .. })) => {
                set.problems
                    .push(format!("referrer {digest} of {target} ({source}): {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        set.bundles.push(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &body,
        ));
    }
    Ok(())
}
