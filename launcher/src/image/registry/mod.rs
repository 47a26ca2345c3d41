//! A client of the OCI distribution API: for pulls, manifests (GET and
//! HEAD) and blobs streamed to files while they are hashed; for `shoal
//! index`, manifest PUT and blob mount or copy ([`push`]); anonymous,
//! Bearer-token and basic auth, TLS checked by default, mirrors (pulls
//! only), and retries with backoff on 5xx, 429 and dropped connections
//! ([`request`]).
//!
//! Blocking on purpose: callers run parallel downloads on plain threads, and
//! the SPANK plugin links this crate without an async runtime.
//!
//! It never keeps a blob in memory (only manifests and configs, capped), never
//! trusts a blob it has not hashed, and never sends credentials to a host
//! other than the one they were saved for (redirects drop them).

pub mod auth;
pub mod compose;
mod push;
mod request;
mod tls;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use ureq::Agent;

use self::auth::Credentials;
use request::Method;
use crate::config::RegistryConfig;
use crate::reference::Digest;

/// Largest manifest or config blob read into memory.
const MAX_DOCUMENT: u64 = 16 << 20;

/// Why talking to a registry failed. Each message names the registry or
/// the image and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: not found on {registry} (unknown repository, tag or digest); check the name and tag")]
    NotFound { registry: String, reference: String },
    #[error("{registry}: authentication failed{}; log in with `podman login {registry}` or `docker login {registry}` (Shoal reads REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json and ~/.docker/config.json)", creds_note(.credentials))]
    Unauthorized {
        registry: String,
        credentials: Option<PathBuf>,
    },
    #[error("{registry}: access to {repository} denied (HTTP 403); check that your login may {action} it")]
    Denied {
        registry: String,
        repository: String,
        action: &'static str,
    },
    #[error("{registry}: the registry refused {what} (HTTP {status}{}{detail})", if .detail.is_empty() { "" } else { ": " })]
    Rejected {
        registry: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{registry}: the registry sent an upload to another host ({location}); Shoal sends no login or data there: push to that host directly")]
    ForeignLocation { registry: String, location: String },
    #[error("{registry}: {what} was stored as {got}, but the bytes sent hash to {sent}; the registry changed them: tell its admin")]
    PushedDigest {
        registry: String,
        what: String,
        sent: Digest,
        got: String,
    },
    #[error("{registry}: TLS certificate check failed ({detail}); give the registry's CA with `ca_file` in [registries.\"{registry}\"] of the Shoal config or SSL_CERT_FILE, or use --tls-verify=false for a lab registry")]
    Tls { registry: String, detail: String },
    #[error("{registry}: registry unreachable ({detail}) after {tries} tries; check the address and that the registry is up")]
    Unreachable {
        registry: String,
        detail: String,
        tries: u32,
    },
    #[error("{registry}: registry answered HTTP {status} to {what} after {tries} tries; try again later or tell its admin")]
    Server {
        registry: String,
        status: u16,
        what: String,
        tries: u32,
    },
    #[error("{registry}: blob {digest} is corrupt: its content hashes to {actual}; nothing was stored, pull again or tell the registry's admin")]
    DigestMismatch {
        registry: String,
        digest: Digest,
        actual: String,
    },
    #[error("{registry}: blob {digest} is {actual} bytes, the manifest says {expected}; nothing was stored, pull again or tell the registry's admin")]
    SizeMismatch {
        registry: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{registry}: {what} is larger than {MAX_DOCUMENT} bytes; refusing it")]
    TooLarge { registry: String, what: String },
    #[error("cannot read CA certificates {path}: {detail}; fix `ca_file` or SSL_CERT_FILE")]
    CaFile { path: PathBuf, detail: String },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

fn creds_note(c: &Option<PathBuf>) -> String {
    match c {
        Some(p) => format!(" with the login saved in {}", p.display()),
        None => " (no saved login found)".to_string(),
    }
}

impl RegistryError {
    /// True for the errors worth trying the next mirror for.
    fn is_endpoint_specific(&self) -> bool {
        !matches!(
            self,
            RegistryError::Write { .. } | RegistryError::CaFile { .. }
        )
    }
}

/// Knobs the caller sets per call.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `Some(false)`: `--tls-verify=false` for this call, whatever the config.
    pub tls_verify: Option<bool>,
    /// Tries per request (first one included) on 5xx, 429 and dropped
    /// connections.
    pub tries: u32,
    /// First backoff; doubles each try.
    pub backoff: Duration,
    /// Where saved logins are looked up (see [`auth::auth_files`]).
    pub auth_files: Vec<PathBuf>,
    /// The system CA bundle, or `SSL_CERT_FILE`; `None`: built-in roots.
    pub ca_bundle: Option<PathBuf>,
}

impl ClientOptions {
    /// Options from the process environment (`SSL_CERT_FILE`, auth files).
    pub fn from_env() -> ClientOptions {
        let env = |k: &str| std::env::var(k).ok();
        let ca_bundle = env("SSL_CERT_FILE")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/cert.pem",
                ]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
            });
        ClientOptions {
            tls_verify: None,
            tries: 5,
            backoff: Duration::from_millis(250),
            auth_files: auth::auth_files(&env),
            ca_bundle,
        }
    }
}

