//! A client of the OCI distribution API, just what pulling needs: manifests
//! (GET and HEAD), blobs streamed to files while they are hashed, anonymous,
//! Bearer-token and basic auth, TLS checked by default, mirrors, and retries
//! with backoff on 5xx, 429 and dropped connections.
//!
//! Blocking on purpose: callers run parallel downloads on plain threads, and
//! the SPANK plugin links this crate without an async runtime.
//!
//! It never keeps a blob in memory (only manifests and configs, capped), never
//! trusts a blob it has not hashed, and never sends credentials to a host
//! other than the one they were saved for (redirects drop them).

pub mod auth;
mod tls;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use ureq::Agent;

use self::auth::{Challenge, Credentials};
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
    #[error(
        "{registry}: access to {repository} denied (HTTP 403); check that your login may pull it"
    )]
    Denied {
        registry: String,
        repository: String,
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
        self.on_endpoints(|ep| {
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

    /// One request with auth and retries. Returns only 2xx responses.
    fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        repository: &str,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        let url = format!("{}{path}", ep.base);
        let tries = if ep.mirror { 1 } else { self.tries };
        let mut tried_auth = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A saved login goes along from the first request (it was saved
            // for this very host): a basic-auth registry then answers at
            // once, and a token registry challenges as it would anyway.
            let auth = ep
                .tokens
                .lock()
                .unwrap()
                .get(repository)
                .cloned()
                .or_else(|| ep.creds.as_ref().map(Credentials::basic_header));
            let verb = match method {
                Method::Get => "GET",
                Method::Head => "HEAD",
            };
            if self.trace {
                eprintln!("shoal: http {verb} {url}");
            }
            let mut req = self
                .agent
                .request(verb, &url)
                .set("Accept", super::manifest::ACCEPT_MANIFESTS);
            if let Some(a) = &auth {
                req = req.set("Authorization", a);
            }
            let (outcome, resp, transport) = match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(code, resp)) => (
                    Outcome::Status {
                        code,
                        retry_after: retry_after(&resp),
                    },
                    Some(resp),
                    None,
                ),
                Err(ureq::Error::Transport(t)) => {
                    let tls = tls_failure(&t);
                    (
                        Outcome::Transport { tls: tls.is_some() },
                        None,
                        Some((t.to_string(), tls)),
                    )
                }
            };
            match next_step(&outcome, attempt, tries, tried_auth, self.backoff) {
                Next::Authenticate => {
                    tried_auth = true;
                    attempt -= 1; // the challenge round is not a failure
                    let challenge = resp
                        .as_ref()
                        .and_then(|r| r.header("www-authenticate"))
                        .and_then(auth::parse_challenge);
                    let header = self.authorize(ep, challenge, repository)?;
                    ep.tokens
                        .lock()
                        .unwrap()
                        .insert(repository.to_string(), header);
                }
                Next::RetryAfter(wait) => std::thread::sleep(wait),
                Next::Fail(f) => {
                    let registry = ep.name.clone();
                    let (detail, tls) = transport.unwrap_or_default();
                    return Err(match f {
                        Failure::Unauthorized => RegistryError::Unauthorized {
                            registry,
                            credentials: ep.creds.as_ref().map(|c| c.source.clone()),
                        },
                        Failure::Denied => RegistryError::Denied {
                            registry,
                            repository: repository.to_string(),
                        },
                        Failure::NotFound => RegistryError::NotFound {
                            reference: format!("{registry}/{what}"),
                            registry,
                        },
                        Failure::Server(status) => RegistryError::Server {
                            registry,
                            status,
                            what: what.to_string(),
                            tries: attempt,
                        },
                        Failure::Tls => RegistryError::Tls {
                            registry,
                            detail: tls.unwrap_or(detail),
                        },
                        Failure::Unreachable => RegistryError::Unreachable {
                            registry,
                            detail,
                            tries: attempt,
                        },
                    });
                }
            }
        }
    }

    /// Answers a 401 challenge: basic credentials, or a Bearer token from
    /// the realm (with credentials when saved, anonymous otherwise).
    fn authorize(
        &self,
        ep: &Endpoint,
        challenge: Option<Challenge>,
        repository: &str,
    ) -> Result<String, RegistryError> {
        let unauthorized = || RegistryError::Unauthorized {
            registry: ep.name.clone(),
            credentials: ep.creds.as_ref().map(|c| c.source.clone()),
        };
        match challenge {
            Some(Challenge::Basic) | None => ep
                .creds
                .as_ref()
                .map(Credentials::basic_header)
                .ok_or_else(unauthorized),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
                let mut url = format!(
                    "{realm}{}scope={}",
                    if realm.contains('?') { '&' } else { '?' },
                    auth::query_escape(&scope)
                );
                if let Some(s) = service {
                    url.push_str(&format!("&service={}", auth::query_escape(&s)));
                }
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    if self.trace {
                        eprintln!("shoal: http GET {realm} (token)");
                    }
                    let mut req = self.agent.get(&url);
                    if let Some(c) = &ep.creds {
                        req = req.set("Authorization", &c.basic_header());
                    }
                    match req.call() {
                        Ok(resp) => {
                            let body = read_capped(resp, &ep.name, "token")?;
                            #[derive(serde::Deserialize)]
                            struct Token {
                                token: Option<String>,
                                access_token: Option<String>,
                            }
                            let t: Token =
                                serde_json::from_slice(&body).map_err(|_| unauthorized())?;
                            let t = t.token.or(t.access_token).ok_or_else(unauthorized)?;
                            return Ok(format!("Bearer {t}"));
                        }
                        Err(ureq::Error::Status(code, _))
                            if code >= 500 && attempt < self.tries =>
                        {
                            std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                        }
                        Err(ureq::Error::Status(..)) => return Err(unauthorized()),
                        Err(ureq::Error::Transport(t)) => {
                            if let Some(detail) = tls_failure(&t) {
                                return Err(RegistryError::Tls {
                                    registry: ep.name.clone(),
                                    detail,
                                });
                            }
                            if attempt >= self.tries {
                                return Err(RegistryError::Unreachable {
                                    registry: ep.name.clone(),
                                    detail: format!("token service {realm}: {t}"),
                                    tries: attempt,
                                });
                            }
                            std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                        }
                    }
                }
            }
        }
    }

    /// `host[:port]` of the registry itself.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What came back for one request, as far as the retry loop cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A non-2xx status (2xx never reaches the decision).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No response: refused, reset, timed out, or a failed TLS check.
    Transport { tls: bool },
}

