//! Registry documents: manifests, indexes (with platform selection),
//! image configs, and signature documents (cosign simple-signing payloads,
//! sigstore bundles and the referrer indexes and manifests that lead to
//! them), as served by a registry anyone can push to.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::image::manifest::{ConfigBlob, Document};

const TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let ct = TYPES[first as usize % TYPES.len()];
    if let Ok(Document::Index(list)) = Document::parse(body, ct) {
        let want = "linux/amd64".parse().expect("a platform");
        let _ = shoal::image::manifest::select_platform(&list, &want);
    }
    let _ = ConfigBlob::parse(body);
    let _ = shoal::image::trust::Payload::parse(body);
    let _ = shoal::image::trust::bundle::referrer_candidates(body);
    let _ = shoal::image::trust::bundle::bundle_layer(body);
    if let Ok(b) = shoal::image::trust::bundle::Bundle::parse(body) {
        // The statement is read only after a key check in Shoal; here it
        // is read anyway, as an attacker's payload would be.
        let _ = b.subjects();
    }
});
