//! The registry's JSON documents: image manifests (OCI and Docker schema 2),
//! indexes and manifest lists, and the image config. Parsed leniently (unknown
//! fields ignored) but checked for what the pipeline relies on, and turned into
//! plain values: which layers, which platform entry, which run settings.
//!
//! Pure logic, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::Platform;
use crate::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header of a manifest request: every kind we can read.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A manifest document that is not one we can use; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

/// A reference to a blob or manifest inside another document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Vec<String>,
}

/// Either document a manifest URL can return.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

/// One platform's image: its config blob and layers, base first.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<BlobRef>,
}

/// A layer the pipeline will download: its digest (checked), size and the
/// media type the registry gave (compression is read from the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

impl Document {
    /// Parses a manifest body. `content_type` is the response header, used
    /// when the body does not name its own media type (OCI makes it optional).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
        let raw: RawDocument = serde_json::from_slice(body)
            .map_err(|e| ManifestError(format!("not valid manifest JSON ({e})")))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError(format!(
                "unsupported manifest schemaVersion {} (only 2: OCI and Docker schema 2; push the image again with a current tool)",
                raw.schema_version.map_or("missing".to_string(), |v| v.to_string())
            )));
        }
        let media = raw
            .media_type
            .clone()
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()));
        let is_index = match media.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
            Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
            _ => raw.manifests.is_some(),
        };
        if is_index {
            let manifests = raw
                .manifests
                .ok_or_else(|| ManifestError("index without a `manifests` list".into()))?;
            for m in &manifests {
                check_digest(&m.digest)?;
            }
            return Ok(Document::Index(manifests));
        }
        let config = raw
            .config
            .ok_or_else(|| ManifestError("image manifest without a `config`".into()))?;
        check_digest(&config.digest)?;
        let layers = raw
            .layers
            .ok_or_else(|| ManifestError("image manifest without `layers`".into()))?
            .into_iter()
            .map(|l| {
                if !l.urls.is_empty() || l.media_type.contains("foreign") {
                    return Err(ManifestError(format!(
                        "layer {} is a foreign (non-distributable) layer served from elsewhere, which Shoal does not fetch",
                        l.digest
                    )));
                }
                if !is_layer_type(&l.media_type) {
                    return Err(ManifestError(format!(
                        "layer {} has media type {:?}, which is not a filesystem layer",
                        l.digest, l.media_type
                    )));
                }
                Ok(BlobRef {
                    digest: check_digest(&l.digest)?,
                    size: l.size,
                    media_type: l.media_type,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Document::Image(ImageManifest { config, layers }))
    }
}

fn is_layer_type(t: &str) -> bool {
    t.is_empty()
        || t.starts_with("application/vnd.oci.image.layer.")
        || t.starts_with("application/vnd.docker.image.rootfs.")
}

fn check_digest(d: &str) -> Result<Digest, ManifestError> {
    d.parse().map_err(|_| {
        ManifestError(format!(
            "digest {d:?} is not sha256 followed by 64 hex digits (other algorithms are not supported)"
        ))
    })
}

/// Picks the entry of an index for `want`. Attestation manifests (BuildKit
/// writes `unknown/unknown` entries) never match. Errors list what exists.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, Vec<Platform>> {
    let found = entries
        .iter()
        .filter(|e| e.platform.as_ref().is_some_and(|p| want.accepts(p)))
        // Prefer an exact variant match over an "any variant" one.
        .max_by_key(|e| e.platform.as_ref().map(|p| p.variant == want.variant));
    found.ok_or_else(|| {
        entries
            .iter()
            .filter_map(|e| e.platform.clone())
            .filter(|p| p.os != "unknown")
            .collect()
    })
}

/// The settings an image carries for running it (OCI image config, `config`
/// object), plus where it came from. What `shoal run` and the plugin apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What the config blob says besides the run settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigBlob {
    pub config: ImageConfig,
    pub platform: Option<Platform>,
    pub created: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawConfigBlob {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    created: Option<String>,
    config: Option<RawRunConfig>,
}

