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
//! statement) attached as a referrer (or, without a referrers API, listed
//! in an index under the tag `sha256-HEX`), signs the digest alone and
//! names no repository, so no `signedIdentity` rule can accept it. Such a
//! bundle is noticed and reported as the reason, never counted as a
//! signature.

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
        if set.signatures.is_empty() {
            note_bundle(registry, repository, target, &mut set)?;
        }
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

/// Notices a cosign 3 sigstore bundle listed under the referrers tag
/// schema (`sha256-HEX`, an index), to say why it does not count.
fn note_bundle(
    registry: &Registry,
    repository: &str,
    target: &Digest,
    set: &mut SignatureSet,
) -> Result<(), RegistryError> {
    let tag = format!("sha256-{}", target.hex());
    let index = match registry.manifest(repository, &tag) {
        Ok(m) => m,
        Err(RegistryError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The index lists artifact manifests; the bundle's media type is in
    // theirs.
    let listed: Vec<String> = serde_json::from_slice::<serde_json::Value>(&index.body)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("digest").and_then(|d| d.as_str()).map(str::to_string))
        .take(8)
        .collect();
    let mut bundle = false;
    for digest in listed {
        match registry.manifest(repository, &digest) {
            Ok(m)
                if String::from_utf8_lossy(&m.body)
                    .contains("application/vnd.dev.sigstore.bundle") =>
            {
                bundle = true
            }
            Ok(_) | Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if bundle {
        set.problems.push(format!(
            "{tag} holds a sigstore bundle (cosign 3's default format), which signs the digest without naming a repository, so no signedIdentity rule can accept it; sign with `cosign sign --new-bundle-format=false --use-signing-config=false`"
        ));
    }
    Ok(())
}
