//! containers-policy.json(5), the file podman and skopeo read, parsed as
//! strictly as they do (unknown fields are errors), with the parts Shoal
//! enforces: the global `default`, the `docker` transport's scopes, and
//! the requirements `insecureAcceptAnything`, `reject` and `sigstoreSigned`
//! with cosign public keys and every `signedIdentity` rule.
//!
//! Anything Shoal cannot check (GPG `signedBy`, Fulcio certificates, Rekor
//! keys, PKI) is refused by name when the file is read, never skipped: a
//! policy that is accepted here means the same thing to Shoal as to podman.
//! Other transports' scopes (`docker-daemon`, `dir`, ...) are validated and
//! otherwise left to podman; Shoal's local images (imports, squashfs files)
//! get the global `default`.
//!
//! Pure logic over the file's bytes and its key files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::sigstore::PublicKey;
use crate::reference::{Digest, ImageRef, ImageSpec};

/// A policy file that cannot be used; the message names the file, the
/// place in it and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {at}{message}")]
pub struct PolicyError {
    pub path: PathBuf,
    /// Where in the file (`transports.docker."host/repo"[0]: `), or empty.
    pub at: String,
    pub message: String,
}

/// One parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    default: Vec<Requirement>,
    docker: BTreeMap<String, Vec<Requirement>>,
    /// Transports other than `docker` the file configures (podman's).
    pub other_transports: Vec<String>,
    /// sha256 of the file and of every key file it names: which policy a
    /// cached verification was made under.
    pub fingerprint: String,
}

/// One requirement of a scope; all of a scope's must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    SigstoreSigned {
        keys: Vec<TrustedKey>,
        identity: SignedIdentity,
    },
}

/// A cosign public key and where the policy named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key file, or `keyData`.
    pub source: String,
    pub key: PublicKey,
}

/// `signedIdentity`: which identity a signature must claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference(Named),
    ExactRepository(Named),
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

impl fmt::Display for SignedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignedIdentity::MatchExact => f.write_str("matchExact"),
            SignedIdentity::MatchRepoDigestOrExact => f.write_str("matchRepoDigestOrExact"),
            SignedIdentity::MatchRepository => f.write_str("matchRepository"),
            SignedIdentity::ExactReference(r) => write!(f, "exactReference {r}"),
            SignedIdentity::ExactRepository(r) => write!(f, "exactRepository {}", r.name),
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                write!(f, "remapIdentity {prefix} -> {signed_prefix}")
            }
        }
    }
}

/// Which part of the policy applies to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A `docker` transport scope (`""` is the transport's default).
    Docker(String),
    /// The global `default`.
    Default,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Docker(s) => write!(f, "scope docker {s:?}"),
            Scope::Default => f.write_str("the default scope"),
        }
    }
}

/// A docker reference as a signature or the policy writes it, with Docker's
/// defaults applied (`busybox` is `docker.io/library/busybox`) but no
/// implicit tag: `name` alone is a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// `registry/repository`.
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Named {
    /// Parses `s`; `None` when it is not a docker reference.
    pub fn parse(s: &str) -> Option<Named> {
        let (without_digest, has_digest) = match s.split_once('@') {
            Some((n, _)) => (n, true),
            None => (s, false),
        };
        let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
        let has_tag = last.contains(':');
        let r = match s.parse::<ImageSpec>().ok()? {
            ImageSpec::Registry(r) => r,
            _ => return None,
        };
        Some(Named {
            name: full_name(&r),
            tag: if has_tag {
                r.tag().map(str::to_string)
            } else {
                None
            },
            digest: if has_digest {
                r.digest().cloned()
            } else {
                None
            },
        })
    }

    /// The identity of an image reference: a digest, when it has one, names
    /// it and the tag is dropped (a tag next to a digest is only a label).
    pub fn of(r: &ImageRef) -> Named {
        Named {
            name: full_name(r),
            tag: if r.digest().is_some() {
                None
            } else {
                r.tag().map(str::to_string)
            },
            digest: r.digest().cloned(),
        }
    }

    fn name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }
}

