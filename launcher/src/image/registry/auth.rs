//! Registry credentials and challenges: where a user's saved logins are
//! (`REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.docker/config.json`, first match wins, as podman and skopeo read
//! them), and what a `WWW-Authenticate` header asks for.
//!
//! Pure parsing plus reading those files; never writes them, never logs a
//! secret. Credential helpers (`credHelpers`, `credsStore`) are not run:
//! Shoal executes no program named by a config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A saved login for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The file it came from, for error messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({} from {})",
            self.username,
            self.source.display()
        )
    }
}

impl Credentials {
    /// `Authorization: Basic ...` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files to look in, in order, from the environment given (so tests
/// need not touch the process environment).
pub fn auth_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE").filter(|s| !s.is_empty()) {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = env("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(c) = env("DOCKER_CONFIG").filter(|s| !s.is_empty()) {
        files.push(Path::new(&c).join("config.json"));
    } else if let Some(h) = env("HOME").filter(|s| !s.is_empty()) {
        files.push(Path::new(&h).join(".docker/config.json"));
    }
    files
}

/// Finds credentials for `registry` (`host[:port]`, Docker Hub as
/// `docker.io`) in `files`. Unreadable or malformed files are skipped: a
/// broken login file must not stop an anonymous pull.
pub fn find_credentials(registry: &str, files: &[PathBuf]) -> Option<Credentials> {
    files.iter().find_map(|f| {
        let text = std::fs::read(f).ok()?;
        lookup(registry, &text).map(|(username, password)| Credentials {
            username,
            password,
            source: f.clone(),
        })
    })
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn lookup(registry: &str, text: &[u8]) -> Option<(String, String)> {
    let file: AuthFile = serde_json::from_slice(text).ok()?;
    let wanted = host_key(registry);
    file.auths.iter().find_map(|(key, entry)| {
        if host_key(key) != wanted {
            return None;
        }
        if let Some(a) = &entry.auth {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (u, p) = raw.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        Some((entry.username.clone()?, entry.password.clone()?))
    })
}

/// `https://index.docker.io/v1/`, `docker.io` and `registry-1.docker.io`
/// all name Docker Hub; keys may carry a scheme and a path.
fn host_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// What a 401 response's `WWW-Authenticate` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm=...`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            // Quoted string; `\"` escapes a quote.
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = after.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    out
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/debian:pull".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn docker_and_podman_auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        // "bob:s3cr:et" – a colon in the password stays in the password.
        std::fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOnMzY3I6ZXQ="},"127.0.0.1:5444":{"auth":"Ym9iOnMzY3I6ZXQ="}}}"#,
        )
        .unwrap();
        let podman = dir.path().join("auth.json");
        std::fs::write(
            &podman,
            r#"{"auths":{"127.0.0.1:5444":{"username":"amy","password":"amy-Secret-7"}}}"#,
        )
        .unwrap();
        let c = find_credentials("docker.io", &[podman.clone(), docker.clone()]).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bob", "s3cr:et")
        );
        let c = find_credentials("127.0.0.1:5444", &[podman.clone(), docker.clone()]).unwrap();
        assert_eq!(c.username, "amy");
        assert_eq!(c.source, podman);
        assert!(find_credentials("quay.io", &[podman, docker]).is_none());
        // A password no temporary directory name can contain by chance.
        assert!(
            !format!("{c:?}").contains("amy-Secret-7"),
            "Debug must not show the password"
        );
    }

    #[test]
    fn auth_file_order() {
        let env = |k: &str| match k {
            "REGISTRY_AUTH_FILE" => Some("/a.json".to_string()),
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(
            auth_files(&env),
            vec![
                PathBuf::from("/a.json"),
                PathBuf::from("/run/user/1000/containers/auth.json"),
                PathBuf::from("/home/u/.docker/config.json")
            ]
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