impl ConfigBlob {
    pub fn parse(body: &[u8]) -> Result<ConfigBlob, ManifestError> {
        let raw: RawConfigBlob = serde_json::from_slice(body)
            .map_err(|e| ManifestError(format!("image config is not valid JSON ({e})")))?;
        let c = raw.config.unwrap_or_default();
        let platform = match (raw.os, raw.architecture) {
            (Some(os), Some(architecture)) => Some(Platform {
                os,
                architecture,
                variant: raw.variant,
            }),
            _ => None,
        };
        Ok(ConfigBlob {
            config: ImageConfig {
                env: c.env.unwrap_or_default(),
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                workdir: c.working_dir.filter(|w| !w.is_empty()),
                user: c.user.filter(|u| !u.is_empty()),
                labels: c.labels.unwrap_or_default(),
            },
            platform,
            created: raw.created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index(entries: &[(&str, &str)]) -> String {
        let m: Vec<String> = entries
            .iter()
            .map(|(d, p)| {
                let p: Platform = p.parse().unwrap();
                let v = p.variant.map(|v| format!(",\"variant\":\"{v}\"")).unwrap_or_default();
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"{}","architecture":"{}"{v}}}}}"#,
                    p.os, p.architecture
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            m.join(",")
        )
    }

    #[test]
    fn docker_schema2_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":5}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D2}","size":7}}]}}"#
        );
        let Document::Image(m) = Document::parse(body.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].digest.as_str(), D2);
        assert_eq!(m.config.size, 5);
    }

    #[test]
    fn oci_manifest_without_media_type_uses_the_header() {
        let body =
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":5}},"layers":[]}}"#);
        assert!(matches!(
            Document::parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap(),
            Document::Image(_)
        ));
    }

    #[test]
    fn index_selection_by_platform() {
        let body = index(&[(D1, "linux/amd64"), (D2, "linux/arm64/v8")]);
        let Document::Index(entries) = Document::parse(body.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(
            select_platform(&entries, &"linux/arm64".parse().unwrap())
                .unwrap()
                .digest,
            D2
        );
        assert_eq!(
            select_platform(&entries, &"linux/amd64".parse().unwrap())
                .unwrap()
                .digest,
            D1
        );
        let missing = select_platform(&entries, &"linux/s390x".parse().unwrap()).unwrap_err();
        assert_eq!(missing.len(), 2);
    }

    #[test]
    fn malformed_documents_say_why() {
        for (body, says) in [
            ("not json", "not valid manifest JSON"),
            (r#"{"schemaVersion":1}"#, "schemaVersion 1"),
            (r#"{"schemaVersion":2,"layers":[]}"#, "without a `config`"),
        ] {
            let e = Document::parse(body.as_bytes(), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let bad_digest = r#"{"schemaVersion":2,"config":{"digest":"md5:00","size":1},"layers":[]}"#;
        assert!(Document::parse(bad_digest.as_bytes(), None)
            .unwrap_err()
            .to_string()
            .contains("md5:00"));
        let foreign = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":1,"urls":["https://x"]}}]}}"#
        );
        assert!(Document::parse(foreign.as_bytes(), None)
            .unwrap_err()
            .to_string()
            .contains("foreign"));
    }

    #[test]
    fn config_blob_run_settings() {
        let c = ConfigBlob::parse(
            br#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
            "config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/w","User":"","Labels":{"a":"b"}}}"#,
        )
        .unwrap();
        assert_eq!(c.config.env, vec!["PATH=/bin"]);
        assert_eq!(c.config.cmd, vec!["/bin/sh"]);
        assert_eq!(c.config.workdir.as_deref(), Some("/w"));
        assert_eq!(c.config.user, None);
        assert_eq!(c.config.labels["a"], "b");
        assert_eq!(c.platform.unwrap().to_string(), "linux/amd64");
    }
}