/// `registry/repository` in Docker's fully expanded form: an official
/// Docker Hub image is `docker.io/library/NAME` however it was written.
fn full_name(r: &ImageRef) -> String {
    if r.registry() == "docker.io" && !r.repository().contains('/') {
        format!("docker.io/library/{}", r.repository())
    } else {
        format!("{}/{}", r.registry(), r.repository())
    }
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl SignedIdentity {
    /// Whether a signature claiming `signed` (its `docker-reference`) is
    /// acceptable for the image the user named, `intended`; the rules of
    /// containers-policy.json(5).
    pub fn matches(&self, intended: &Named, signed: &str) -> bool {
        let Some(signed) = Named::parse(signed) else {
            return false;
        };
        match self {
            SignedIdentity::MatchExact => {
                !intended.name_only()
                    && !signed.name_only()
                    && signed.to_string() == intended.to_string()
            }
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(intended, &signed),
            SignedIdentity::MatchRepository => signed.name == intended.name,
            SignedIdentity::ExactReference(r) => {
                !signed.name_only() && signed.to_string() == r.to_string()
            }
            SignedIdentity::ExactRepository(r) => signed.name == r.name,
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let remapped = match intended.name.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        let s = intended
                            .to_string()
                            .replacen(prefix.as_str(), signed_prefix, 1);
                        match Named::parse(&s) {
                            Some(n) => n,
                            None => return false,
                        }
                    }
                    _ => intended.clone(),
                };
                repo_digest_or_exact(&remapped, &signed)
            }
        }
    }
}

/// `matchRepoDigestOrExact`: a tagged image needs a signature for exactly
/// that tag; an image named by digest needs one for its repository (the
/// digest itself is checked against the signed digest separately).
fn repo_digest_or_exact(intended: &Named, signed: &Named) -> bool {
    if signed.name_only() {
        return false;
    }
    if intended.tag.is_some() {
        signed.to_string() == intended.to_string()
    } else if intended.digest.is_some() {
        signed.name == intended.name
    } else {
        false
    }
}

/// Requirement types Shoal knows but does not implement, with the reason
/// given when a policy uses them.
const UNSUPPORTED_TYPES: &[(&str, &str)] = &[
    ("signedBy", "GPG simple signing (`signedBy`) is not supported by Shoal; sign with cosign and use `sigstoreSigned` with `keyPath`"),
    ("signedBaseLayer", "`signedBaseLayer` is not supported by Shoal"),
];

/// sigstoreSigned fields Shoal refuses (keyless signing and transparency
/// logs need Fulcio and Rekor, which an offline cluster cannot reach).
const UNSUPPORTED_SIGSTORE_FIELDS: &[&str] = &[
    "fulcio",
    "pki",
    "rekorPublicKeyPath",
    "rekorPublicKeyPaths",
    "rekorPublicKeyData",
    "rekorPublicKeyDatas",
];