/// What the request loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Answer the 401 challenge, then ask again (once).
    Authenticate,
    /// Wait, then ask again.
    RetryAfter(Duration),
    Fail(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Unauthorized,
    Denied,
    NotFound,
    Server(u16),
    Unreachable,
    Tls,
}

/// The retry policy as a pure decision: 5xx, 429 and transport failures
/// are retried with doubling backoff (or the server's `Retry-After`, capped
/// at 30 s) until `tries` attempts; a failed certificate check never is.
fn next_step(
    outcome: &Outcome,
    attempt: u32,
    tries: u32,
    tried_auth: bool,
    backoff: Duration,
) -> Next {
    let wait = backoff * 2u32.pow(attempt.saturating_sub(1).min(6));
    match *outcome {
        Outcome::Transport { tls: true } => Next::Fail(Failure::Tls),
        Outcome::Transport { tls: false } if attempt < tries => Next::RetryAfter(wait),
        Outcome::Transport { tls: false } => Next::Fail(Failure::Unreachable),
        Outcome::Status { code: 401, .. } if !tried_auth => Next::Authenticate,
        Outcome::Status { code: 401, .. } => Next::Fail(Failure::Unauthorized),
        Outcome::Status { code: 403, .. } => Next::Fail(Failure::Denied),
        Outcome::Status { code: 404, .. } => Next::Fail(Failure::NotFound),
        Outcome::Status {
            code: 429 | 500..=599,
            retry_after,
            ..
        } if attempt < tries => {
            Next::RetryAfter(retry_after.unwrap_or(wait).min(Duration::from_secs(30)))
        }
        Outcome::Status { code, .. } => Next::Fail(Failure::Server(code)),
    }
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Head,
}

fn retry_after(resp: &ureq::Response) -> Option<Duration> {
    let secs: u64 = resp.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Whether a transport error is a failed certificate check (not retried:
/// it will not fix itself), and a short description.
fn tls_failure(t: &ureq::Transport) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(t);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r.to_string());
            }
        }
        source = e.source();
    }
    let text = t.to_string();
    (text.contains("certificate") || text.contains("UnknownIssuer")).then_some(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    const B: Duration = Duration::from_millis(250);

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn server_errors_and_throttling_are_retried_with_doubling_backoff() {
        for code in [500, 502, 503, 429] {
            assert_eq!(
                next_step(&status(code), 1, 5, false, B),
                Next::RetryAfter(B),
                "{code}"
            );
            assert_eq!(
                next_step(&status(code), 3, 5, false, B),
                Next::RetryAfter(B * 4),
                "{code}"
            );
            assert_eq!(
                next_step(&status(code), 5, 5, false, B),
                Next::Fail(Failure::Server(code)),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let o = Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            next_step(&o, 1, 5, false, B),
            Next::RetryAfter(Duration::from_secs(7))
        );
        let o = Outcome::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            next_step(&o, 1, 5, false, B),
            Next::RetryAfter(Duration::from_secs(30))
        );
    }

    #[test]
    fn dropped_connections_are_retried_but_certificate_failures_are_not() {
        let dropped = Outcome::Transport { tls: false };
        assert_eq!(next_step(&dropped, 1, 5, false, B), Next::RetryAfter(B));
        assert_eq!(
            next_step(&dropped, 5, 5, false, B),
            Next::Fail(Failure::Unreachable)
        );
        assert_eq!(
            next_step(&Outcome::Transport { tls: true }, 1, 5, false, B),
            Next::Fail(Failure::Tls)
        );
        // A mirror gets one try: the next endpoint is its retry.
        assert_eq!(
            next_step(&dropped, 1, 1, false, B),
            Next::Fail(Failure::Unreachable)
        );
    }

    #[test]
    fn a_challenge_is_answered_once_and_client_errors_are_final() {
        assert_eq!(next_step(&status(401), 1, 5, false, B), Next::Authenticate);
        assert_eq!(
            next_step(&status(401), 1, 5, true, B),
            Next::Fail(Failure::Unauthorized)
        );
        assert_eq!(
            next_step(&status(403), 1, 5, false, B),
            Next::Fail(Failure::Denied)
        );
        assert_eq!(
            next_step(&status(404), 1, 5, false, B),
            Next::Fail(Failure::NotFound)
        );
        assert_eq!(
            next_step(&status(400), 1, 5, false, B),
            Next::Fail(Failure::Server(400))
        );
    }
}
