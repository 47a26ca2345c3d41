//! The site's image policy and image signatures: which images may run.
//!
//! Not to be confused with [`crate::container::policy`], the *mount*
//! policy. This module decides whether an image is allowed at all, from a
//! containers-policy.json(5) file (the one podman and skopeo read) and
//! cosign's key-based signatures:
//!
//! - [`policy`]: the file, its scopes and `signedIdentity` rules;
//! - [`sigstore`]: cosign public keys, payloads, the ECDSA check;
//! - [`bundle`]: cosign 3's sigstore bundles (DSSE over in-toto);
//! - [`fetch`]: signatures from the registry (`sha256-HEX.sig` tags, OCI
//!   1.1 referrers or the `sha256-HEX` referrers tag);
//! - here: the decision ([`check`]), its one-line refusals, where
//!   signatures are kept in a store, and the node-side cache of decisions.
//!
//! The decision is made three times: by `shoal pull` before any layer is
//! fetched, at submission (a stored image the policy now refuses fails at
//! the prompt), and by root on every node before staging, against the
//! pinned digest and the signatures carried in the pin. Only the site's
//! file is read ([`site_policy`]); never the user's environment or
//! `~/.config/containers/policy.json`.
//!
//! What a check proves: that the digest is signed by a trusted key for an
//! acceptable identity. The squashfs file in a *user's* store is that
//! user's own conversion of the layers, which a node cannot recompute
//! without them; only images in the site store (`shoal pull --site`, root
//! owned) bind the bytes that run to the signature end to end.

pub mod bundle;
pub mod fetch;
pub mod policy;
pub mod sigstore;

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

pub use self::policy::{Named, Policy, PolicyError, Requirement, Scope, SignedIdentity};
pub use self::sigstore::{Payload, PublicKey, Signature, SignatureSet};
use super::manifest::Document;
use super::store::{Store, StoreRoot, StoredImage};
use crate::config::Config;
use crate::reference::{Digest, ImageRef, ImageSpec};

/// The policy file used when `policy.file` is unset and this file exists.
pub const DEFAULT_POLICY: &str = "/etc/containers/policy.json";

/// The site's policy: `policy.file`, else [`DEFAULT_POLICY`] when it
/// exists, else none (every image is accepted, as without a policy).
pub fn site_policy(config: &Config) -> Result<Option<Policy>, PolicyError> {
    match &config.policy.file {
        Some(p) => Policy::load(p).map(Some),
        None if Path::new(DEFAULT_POLICY).exists() => {
            Policy::load(Path::new(DEFAULT_POLICY)).map(Some)
        }
        None => Ok(None),
    }
}

/// What the image is, as far as the policy is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// A registry image as the user named it.
    Registry(&'a ImageRef),
    /// An imported image or a squashfs file: no registry identity.
    Local,
}

impl fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Registry(r) => r.fmt(f),
            Identity::Local => f.write_str("local image"),
        }
    }
}

/// How an image was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// By `insecureAcceptAnything` only.
    Unverified { scope: String },
    /// By signatures: the key of each `sigstoreSigned` requirement.
    Signed {
        scope: String,
        keys: Vec<String>,
        identity: String,
    },
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepted::Unverified { scope } => write!(
                f,
                "accepted without a signature check ({scope}: insecureAcceptAnything)"
            ),
            Accepted::Signed {
                scope,
                keys,
                identity,
            } => {
                write!(f, "signed by {} for {identity} ({scope})", keys.join(", "))
            }
        }
    }
}

/// Why the policy refused an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The scope's requirement is `reject`.
    Rejected,
    NoSignature,
    /// Signatures exist, none by a key the requirement trusts.
    UntrustedKey {
        keys: Vec<String>,
    },
    /// A trusted signature, for another image.
    OtherDigest {
        signed: Digest,
    },
    /// A trusted signature for this image, claiming another identity.
    Identity {
        claimed: String,
        rule: String,
    },
    /// A sigstore bundle by a trusted key for this image: it names no
    /// repository, which every signedIdentity rule compares.
    NoIdentity {
        rule: String,
    },
    /// A signature or signature manifest that cannot be read.
    Malformed(String),
    /// A signature is required but the image has no registry identity.
    Local,
}