/// One endpoint (the registry or a mirror) with its own auth state.
struct Endpoint {
    /// `host[:port]` as the user wrote it (for messages and credentials).
    name: String,
    /// `https://host[:port]`, Docker Hub's API host substituted.
    base: String,
    creds: Option<Credentials>,
    /// `Authorization` values, per repository (tokens are scoped).
    tokens: Mutex<HashMap<String, String>>,
    /// A mirror gets one try per request (the next endpoint is the retry),
    /// and once unreachable is skipped for the rest of the pull.
    mirror: bool,
    dead: std::sync::atomic::AtomicBool,
}

/// A connection to one registry and its mirrors.
pub struct Registry {
    name: String,
    endpoints: Vec<Endpoint>,
    agent: Agent,
    tries: u32,
    backoff: Duration,
    /// `SHOAL_DEBUG_HTTP` set: each request is printed to stderr (method and
    /// URL only, never a header), to see what a pull costs.
    trace: bool,
}

/// A fetched manifest: its digest (computed from the bytes) and the body.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

impl Registry {
    /// A client for `registry` (`host[:port]`, `docker.io` for Docker Hub).
    pub fn new(
        registry: &str,
        cfg: &RegistryConfig,
        opts: &ClientOptions,
    ) -> Result<Registry, RegistryError> {
        let verify = opts.tls_verify.unwrap_or(true) && cfg.tls_verify;
        let tls = tls::client_config(
            registry,
            opts.ca_bundle.as_deref(),
            cfg.ca_file.as_deref(),
            verify,
        )?;
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls)
            .https_only(true)
            .timeout_connect(Duration::from_secs(15))
            // A stalled transfer is a dropped connection: retried.
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build();
        let endpoint = |name: &str, mirror: bool| {
            let host = if name == "docker.io" {
                "registry-1.docker.io"
            } else {
                name
            };
            Endpoint {
                name: name.to_string(),
                base: format!("https://{host}"),
                creds: auth::find_credentials(name, &opts.auth_files),
                tokens: Mutex::new(HashMap::new()),
                mirror,
                dead: std::sync::atomic::AtomicBool::new(false),
            }
        };
        let mut endpoints: Vec<Endpoint> = cfg.mirrors.iter().map(|m| endpoint(m, true)).collect();
        endpoints.push(endpoint(registry, false));
        Ok(Registry {
            name: registry.to_string(),
            endpoints,
            agent,
            tries: opts.tries.max(1),
            backoff: opts.backoff,
            trace: std::env::var_os("SHOAL_DEBUG_HTTP").is_some_and(|v| !v.is_empty()),
        })
    }

    /// The digest `reference` (tag or digest) points to, from a HEAD request
    /// (one round trip on an anonymous registry). `None` when the registry
    /// does not send `Docker-Content-Digest`.
    pub fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        self.on_endpoints(|ep| {
            let path = format!("/v2/{repository}/manifests/{reference}");
            let resp = self.send(
                ep,
                Method::Head,
                &path,
                repository,
                &format!("{repository}:{reference}"),
            )?;
            Ok(resp
                .header("docker-content-digest")
                .and_then(|v| v.trim().parse().ok()))
        })
    }

    /// GETs a manifest by tag or digest. A digest reference is checked
    /// against the bytes.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        self.on_endpoints(|ep| self.manifest_on(ep, repository, reference))
    }

    /// The OCI 1.1 referrers of `digest` of artifact type `artifact_type`
    /// (`GET /v2/NAME/referrers/DIGEST?artifactType=...`), an image index;
    /// `None` when the registry has no referrers API (it answers 404, as
    /// the distribution spec has registries without one do). A registry
    /// may ignore the filter: callers check each entry's type.
    pub fn referrers(
        &self,
        repository: &str,
        digest: &Digest,
        artifact_type: &str,
    ) -> Result<Option<FetchedManifest>, RegistryError> {
        let path = format!(
            "/v2/{repository}/referrers/{digest}?artifactType={}",
            auth::query_escape(artifact_type)
        );
        let what = format!("referrers of {repository}@{digest}");
        let got = self.on_endpoints(|ep| {
            let resp = self.send(ep, Method::Get, &path, repository, &what)?;
            let content_type = resp.header("content-type").map(str::to_string);
            let body = read_capped(resp, &ep.name, &what)?;
            Ok(FetchedManifest {
                digest: sha256_digest(&body),
                body,
                content_type,
            })
        });
        match got {
            Ok(m) => Ok(Some(m)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn manifest_on(
        &self,
        ep: &Endpoint,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let what = format!("{repository}:{reference}");
        let resp = self.send(ep, Method::Get, &path, repository, &what)?;
        let content_type = resp.header("content-type").map(str::to_string);
        let body = read_capped(resp, &ep.name, &what)?;
        let digest = sha256_digest(&body);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: ep.name.clone(),
                    digest: want,
                    actual: digest.to_string(),
                });
            }
        }
        Ok(FetchedManifest {
            digest,
            body,
            content_type,
        })
    }

    /// A small blob (the image config) in memory, checked against `digest`.
    pub fn blob_bytes(&self, repository: &str, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
        self.on_endpoints(|ep| {
            let path = format!("/v2/{repository}/blobs/{digest}");
            let resp = self.send(ep, Method::Get, &path, repository, digest.as_str())?;
            let body = read_capped(resp, &ep.name, digest.as_str())?;
            let actual = sha256_digest(&body);
            if &actual != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: ep.name.clone(),
                    digest: digest.clone(),
                    actual: actual.to_string(),
                });
            }
            Ok(body)
        })
    }

    /// Streams a blob into `dest` (created or truncated), hashing as it goes;
    /// `progress` gets byte counts as they arrive (negative when a dropped
    /// transfer restarts). On a digest or size mismatch `dest` is removed.
    pub fn blob_to_file(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(i64) + Sync),
    ) -> Result<(), RegistryError> {
        let result = self.on_endpoints(|ep| {
            let path = format!("/v2/{repository}/blobs/{digest}");
            let mut attempt = 0;
            loop {
                attempt += 1;
                let resp = self.send(ep, Method::Get, &path, repository, digest.as_str())?;
                let mut file = File::create(dest).map_err(|source| RegistryError::Write {
                    path: dest.into(),
                    error: source,
                })?;
                match copy_hashing(resp.into_reader(), &mut file, progress) {
                    Ok((n, actual)) => {
                        if n != size {
                            return Err(RegistryError::SizeMismatch {
                                registry: ep.name.clone(),
                                digest: digest.clone(),
                                expected: size,
                                actual: n,
                            });
                        }
                        if &actual != digest {
                            return Err(RegistryError::DigestMismatch {
                                registry: ep.name.clone(),
                                digest: digest.clone(),
                                actual: actual.to_string(),
                            });
                        }
                        return Ok(());
                    }
                    Err(CopyError::Write(source, n)) => {
                        progress(-(n as i64));
                        return Err(RegistryError::Write {
                            path: dest.into(),
                            error: source,
                        });
                    }
                    Err(CopyError::Read(e, n)) => {
                        progress(-(n as i64));
                        if attempt >= self.tries {
                            return Err(RegistryError::Unreachable {
                                registry: ep.name.clone(),
                                detail: format!("download of {digest} broke off: {e}"),
                                tries: attempt,
                            });
                        }
                        std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                    }
                }
            }
        });
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// Runs `f` on each endpoint (mirrors first) until one succeeds; the
    /// registry's own error is the one reported.
    fn on_endpoints<T>(
        &self,
        f: impl Fn(&Endpoint) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let (last, mirrors) = self
            .endpoints
            .split_last()
            .expect("the registry itself is always an endpoint");
        for m in mirrors {
            if m.dead.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            match f(m) {
                Ok(v) => return Ok(v),
                Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Tls { .. })) => {
                    m.dead.store(true, std::sync::atomic::Ordering::Relaxed);
                    drop(e);
                }
                Err(e) if e.is_endpoint_specific() => continue,
                Err(e) => return Err(e),
            }
        }
        f(last)
    }

    /// `host[:port]` of the registry itself.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn read_capped(resp: ureq::Response, registry: &str, what: &str) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut body)
        .map_err(|e| RegistryError::Unreachable {
            registry: registry.into(),
            detail: format!("reading {what}: {e}"),
            tries: 1,
        })?;
    if body.len() as u64 > MAX_DOCUMENT {
        return Err(RegistryError::TooLarge {
            registry: registry.into(),
            what: what.into(),
        });
    }
    Ok(body)
}

/// `sha256:` digest of bytes.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{:x}", Sha256::digest(bytes))
        .parse()
        .expect("sha256 hex is a digest")
}

enum CopyError {
    Read(io::Error, u64),
    Write(io::Error, u64),
}

fn copy_hashing(
    mut from: impl Read,
    to: &mut File,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(u64, Digest), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e, total)),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(|e| CopyError::Write(e, total))?;
        total += n as u64;
        progress(n as i64);
    }
    let digest = format!("sha256:{:x}", hasher.finalize())
        .parse()
        .expect("sha256 hex is a digest");
    Ok((total, digest))
}
