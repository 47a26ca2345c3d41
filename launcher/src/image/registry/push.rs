//! Writing to a registry, what `shoal index` needs: a manifest PUT (the
//! bytes given, sent once, their sha256 checked against the registry's
//! `Docker-Content-Digest`), and an image copied into another repository:
//! its blobs mounted from the source repository of the same registry
//! (`POST .../blobs/uploads/?mount=D&from=REPO`), or, where the registry
//! declines the mount or the source is another registry, streamed from the
//! source into a monolithic upload (`POST` then `PUT ?digest=D`), never held
//! in memory or on disk; the registry checks the digest of what it gets.
//!
//! Writes go to the registry itself, never to a mirror, with the same
//! logins, tokens and TLS trust as pulls.

use std::io::Read;

use super::request::{Body, Method};
use super::{auth, Endpoint, FetchedManifest, Registry, RegistryError};
use crate::reference::Digest;

/// What a blob mount gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// The blob is in the repository now.
    Mounted,
    /// The registry declined and started an upload at this location.
    Upload(String),
}

/// How an image came to be in the target repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The manifest was there already: nothing moved.
    pub present: bool,
    /// Blobs mounted from the source repository.
    pub mounted: usize,
    /// Blobs streamed from the source.
    pub copied: usize,
    /// Blobs the target repository had already.
    pub had: usize,
}

/// The blobs an image manifest names (config first, then layers), as
/// (digest, size); blobs with `urls` (non-distributable layers) are left
/// where they are, as the spec has it.
pub fn manifest_blobs(body: &[u8]) -> Result<Vec<(Digest, u64)>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let mut out = Vec::new();
    let config = doc.get("config").ok_or("no `config` descriptor")?;
    let layers = doc
        .get("layers")
        .and_then(serde_json::Value::as_array)
        .ok_or("no `layers` list")?;
    for d in std::iter::once(config).chain(layers.iter()) {
        if d.get("urls")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|u| !u.is_empty())
        {
            continue;
        }
        let digest = d
            .get("digest")
            .and_then(serde_json::Value::as_str)
            .ok_or("a descriptor without `digest`")?;
        let digest: Digest = digest
            .parse()
            .map_err(|_| format!("digest {digest:?} is not sha256"))?;
        let size = d
            .get("size")
            .and_then(serde_json::Value::as_u64)
            .ok_or("a descriptor without `size`")?;
        out.push((digest, size));
    }
    Ok(out)
}

