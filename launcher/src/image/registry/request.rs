//! One request to one endpoint: auth (a saved login from the first
//! request, a 401 challenge answered once with basic credentials or a
//! Bearer token), and retries with backoff on 5xx, 429 and dropped
//! connections, decided by a pure function ([`next_step`]).

use std::io::{self, Read};
use std::time::Duration;

use super::auth::{self, Challenge, Credentials};
use super::Endpoint;
use super::{read_capped, Registry, RegistryError};

/// What a request sends.
pub(super) enum Body<'a> {
    None,
    /// A document (manifest) with its media type, sent as these bytes.
    Bytes {
        data: &'a [u8],
        content_type: &'a str,
    },
    /// A blob of `len` bytes read from a source opened anew for each try
    /// (a blob copied from another repository or registry, never held in
    /// memory or on disk).
    Stream {
        open: &'a dyn Fn() -> Result<Box<dyn Read>, RegistryError>,
        len: u64,
    },
}

impl Registry {
    /// One request with auth and retries. Returns only 2xx responses.
    pub(super) fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        repository: &str,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        self.send_with(ep, method, path, repository, what, &Body::None)
    }

    /// [`Registry::send`] with a body. `path` is `/v2/...` or a full URL
    /// (an upload `Location`), which must be on this very endpoint:
    /// credentials never go to another host.
    pub(super) fn send_with(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        repository: &str,
        what: &str,
        body: &Body,
    ) -> Result<ureq::Response, RegistryError> {
        let url = if path.starts_with('/') {
            format!("{}{path}", ep.base)
        } else if path.starts_with(&format!("{}/", ep.base)) {
            path.to_string()
        } else {
            return Err(RegistryError::ForeignLocation {
                registry: ep.name.clone(),
                location: path.to_string(),
            });
        };
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
            let verb = method.verb();
            if self.trace {
                eprintln!("shoal: http {verb} {url}");
            }
            let mut req = self
                .agent
                .request(verb, &url)
                .set("Accept", crate::image::manifest::ACCEPT_MANIFESTS);
            if let Some(a) = &auth {
                req = req.set("Authorization", a);
            }
            let sent = match body {
                Body::None if method == Method::Get || method == Method::Head => req.call(),
                // An empty POST/PUT still says so (some registries want it).
                Body::None => req.set("Content-Length", "0").send_bytes(&[]),
                Body::Bytes { data, content_type } => {
                    req.set("Content-Type", content_type).send_bytes(data)
                }
                Body::Stream { open, len } => req
                    .set("Content-Type", "application/octet-stream")
                    .set("Content-Length", &len.to_string())
                    .send(open()?),
            };
            let (outcome, resp, transport) = match sent {
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
                    let header = self.authorize(ep, challenge, repository, method)?;
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
                            action: if method.writes() { "push to" } else { "pull" },
                        },
                        Failure::NotFound => RegistryError::NotFound {
                            reference: format!("{registry}/{what}"),
                            registry,
                        },
                        Failure::Server(status) if (400..500).contains(&status) => {
                            RegistryError::Rejected {
                                registry,
                                what: what.to_string(),
                                status,
                                detail: resp.map(error_text).unwrap_or_default(),
                            }
                        }
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
        method: Method,
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
                let scope = scope.unwrap_or_else(|| {
                    let actions = if method.writes() { "pull,push" } else { "pull" };
                    format!("repository:{repository}:{actions}")
                });
                let mut url = format!(
                    "{realm}{}{}",
                    if realm.contains('?') { '&' } else { '?' },
                    token_scopes(&scope)
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

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
    Post,
    Put,
}

impl Method {
    fn verb(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    /// Whether it changes the registry (a push).
    fn writes(self) -> bool {
        matches!(self, Method::Post | Method::Put)
    }
}

/// The distribution spec's error body (`{"errors":[{"code","message"}]}`)
/// as one line, or the start of whatever text came instead.
fn error_text(resp: ureq::Response) -> String {
    let mut body = Vec::new();
    let _ = resp.into_reader().take(64 << 10).read_to_end(&mut body);
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        let parts: Vec<String> = e
            .errors
            .into_iter()
            .map(|i| match (i.code, i.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (c, m) => c.or(m).unwrap_or_default(),
            })
            .collect();
        return parts.join("; ");
    }
    let text = String::from_utf8_lossy(&body);
    text.trim().chars().take(200).collect()
}

/// The query of a token request: a challenge's `scope` may hold several
/// space-separated scopes (a cross-repository mount wants push on one
/// repository and pull on the other); each is its own `scope=` parameter,
/// as the token protocol has it.
fn token_scopes(scope: &str) -> String {
    scope
        .split_whitespace()
        .map(|s| format!("scope={}", auth::query_escape(s)))
        .collect::<Vec<_>>()
        .join("&")
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
    fn each_scope_of_a_challenge_is_its_own_token_parameter() {
        assert_eq!(
            token_scopes("repository:t/a:pull,push repository:t/b:pull"),
            "scope=repository%3At%2Fa%3Apull%2Cpush&scope=repository%3At%2Fb%3Apull"
        );
        assert_eq!(
            token_scopes("repository:x:pull"),
            "scope=repository%3Ax%3Apull"
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