impl Why {
    /// Which failure says the most when several signatures fail.
    fn rank(&self) -> u8 {
        match self {
            Why::Rejected | Why::Local => 9,
            Why::Identity { .. } | Why::NoIdentity { .. } => 5,
            Why::OtherDigest { .. } => 4,
            Why::UntrustedKey { .. } => 3,
            Why::Malformed(_) => 2,
            Why::NoSignature => 1,
        }
    }

    fn fix(&self, image: &str) -> String {
        match self {
            Why::Rejected => "use an image from a registry or repository the site allows, or ask the admins to allow it".into(),
            Why::NoSignature => format!(
                "sign it (`cosign sign --key KEY --new-bundle-format=false IMAGE@DIGEST`) and pull it again with `shoal pull {image}`, which fetches its signatures"
            ),
            Why::UntrustedKey { .. } => "sign it with a key the site policy trusts".into(),
            Why::OtherDigest { .. } => "the signature belongs to another image (or the tag moved after signing): sign this image's digest and pull again".into(),
            Why::Identity { .. } => "sign it in the repository it is pulled from, or ask the admins for a signedIdentity rule that accepts it (cosign signs the repository only: matchRepository)".into(),
            Why::NoIdentity { .. } => format!(
                "sign it in cosign's classic format, which names the repository (`cosign sign --key KEY --new-bundle-format=false --use-signing-config=false --tlog-upload=false IMAGE@DIGEST`), and pull it again with `shoal pull {image}`"
            ),
            Why::Malformed(_) => "sign the image again with cosign and pull it again".into(),
            Why::Local => "pull it from a registry the policy allows; a local image carries no registry signature".into(),
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Rejected => f.write_str("repository not allowed"),
            Why::NoSignature => f.write_str("no signature"),
            Why::UntrustedKey { keys } => write!(
                f,
                "not signed by a trusted key (trusted: {})",
                keys.join(", ")
            ),
            Why::OtherDigest { signed } => write!(f, "signature is for another digest ({signed})"),
            Why::Identity { claimed, rule } => {
                write!(
                    f,
                    "signature is for {claimed:?}, which signedIdentity {rule} does not accept"
                )
            }
            Why::NoIdentity { rule } => write!(
                f,
                "the only trusted signature is a sigstore bundle (cosign 3's default format), which names no repository, so signedIdentity {rule} cannot accept it"
            ),
            Why::Malformed(m) => write!(f, "malformed or unsupported signature ({m})"),
            Why::Local => f.write_str("a signature is required and a local image has none"),
        }
    }
}

/// A refusal, as one line: the image, the policy and scope, why, the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{image}: refused by the site image policy {} ({scope}): {why}; {}", .policy.display(), .why.fix(.image))]
pub struct Refusal {
    pub image: String,
    pub policy: PathBuf,
    pub scope: String,
    pub why: Why,
}

/// Whether a scope's requirements need signatures (a pull fetches them
/// only then).
pub fn needs_signatures(reqs: &[Requirement]) -> bool {
    reqs.iter()
        .any(|r| matches!(r, Requirement::SigstoreSigned { .. }))
}

/// The requirements for `identity` and the scope's name.
pub fn requirements<'p>(policy: &'p Policy, identity: Identity<'_>) -> (String, &'p [Requirement]) {
    match identity {
        Identity::Registry(r) => {
            let (scope, reqs) = policy.requirements_for(r);
            (scope.to_string(), reqs)
        }
        Identity::Local => (
            format!("{} (local image)", Scope::Default),
            policy.requirements_for_local(),
        ),
    }
}

/// Decides whether `image` (the platform manifest's digest) may run as
/// `identity` under `policy`, given the signatures known for it.
pub fn check(
    policy: &Policy,
    identity: Identity<'_>,
    image: &Digest,
    signatures: Option<&SignatureSet>,
) -> Result<Accepted, Refusal> {
    let (scope, reqs) = requirements(policy, identity);
    let refuse = |why: Why| Refusal {
        image: match identity {
            Identity::Registry(r) => r.to_string(),
            Identity::Local => format!("local image {image}"),
        },
        policy: policy.path.clone(),
        scope: scope.clone(),
        why,
    };
    let mut keys_used = Vec::new();
    let mut claimed = String::new();
    for req in reqs {
        match req {
            Requirement::InsecureAcceptAnything => {}
            Requirement::Reject => return Err(refuse(Why::Rejected)),
            Requirement::SigstoreSigned {
                keys,
                identity: rule,
            } => {
                let Identity::Registry(r) = identity else {
                    return Err(refuse(Why::Local));
                };
                let (key, who) =
                    check_signed(keys, rule, &Named::of(r), image, signatures).map_err(refuse)?;
                keys_used.push(key);
                claimed = who;
            }
        }
    }
    if keys_used.is_empty() {
        Ok(Accepted::Unverified { scope })
    } else {
        Ok(Accepted::Signed {
            scope,
            keys: keys_used,
            identity: claimed,
        })
    }
}