impl Policy {
    /// Reads and checks the policy at `path`, with its key files.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|e| PolicyError {
            path: path.to_path_buf(),
            at: String::new(),
            message: format!(
                "cannot read the image policy ({e}); fix `policy.file` in the Shoal config"
            ),
        })?;
        Policy::parse(&bytes, path)
    }

    /// Parses policy bytes; `path` names the file in errors and anchors
    /// nothing (key paths must be absolute).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
        let mut p = Parser {
            path,
            fingerprint: Sha256::new(),
        };
        p.fingerprint.update(bytes);
        let top: Value = serde_json::from_slice(bytes)
            .map_err(|e| p.err("", format!("not valid JSON ({e})")))?;
        let top = p.object(&top, "")?;
        p.only_fields(top, "", &["default", "transports"])?;
        let default = match top.get("default") {
            Some(v) => p.requirements(v, "default")?,
            None => return Err(p.err("", "no `default` requirements (the file format requires them; write `\"default\": [{\"type\": \"reject\"}]`)".into())),
        };
        let mut docker = BTreeMap::new();
        let mut other_transports = Vec::new();
        if let Some(t) = top.get("transports") {
            for (transport, scopes) in p.object(t, "transports")? {
                let at = format!("transports.{transport}");
                let scopes = p.object(scopes, &at)?;
                for (scope, reqs) in scopes {
                    let at = format!("{at}.{scope:?}");
                    let reqs = p.requirements(reqs, &at)?;
                    if transport == "docker" {
                        check_docker_scope(scope).map_err(|m| p.err(&at, m))?;
                        docker.insert(scope.clone(), reqs);
                    }
                }
                if transport != "docker" {
                    other_transports.push(transport.clone());
                }
            }
        }
        Ok(Policy {
            path: path.to_path_buf(),
            default,
            docker,
            other_transports,
            fingerprint: format!("{:x}", p.fingerprint.finalize()),
        })
    }

    /// The requirements for a registry image, most specific scope first as
    /// containers/image looks them up: the full reference, the repository,
    /// each parent namespace, the registry, `*.` wildcards of the registry's
    /// domain, the transport default `""`, then the global default.
    pub fn requirements_for(&self, r: &ImageRef) -> (Scope, &[Requirement]) {
        for scope in scope_candidates(r) {
            if let Some(reqs) = self.docker.get(&scope) {
                return (Scope::Docker(scope), reqs);
            }
        }
        (Scope::Default, &self.default)
    }

    /// The requirements for an image with no registry identity (imported,
    /// or a squashfs file): the global default.
    pub fn requirements_for_local(&self) -> &[Requirement] {
        &self.default
    }

    /// Every docker scope the file names, for `shoal config check`.
    pub fn docker_scopes(&self) -> impl Iterator<Item = (&str, &[Requirement])> {
        self.docker.iter().map(|(s, r)| (s.as_str(), r.as_slice()))
    }

    pub fn default_requirements(&self) -> &[Requirement] {
        &self.default
    }
}

/// The scopes searched for `r`, in order (without the global default).
pub fn scope_candidates(r: &ImageRef) -> Vec<String> {
    let named = Named::of(r);
    let mut out = vec![named.to_string()];
    let mut name = named.name.as_str();
    loop {
        out.push(name.to_string());
        match name.rfind('/') {
            Some(i) => name = &name[..i],
            None => break,
        }
    }
    // `name` is now the registry; wildcards apply to its host, port dropped.
    let mut host = name.split(':').next().unwrap_or(name);
    while let Some(i) = host.find('.') {
        host = &host[i + 1..];
        out.push(format!("*.{host}"));
    }
    out.push(String::new());
    out
}

/// A docker scope must be `""`, `*.DOMAIN`, or a fully expanded reference
/// prefix (`host[:port][/namespace...][/repo[:tag|@digest]]`).
fn check_docker_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        let ok = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "wildcard scope {scope:?} must be `*.` followed by a domain, like `*.example.com`"
            ))
        };
    }
    let host = scope.split('/').next().unwrap_or(scope);
    let parsed = if scope.contains('/') {
        Named::parse(scope)
    } else {
        Named::parse(&format!("{scope}/x"))
    };
    match parsed {
        Some(n) if host.contains(['.', ':']) || host == "localhost" => {
            let expanded = if scope.contains('/') { n.to_string() } else { host.to_string() };
            if expanded == scope {
                Ok(())
            } else {
                Err(format!("scope {scope:?} is not in fully expanded form (write {expanded:?})"))
            }
        }
        _ => Err(format!(
            "scope {scope:?} is not a registry host, repository or image reference in fully expanded form (e.g. `docker.io/library/busybox`, `registry.example.org:5000/team`, `*.example.org`)"
        )),
    }
}

struct Parser<'a> {
    path: &'a Path,
    fingerprint: Sha256,
}

