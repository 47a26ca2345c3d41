//! Which operating system and CPU an image is for (`linux/amd64`,
//! `linux/arm64/v8`), and how an entry of a multi-platform index is picked.
//!
//! Pure logic: parsing and matching only, no I/O.

use std::fmt;
use std::str::FromStr;

/// An OCI platform: `os/architecture[/variant]`, in the OCI spelling
/// (`amd64`, not `x86_64`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// `--platform` text that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. `linux/amd64` or `linux/arm64/v8`"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry for `candidate` can run where `self` is wanted.
    /// A wanted variant must match, except that `arm64` without a variant is
    /// `v8` (the only one in use), as registries write it both ways.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match norm(self) {
            None => true,
            Some(want) => norm(candidate).is_none_or(|have| have == want),
        }
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, PlatformError> {
        let bad = || PlatformError(s.to_string());
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/amd64").variant, None);
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_rules() {
        assert!(p("linux/amd64").accepts(&p("linux/amd64")));
        assert!(!p("linux/amd64").accepts(&p("linux/arm64")));
        assert!(!p("linux/amd64").accepts(&p("windows/amd64")));
        assert!(p("linux/arm64").accepts(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").accepts(&p("linux/arm64")));
        assert!(p("linux/arm/v7").accepts(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v7").accepts(&p("linux/arm/v6")));
        assert!(p("linux/arm").accepts(&p("linux/arm/v6")));
    }

    #[test]
    fn host_is_in_oci_spelling() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert_ne!(h.architecture, "x86_64");
    }
}