/// One `sigstoreSigned` requirement: some signature must be by one of
/// `keys`, for `image` (or for the index it came from), claiming an
/// identity `rule` accepts. Returns the key's source and the identity.
fn check_signed(
    keys: &[policy::TrustedKey],
    rule: &SignedIdentity,
    intended: &Named,
    image: &Digest,
    signatures: Option<&SignatureSet>,
) -> Result<(String, String), Why> {
    let mut worst = Why::NoSignature;
    let mut note = |why: Why| {
        if why.rank() > worst.rank() {
            worst = why;
        }
    };
    let Some(set) = signatures else {
        return Err(Why::NoSignature);
    };
    for p in &set.problems {
        note(Why::Malformed(p.clone()));
    }
    let covered = covered_digests(image, set);
    for sig in &set.signatures {
        let Some((payload, der)) = sig.decode() else {
            note(Why::Malformed("payload or signature is not base64".into()));
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.key.verify(&payload, &der)) else {
            note(Why::UntrustedKey {
                keys: keys.iter().map(|k| k.source.clone()).collect(),
            });
            continue;
        };
        let parsed = match Payload::parse(&payload) {
            Ok(p) => p,
            Err(e) => {
                note(Why::Malformed(e));
                continue;
            }
        };
        if !covered.contains(&parsed.digest) {
            note(Why::OtherDigest {
                signed: parsed.digest,
            });
            continue;
        }
        if !rule.matches(intended, &parsed.docker_reference) {
            note(Why::Identity {
                claimed: parsed.docker_reference,
                rule: rule.to_string(),
            });
            continue;
        }
        return Ok((key.source.clone(), parsed.docker_reference));
    }
    for b in &set.bundles {
        let bundle = match base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| "stored bundle is not base64".to_string())
            .and_then(|bytes| bundle::Bundle::parse(&bytes))
        {
            Ok(bundle) => bundle,
            Err(e) => {
                note(Why::Malformed(format!("sigstore bundle: {e}")));
                continue;
            }
        };
        if !keys.iter().any(|k| bundle.signed_by(&k.key)) {
            note(Why::UntrustedKey {
                keys: keys.iter().map(|k| k.source.clone()).collect(),
            });
            continue;
        }
        let subjects = match bundle.subjects() {
            Ok(s) => s,
            Err(e) => {
                note(Why::Malformed(format!("sigstore bundle: {e}")));
                continue;
            }
        };
        if !subjects.iter().any(|d| covered.contains(d)) {
            note(Why::OtherDigest {
                signed: subjects[0].clone(),
            });
            continue;
        }
        // Signed by a trusted key for this digest; what is missing is the
        // identity every rule compares (containers-policy.json(5): the
        // signature's claimed reference against the image's).
        note(Why::NoIdentity {
            rule: rule.to_string(),
        });
    }
    Err(worst)
}

/// The digests a signature may name for `image`: its own, and that of the
/// index it was chosen from when the stored index really is that digest
/// and lists the image.
fn covered_digests(image: &Digest, set: &SignatureSet) -> Vec<Digest> {
    let mut out = vec![image.clone()];
    if let Some(index) = &set.index {
        if let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&index.body) {
            let lists_image = match Document::parse(&body, None) {
                Ok(Document::Index(entries)) => entries.iter().any(|e| e.digest == image.as_str()),
                _ => false,
            };
            if super::registry::sha256_digest(&body) == index.digest && lists_image {
                out.push(index.digest.clone());
            }
        }
    }
    out
}