impl Parser<'_> {
    fn err(&self, at: &str, message: String) -> PolicyError {
        PolicyError {
            path: self.path.to_path_buf(),
            at: if at.is_empty() {
                String::new()
            } else {
                format!("{at}: ")
            },
            message,
        }
    }

    fn object<'v>(&self, v: &'v Value, at: &str) -> Result<&'v Map<String, Value>, PolicyError> {
        v.as_object()
            .ok_or_else(|| self.err(at, format!("expected a JSON object, found {}", kind(v))))
    }

    fn string<'v>(
        &self,
        o: &'v Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Result<&'v str, PolicyError> {
        match o.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.err(at, format!("`{key}` must be a string, found {}", kind(v)))),
            None => Err(self.err(at, format!("`{key}` is missing"))),
        }
    }

    fn only_fields(
        &self,
        o: &Map<String, Value>,
        at: &str,
        allowed: &[&str],
    ) -> Result<(), PolicyError> {
        match o.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.err(
                at,
                format!("unknown field `{k}` (allowed here: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn requirements(&mut self, v: &Value, at: &str) -> Result<Vec<Requirement>, PolicyError> {
        let list = v.as_array().ok_or_else(|| {
            self.err(
                at,
                format!("expected a list of requirements, found {}", kind(v)),
            )
        })?;
        if list.is_empty() {
            return Err(self.err(at, "the list of requirements is empty (write `[{\"type\": \"reject\"}]` or `[{\"type\": \"insecureAcceptAnything\"}]`)".into()));
        }
        list.iter()
            .enumerate()
            .map(|(i, r)| self.requirement(r, &format!("{at}[{i}]")))
            .collect()
    }

    fn requirement(&mut self, v: &Value, at: &str) -> Result<Requirement, PolicyError> {
        let o = self.object(v, at)?;
        let ty = self.string(o, "type", at)?;
        if let Some((_, why)) = UNSUPPORTED_TYPES.iter().find(|(t, _)| *t == ty) {
            return Err(self.err(at, format!("requirement type {ty:?}: {why}")));
        }
        match ty {
            "insecureAcceptAnything" => {
                self.only_fields(o, at, &["type"])?;
                Ok(Requirement::InsecureAcceptAnything)
            }
            "reject" => {
                self.only_fields(o, at, &["type"])?;
                Ok(Requirement::Reject)
            }
            "sigstoreSigned" => self.sigstore(o, at),
            other => Err(self.err(
                at,
                format!("unknown requirement type {other:?} (Shoal supports insecureAcceptAnything, reject and sigstoreSigned)"),
            )),
        }
    }

    fn sigstore(&mut self, o: &Map<String, Value>, at: &str) -> Result<Requirement, PolicyError> {
        if let Some(f) = UNSUPPORTED_SIGSTORE_FIELDS
            .iter()
            .find(|f| o.contains_key(**f))
        {
            return Err(self.err(
                at,
                format!("sigstoreSigned with `{f}`: Fulcio certificates, PKI and Rekor are not supported by Shoal (key-based cosign signatures only: `keyPath`, `keyPaths`, `keyData` or `keyDatas`, signed with `--tlog-upload=false`)"),
            ));
        }
        self.only_fields(
            o,
            at,
            &[
                "type",
                "keyPath",
                "keyPaths",
                "keyData",
                "keyDatas",
                "signedIdentity",
            ],
        )?;
        let given: Vec<&str> = ["keyPath", "keyPaths", "keyData", "keyDatas"]
            .into_iter()
            .filter(|k| o.contains_key(*k))
            .collect();
        if given.len() != 1 {
            return Err(self.err(
                at,
                format!("sigstoreSigned needs exactly one of keyPath, keyPaths, keyData, keyDatas (found {})", if given.is_empty() { "none".to_string() } else { given.join(", ") }),
            ));
        }
        let strings = |k: &str| -> Result<Vec<String>, PolicyError> {
            match &o[k] {
                Value::String(s) if k == "keyPath" || k == "keyData" => Ok(vec![s.clone()]),
                Value::Array(a) if (k == "keyPaths" || k == "keyDatas") && !a.is_empty() => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| self.err(at, format!("`{k}` must list strings")))
                    })
                    .collect(),
                _ => Err(self.err(
                    at,
                    format!(
                        "`{k}` must be {}",
                        if k.ends_with('s') {
                            "a non-empty list of strings"
                        } else {
                            "a string"
                        }
                    ),
                )),
            }
        };
        let mut keys = Vec::new();
        let field = given[0];
        for entry in strings(field)? {
            let (source, pem) = if field.starts_with("keyPath") {
                if !entry.starts_with('/') {
                    return Err(self.err(at, format!("{field} {entry:?} is not an absolute path")));
                }
                let pem = std::fs::read(&entry).map_err(|e| {
                    self.err(at, format!("cannot read the public key {entry} ({e})"))
                })?;
                (entry.clone(), pem)
            } else {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(entry.trim())
                    .map_err(|e| self.err(at, format!("{field} is not base64 ({e}); write the PEM public key base64-encoded")))?;
                ("keyData".to_string(), pem)
            };
            self.fingerprint.update(&pem);
            let key =
                PublicKey::from_pem(&pem).map_err(|e| self.err(at, format!("{source}: {e}")))?;
            keys.push(TrustedKey { source, key });
        }
        let identity = match o.get("signedIdentity") {
            None => SignedIdentity::MatchRepoDigestOrExact,
            Some(v) => self.identity(v, &format!("{at}.signedIdentity"))?,
        };
        Ok(Requirement::SigstoreSigned { keys, identity })
    }

    fn identity(&self, v: &Value, at: &str) -> Result<SignedIdentity, PolicyError> {
        let o = self.object(v, at)?;
        let ty = self.string(o, "type", at)?;
        let named = |key: &str, need_tag: bool| -> Result<Named, PolicyError> {
            let s = self.string(o, key, at)?;
            match Named::parse(s) {
                Some(n) if need_tag && n.name_only() => {
                    Err(self.err(at, format!("`{key}` {s:?} must name a tag or digest")))
                }
                Some(n) if !need_tag && !n.name_only() => Err(self.err(
                    at,
                    format!("`{key}` {s:?} must be a repository without tag or digest"),
                )),
                Some(n) => Ok(n),
                None => Err(self.err(at, format!("`{key}` {s:?} is not a docker reference"))),
            }
        };
        let prefix = |key: &str| -> Result<String, PolicyError> {
            let s = self.string(o, key, at)?;
            let ok = match Named::parse(
                if s.contains('/') {
                    s.to_string()
                } else {
                    format!("{s}/x")
                }
                .as_str(),
            ) {
                Some(n) if s.contains('/') => n.name_only() && n.name == s,
                Some(_) => s.contains(['.', ':']) || s == "localhost",
                None => false,
            };
            if ok {
                Ok(s.to_string())
            } else {
                Err(self.err(at, format!("`{key}` {s:?} must be a host[:port], namespace or repository in fully expanded form (no tag or digest)")))
            }
        };
        let id = match ty {
            "matchExact" => SignedIdentity::MatchExact,
            "matchRepoDigestOrExact" => SignedIdentity::MatchRepoDigestOrExact,
            "matchRepository" => SignedIdentity::MatchRepository,
            "exactReference" => {
                self.only_fields(o, at, &["type", "dockerReference"])?;
                SignedIdentity::ExactReference(named("dockerReference", true)?)
            }
            "exactRepository" => {
                self.only_fields(o, at, &["type", "dockerRepository"])?;
                SignedIdentity::ExactRepository(named("dockerRepository", false)?)
            }
            "remapIdentity" => {
                self.only_fields(o, at, &["type", "prefix", "signedPrefix"])?;
                SignedIdentity::RemapIdentity { prefix: prefix("prefix")?, signed_prefix: prefix("signedPrefix")? }
            }
            other => {
                return Err(self.err(at, format!("unknown signedIdentity type {other:?} (matchExact, matchRepoDigestOrExact, matchRepository, exactReference, exactRepository, remapIdentity)")))
            }
        };
        if matches!(
            ty,
            "matchExact" | "matchRepoDigestOrExact" | "matchRepository"
        ) {
            self.only_fields(o, at, &["type"])?;
        }
        Ok(id)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
