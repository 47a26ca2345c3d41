//! Image references as users write them, parsed once into types.
//!
//! Accepted spellings (`--image=` and `shoal` commands alike):
//! - `NAME[:TAG]`, `REGISTRY[:PORT]/NAME[:TAG]`, `...@sha256:HEX` (Docker Hub
//!   defaults apply: `debian` is `docker.io/library/debian:latest`);
//! - a `docker://` prefix, as skopeo and Apptainer write it;
//! - Shifter's `docker:NAME:TAG` and `id:DIGEST` (a bare hex image id is taken
//!   as sha256), so Shifter users keep their job scripts;
//! - a path to a squashfs file (starts with `/`, `./` or `../`).
//!
//! Parsing never touches the network or the filesystem. The grammar is the
//! distribution spec's (and Docker's defaults), written out by hand: the
//! regex-based parser of the `oci-spec` crate compiles its expression on
//! first use, which measured 44 ms in every srun and slurmstepd that parses
//! `--image`, a third of a whole step launch on the test cluster.

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;


/// What `--image=` names: an image in a registry, an image already in a store
/// by digest, or a squashfs file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSpec {
    Registry(ImageRef),
    Id(Digest),
    File(PathBuf),
}

/// A registry image: `registry/repository` with a tag, a digest, or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A content digest, `sha256:` followed by 64 lowercase hex digits.
/// Serialized as that string; deserializing checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl TryFrom<String> for Digest {
    type Error = RefError;
    fn try_from(s: String) -> Result<Self, RefError> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Why a reference was refused; the message names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("empty image reference; give one like `debian:12`, `registry.example.org:5000/team/app:1.0` or `/path/to/image.sqfs`")]
    Empty,
    #[error("invalid image reference {input:?}: {reason}; expected `[REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST]`, e.g. `docker.io/library/debian:12`")]
    Malformed { input: String, reason: String },
    #[error("invalid digest {input:?}: expected `sha256:` followed by 64 hex digits")]
    Digest { input: String },
}

const DOCKER_HUB: &str = "docker.io";

impl FromStr for ImageSpec {
    type Err = RefError;

    fn from_str(input: &str) -> Result<Self, RefError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Ok(ImageSpec::File(PathBuf::from(s)));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return ImageRef::parse_named(rest, input).map(ImageSpec::Registry);
        }
        if let Some(rest) = s.strip_prefix("id:") {
            let digest = if rest.contains(':') {
                rest.parse()?
            } else {
                format!("sha256:{rest}").parse().map_err(|_| RefError::Digest {
                    input: input.to_string(),
                })?
            };
            return Ok(ImageSpec::Id(digest));
        }
        // Shifter's `docker:NAME:TAG`. `docker` alone as a host with a port
        // would be `docker:5000/...`, which Shifter's form never is.
        if let Some(rest) = s.strip_prefix("docker:") {
            if !rest.starts_with(|c: char| c.is_ascii_digit()) {
                return ImageRef::parse_named(rest, input).map(ImageSpec::Registry);
            }
        }
        ImageRef::parse_named(s, input).map(ImageSpec::Registry)
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSpec::Registry(r) => r.fmt(f),
            ImageSpec::Id(d) => write!(f, "id:{d}"),
            ImageSpec::File(p) => p.display().fmt(f),
        }
    }
}

impl ImageRef {
    fn parse_named(s: &str, input: &str) -> Result<Self, RefError> {
        let malformed = |reason: String| RefError::Malformed {
            input: input.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(malformed("no image name".into()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed("it contains whitespace".into()));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let d = d.parse::<Digest>().map_err(|_| RefError::Digest {
                    input: input.to_string(),
                })?;
                (n, Some(d))
            }
            None => (s, None),
        };
        // The tag is after the last `:` of the last path component (a `:`
        // before a `/` is a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(malformed(format!(
                    "tag {t:?} must be 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
                )));
            }
        }
        // A first component with `.` or `:`, or `localhost`, is a registry.
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ if !path.contains('/') => (DOCKER_HUB.to_string(), format!("library/{path}")),
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(malformed(format!("registry {registry:?} is not a host name or address with an optional port")));
        }
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            return Err(malformed(format!(
                "name component {bad:?} must be lowercase letters and digits, separated by `.`, `_`, `__` or `-`"
            )));
        }
        // Neither a tag nor a digest means `latest`, as Docker does.
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef {
            registry: normalize_registry(&registry),
            repository,
            tag,
            digest,
        })
    }

    /// Registry host (and port), with Docker Hub spelled `docker.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry, e.g. `library/debian`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn pinned(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'a'..=b'z' | b'0'..=b'9' => i += 1,
            b'.' => i += 1,
            b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        // A separator must be followed by an alphanumeric.
        if i < b.len() && !b[i - 1].is_ascii_alphanumeric() && !b[i].is_ascii_alphanumeric() {
            return false;
        }
    }
    true
}