/// The registry identity a stored image is judged by: the reference the
/// user gave, or for `id:DIGEST` the reference it was pulled as. `None`
/// for imports and files (judged as local images).
pub fn stored_identity(spec: &ImageSpec, stored: &StoredImage) -> Option<ImageRef> {
    match spec {
        ImageSpec::Registry(r) => Some(r.clone()),
        ImageSpec::Id(_) => match stored.source_ref.parse::<ImageSpec>() {
            Ok(ImageSpec::Registry(r)) => Some(r),
            _ => None,
        },
        ImageSpec::File(_) => None,
    }
}

/// The signatures kept with a stored image, from the store it is in.
pub fn stored_signatures(store: &Store, stored: &StoredImage) -> Option<SignatureSet> {
    load_signatures(store.root(stored.scope).ok()?, &stored.digest)
}

/// The policy's decision on a stored image, offline: `Ok(None)` when the
/// site has no policy.
pub fn check_stored(
    config: &Config,
    store: &Store,
    spec: &ImageSpec,
    stored: &StoredImage,
) -> Result<Option<Accepted>, String> {
    let Some(policy) = site_policy(config).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let identity = stored_identity(spec, stored);
    let id = identity
        .as_ref()
        .map_or(Identity::Local, Identity::Registry);
    check(
        &policy,
        id,
        &stored.digest,
        stored_signatures(store, stored).as_ref(),
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

// --- signatures in a store --------------------------------------------------

/// `ROOT/signatures/HEX.json`: the signatures fetched with image HEX.
pub fn signatures_path(root: &StoreRoot, image: &Digest) -> PathBuf {
    root.dir()
        .join("signatures")
        .join(format!("{}.json", image.hex()))
}

/// The signatures stored with `image`, if any were fetched.
pub fn load_signatures(root: &StoreRoot, image: &Digest) -> Option<SignatureSet> {
    let bytes = fs::read(signatures_path(root, image)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Stores `set` with `image`, merged with what was there (by rename): the
/// same image pulled from two repositories keeps both repositories'
/// signatures, each still checked against the identity it claims.
pub fn save_signatures(
    root: &StoreRoot,
    image: &Digest,
    set: &SignatureSet,
) -> std::io::Result<()> {
    let mut set = set.clone();
    if let Some(old) = load_signatures(root, image) {
        // The old set's problems are not kept: this fetch saw anew.
        set.merge(SignatureSet { problems: Vec::new(), ..old });
    }
    let set = &set;
    let path = signatures_path(root, image);
    let dir = path.parent().expect("has a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.new", super::store::unique_name()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(set).expect("serializes"))?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

/// Removes the stored signatures of images no longer in `root`.
pub fn gc_signatures(root: &StoreRoot) {
    let Ok(entries) = fs::read_dir(root.dir().join("signatures")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".json") else {
            continue;
        };
        let gone = match format!("sha256:{hex}").parse::<Digest>() {
            Ok(d) => matches!(root.image(&d), Ok(None)),
            Err(_) => false,
        };
        if gone {
            let _ = fs::remove_file(e.path());
        }
    }
}

// --- decisions cached on a node ---------------------------------------------

/// Accepted decisions, one empty file per (policy, identity, digest), in a
/// root-owned directory of the node cache: the tasks of a 1,000-task step
/// verify once per node. A changed policy file or key is another
/// fingerprint, so nothing cached under the old policy counts. Refusals
/// are never cached.
#[derive(Debug, Clone)]
pub struct DecisionCache {
    dir: PathBuf,
}

impl DecisionCache {
    pub fn new(dir: PathBuf) -> DecisionCache {
        DecisionCache { dir }
    }

    fn entry(&self, policy: &Policy, identity: &str, image: &Digest) -> PathBuf {
        let mut h = Sha256::new();
        for part in [policy.fingerprint.as_str(), identity, image.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        self.dir.join(format!("{:x}", h.finalize()))
    }

    /// [`check`], answered from the cache when this decision was made
    /// before. Returns whether it came from the cache.
    pub fn check(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        image: &Digest,
        signatures: Option<&SignatureSet>,
    ) -> Result<bool, Refusal> {
        let entry = self.entry(policy, &identity.to_string(), image);
        if entry.exists() {
            return Ok(true);
        }
        check(policy, identity, image, signatures)?;
        if fs::create_dir_all(&self.dir).is_ok() {
            let _ = fs::File::create(&entry);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests;