/// The registry's `Docker-Content-Digest` against the digest of what was
/// sent; a registry that sends none is taken at its 201.
fn digest_check(
    registry: &str,
    header: Option<&str>,
    sent: &Digest,
    what: &str,
) -> Result<(), RegistryError> {
    match header.map(str::trim) {
        Some(got) if got != sent.as_str() => Err(RegistryError::PushedDigest {
            registry: registry.to_string(),
            what: what.to_string(),
            sent: sent.clone(),
            got: got.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `location` with `key=value` added to its query.
fn with_query(location: &str, key: &str, value: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{key}={}", auth::query_escape(value))
}

impl Registry {
    /// The registry itself (the last endpoint; mirrors come first).
    fn origin(&self) -> &Endpoint {
        self.endpoints
            .last()
            .expect("the registry itself is always an endpoint")
    }

    /// GETs a manifest from the registry itself (not a mirror, which may
    /// lag behind a tag that was just pushed).
    pub fn manifest_at_origin(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        self.manifest_on(self.origin(), repository, reference)
    }

    /// Whether `repository` has the manifest `digest` (HEAD).
    pub fn has_manifest(&self, repository: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let path = format!("/v2/{repository}/manifests/{digest}");
        let what = format!("{repository}@{digest}");
        self.exists(&path, repository, &what)
    }

    /// Whether `repository` has the blob `digest` (HEAD).
    pub fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        self.exists(&path, repository, digest.as_str())
    }

    fn exists(&self, path: &str, repository: &str, what: &str) -> Result<bool, RegistryError> {
        match self.send(self.origin(), Method::Head, path, repository, what) {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks the registry to mount blob `digest` of repository `from` into
    /// `repository`.
    pub fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount, RegistryError> {
        let path = with_query(
            &with_query(
                &format!("/v2/{repository}/blobs/uploads/"),
                "mount",
                digest.as_str(),
            ),
            "from",
            from,
        );
        let what = format!("mount of {digest} from {from} into {repository}");
        let resp = self.send(self.origin(), Method::Post, &path, repository, &what)?;
        if resp.status() == 201 {
            return Ok(Mount::Mounted);
        }
        self.location(resp, repository, &what).map(Mount::Upload)
    }

    /// The upload location a 202 answer names, as a path or URL on this
    /// registry.
    fn location(
        &self,
        resp: ureq::Response,
        repository: &str,
        what: &str,
    ) -> Result<String, RegistryError> {
        let loc = resp.header("location").map(str::trim).unwrap_or("");
        if loc.is_empty() {
            return Err(RegistryError::Rejected {
                registry: self.name.clone(),
                what: what.to_string(),
                status: resp.status(),
                detail: format!("no upload Location for {repository}"),
            });
        }
        Ok(loc.to_string())
    }

    /// Uploads blob `digest` (`len` bytes) into `repository`: at
    /// `location` when a declined mount started an upload, else at a new
    /// one. `open` gives the bytes, anew for each try.
    pub fn upload_blob(
        &self,
        repository: &str,
        digest: &Digest,
        len: u64,
        location: Option<String>,
        open: &dyn Fn() -> Result<Box<dyn Read>, RegistryError>,
    ) -> Result<(), RegistryError> {
        let ep = self.origin();
        let what = format!("upload of {digest} into {repository}");
        let location = match location {
            Some(l) => l,
            None => {
                let path = format!("/v2/{repository}/blobs/uploads/");
                let resp = self.send(ep, Method::Post, &path, repository, &what)?;
                self.location(resp, repository, &what)?
            }
        };
        let target = with_query(&location, "digest", digest.as_str());
        let body = Body::Stream { open, len };
        let resp = self.send_with(ep, Method::Put, &target, repository, &what, &body)?;
        self.check_digest(&resp, digest, &what)
    }

    /// PUTs `body` as manifest `reference` (a tag, or its digest) of
    /// `repository`, with `media_type` as its Content-Type. Returns the
    /// digest of the bytes sent, checked against the one the registry
    /// says it stored.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        body: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = super::sha256_digest(body);
        let path = format!("/v2/{repository}/manifests/{reference}");
        let what = format!("manifest {repository}:{reference}");
        let send = Body::Bytes {
            data: body,
            content_type: media_type,
        };
        let resp = self.send_with(self.origin(), Method::Put, &path, repository, &what, &send)?;
        self.check_digest(&resp, &digest, &what)?;
        Ok(digest)
    }

    fn check_digest(
        &self,
        resp: &ureq::Response,
        sent: &Digest,
        what: &str,
    ) -> Result<(), RegistryError> {
        digest_check(&self.name, resp.header("docker-content-digest"), sent, what)
    }

    /// A blob as a stream (mirrors first, as for pulls; whoever receives it
    /// checks its digest).
    pub fn blob_reader(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Box<dyn Read>, RegistryError> {
        self.on_endpoints(|ep| {
            let path = format!("/v2/{repository}/blobs/{digest}");
            let resp = self.send(ep, Method::Get, &path, repository, digest.as_str())?;
            let reader: Box<dyn Read> = Box::new(resp.into_reader());
            Ok(reader)
        })
    }

    /// Makes image `manifest` (fetched from `src_repository` on `src`) a
    /// manifest of `repository` here: nothing when it is there already;
    /// else each blob the repository lacks is mounted (same registry) or
    /// streamed from `src`, then the manifest's own bytes are PUT by
    /// digest.
    pub fn copy_image(
        &self,
        repository: &str,
        src: &Registry,
        src_repository: &str,
        manifest: &FetchedManifest,
        media_type: &str,
    ) -> Result<CopyReport, RegistryError> {
        let mut report = CopyReport::default();
        if self.has_manifest(repository, &manifest.digest)? {
            report.present = true;
            return Ok(report);
        }
        let blobs = manifest_blobs(&manifest.body).map_err(|detail| RegistryError::Rejected {
            registry: src.name.clone(),
            what: format!("{src_repository}@{}", manifest.digest),
            status: 200,
            detail: format!("not an image manifest Shoal can copy: {detail}"),
        })?;
        let same_registry = src.name == self.name;
        for (digest, size) in blobs {
            if self.has_blob(repository, &digest)? {
                report.had += 1;
                continue;
            }
            let mut location = None;
            if same_registry {
                match self.mount_blob(repository, &digest, src_repository)? {
                    Mount::Mounted => {
                        report.mounted += 1;
                        continue;
                    }
                    Mount::Upload(l) => location = Some(l),
                }
            }
            let open = || src.blob_reader(src_repository, &digest);
            self.upload_blob(repository, &digest, size, location, &open)?;
            report.copied += 1;
        }
        self.put_manifest(
            repository,
            manifest.digest.as_str(),
            &manifest.body,
            media_type,
        )?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_of_a_manifest_config_first_foreign_layers_left_out() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":7}},
               "layers":[{{"digest":"{}","size":100}},
                         {{"digest":"{}","size":5,"urls":["https://example.org/l"]}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let blobs = manifest_blobs(m.as_bytes()).unwrap();
        assert_eq!(
            blobs,
            vec![(d('a').parse().unwrap(), 7), (d('b').parse().unwrap(), 100)]
        );
        assert!(manifest_blobs(br#"{"manifests":[]}"#)
            .unwrap_err()
            .contains("config"));
    }

    #[test]
    fn a_pushed_digest_other_than_the_bytes_sent_is_an_error() {
        let body = b"{\"schemaVersion\":2}\n";
        let sent = crate::image::registry::sha256_digest(body);
        let resp: ureq::Response = format!(
            "HTTP/1.1 201 Created\r\nDocker-Content-Digest: {sent}\r\nLocation: /v2/t/a/manifests/{sent}\r\n\r\n"
        )
        .parse()
        .unwrap();
        assert!(digest_check("reg", resp.header("docker-content-digest"), &sent, "m").is_ok());
        assert!(digest_check("reg", None, &sent, "m").is_ok());
        let other = format!("sha256:{}", "0".repeat(64));
        let e = digest_check("reg", Some(&other), &sent, "manifest t/a:1").unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "reg: manifest t/a:1 was stored as {other}, but the bytes sent hash to {sent}"
            )),
            "{e}"
        );
    }

    #[test]
    fn upload_locations_get_the_digest_in_their_query() {
        assert_eq!(
            with_query("/v2/t/a/blobs/uploads/u1?_state=xy", "digest", "sha256:00"),
            "/v2/t/a/blobs/uploads/u1?_state=xy&digest=sha256%3A00"
        );
        assert_eq!(
            with_query(
                &with_query("/v2/t/a/blobs/uploads/", "mount", "sha256:00"),
                "from",
                "t/b"
            ),
            "/v2/t/a/blobs/uploads/?mount=sha256%3A00&from=t%2Fb"
        );
    }
}