/// A host name or IPv4 address (dot-separated labels of letters, digits
/// and inner `-`) with an optional `:PORT`.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.split('.').all(label_ok)
}

fn normalize_registry(r: &str) -> String {
    match r {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A registry whose host is `id` (`id:5000`) would print as Shifter's
        // `id:DIGEST` form and read back as another image: spell it out.
        if self.registry.split(':').next() == Some("id") {
            f.write_str("docker://")?;
        }
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Digest {
    /// `sha256`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        let bad = || RefError::Digest {
            input: s.to_string(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Digest(format!("sha256:{}", hex.to_ascii_lowercase())))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn reg(s: &str) -> ImageRef {
        match s.parse::<ImageSpec>().unwrap() {
            ImageSpec::Registry(r) => r,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn a_registry_named_id_prints_as_itself() {
        // Found by fuzzing (issue 18, fuzz/ target `reference`): `id:6/x`
        // printed as `id:6/x:latest`, which reads back as a digest reference.
        for input in ["docker:id:6/gxhaaaaaag", "id:6/app:1"] {
            let Ok(ImageSpec::Registry(r)) = (if input.starts_with("id:") {
                format!("docker://{input}").parse::<ImageSpec>()
            } else {
                input.parse::<ImageSpec>()
            }) else {
                panic!("{input} does not parse as a registry reference")
            };
            assert_eq!(r.registry(), "id:6");
            let again: ImageSpec = r.to_string().parse().unwrap();
            assert_eq!(again, ImageSpec::Registry(r));
        }
    }

    #[test]
    fn docker_hub_defaults() {
        let r = reg("debian");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/debian");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/debian:latest");
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = reg("127.0.0.1:5443/shoal/busybox:1.0");
        assert_eq!(r.registry(), "127.0.0.1:5443");
        assert_eq!(r.repository(), "shoal/busybox");
        assert_eq!(r.tag(), Some("1.0"));
    }

    #[test]
    fn digest_reference_has_no_implicit_tag() {
        let r = reg(&format!("localhost:5000/app@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().hex(), HEX);
        let r = reg(&format!("localhost:5000/app:v1@sha256:{HEX}"));
        assert_eq!(r.tag(), Some("v1"));
    }

    #[test]
    fn prefixes_and_shifter_spellings() {
        assert_eq!(reg("docker://debian:12"), reg("debian:12"));
        assert_eq!(reg("docker:ubuntu:22.04"), reg("ubuntu:22.04"));
        match format!("id:{HEX}").parse::<ImageSpec>().unwrap() {
            ImageSpec::Id(d) => assert_eq!(d.hex(), HEX),
            other => panic!("{other:?}"),
        }
        match format!("id:sha256:{HEX}").parse::<ImageSpec>().unwrap() {
            ImageSpec::Id(d) => assert_eq!(d.hex(), HEX),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn separators_and_hosts() {
        assert_eq!(reg("localhost/a__b.c-d--e:1").repository(), "a__b.c-d--e");
        assert_eq!(reg("localhost/a__b.c-d--e:1").registry(), "localhost");
        assert_eq!(reg("ghcr.io/org/team/app:v1.2_3").repository(), "org/team/app");
        assert_eq!(reg("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(reg("index.docker.io/library/debian").registry(), "docker.io");
        assert_eq!(reg("10.0.0.1:5000/x").registry(), "10.0.0.1:5000");
    }

    #[test]
    fn paths_are_files() {
        assert_eq!(
            "/scratch/img.sqfs".parse::<ImageSpec>().unwrap(),
            ImageSpec::File("/scratch/img.sqfs".into())
        );
        assert!(matches!(
            "./img.sqfs".parse::<ImageSpec>().unwrap(),
            ImageSpec::File(_)
        ));
    }

    #[test]
    fn malformed_references_are_refused_with_the_input_named() {
        for bad in [
            "::bad::",
            "UPPER/Case",
            "a b",
            "debian:",
            "debian@sha256:12",
            "docker://",
            "id:xyz",
            "a//b",
            "a/-b",
            "a/b-",
            "host:port/x",
            "reg.io/x:.tag",
            "reg.io:/x",
            "-reg.io/x",
            "a..b",
        ] {
            let err = bad.parse::<ImageSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert_eq!("".parse::<ImageSpec>().unwrap_err(), RefError::Empty);
        assert_eq!("  ".parse::<ImageSpec>().unwrap_err(), RefError::Empty);
    }
}
