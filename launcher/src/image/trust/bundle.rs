//! cosign 3's default image signature: a sigstore bundle (media type
//! `application/vnd.dev.sigstore.bundle.v0.3+json`) holding a DSSE
//! envelope over an in-toto statement, attached to the image as an OCI 1.1
//! referrer.
//!
//! Where it is found: the registry's referrers API
//! (`GET /v2/NAME/referrers/DIGEST`), or, on a registry without one
//! (Debian's docker-registry 2.8 answers 404), the referrers tag schema:
//! the tag `sha256-HEX` holds an image index listing the referrers. What
//! cosign 3.1.1 writes there (inspected on the test registry): an index
//! entry whose `artifactType` is the *config's* media type
//! (`application/vnd.oci.empty.v1+json`), pointing at a manifest whose own
//! `artifactType` is the bundle type, with `subject` = the image, and one
//! layer, the bundle JSON.
//!
//! What a key-based bundle proves, checked here in this order: an ECDSA
//! P-256 signature by the key over the DSSE pre-authentication encoding
//! (`DSSEv1 LEN TYPE LEN BODY`) of the payload; then, parsed only after
//! that, an in-toto statement of predicate `https://sigstore.dev/cosign/sign/v1`
//! whose subjects' sha256 digests name the signed manifest. The statement
//! cosign writes is `{"_type": "https://in-toto.io/Statement/v1",
//! "subject": [{"digest": {"sha256": HEX}, "annotations": {...}}],
//! "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}`:
//! no `name`, no repository, even with `--sign-container-identity` (which
//! cosign 3 ignores for bundles). So a bundle carries no identity for a
//! `signedIdentity` rule to match; the policy check says so (after the key
//! and digest checks, so the refusal names the real problem).
//!
//! Certificate (Fulcio) bundles and message-signature bundles (`cosign
//! sign-blob`) are refused by name. The cryptography is ring's.

use base64::Engine as _;
use serde_json::Value;

use super::sigstore::PublicKey;
use crate::reference::Digest;

/// The bundle media type cosign 3 writes (also the referrer's artifactType).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The same version in the sigstore protobuf spec's other spelling.
const BUNDLE_MEDIA_TYPE_ALT: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";
/// The predicate of an image signature (not an attestation).
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The DSSE payload type of an in-toto statement.
const IN_TOTO: &str = "application/vnd.in-toto+json";
const STATEMENTS: [&str; 2] = [
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];
/// What cosign's tag-schema index records as a referrer's artifactType.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// At most this many referrers are looked at per image.
pub const MAX_REFERRERS: usize = 16;
/// Largest bundle read (cosign's are under 1 KiB without a certificate).
pub const MAX_BUNDLE: u64 = 64 << 10;

/// A bundle's DSSE envelope, read but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    payload: Vec<u8>,
    signatures: Vec<Vec<u8>>,
}

impl Bundle {
    /// Reads a bundle as the registry served it; the error says what is
    /// wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("bundle is not JSON ({e})"))?;
        let top = v
            .as_object()
            .ok_or_else(|| "bundle is not a JSON object".to_string())?;
        match top.get("mediaType").and_then(Value::as_str) {
            Some(BUNDLE_MEDIA_TYPE | BUNDLE_MEDIA_TYPE_ALT) => {}
            other => return Err(format!(
                "bundle media type is {}, not {BUNDLE_MEDIA_TYPE} (the version cosign 3 writes)",
                other.map_or("missing".to_string(), |m| format!("{m:?}"))
            )),
        }
        let material = top
            .get("verificationMaterial")
            .and_then(Value::as_object)
            .ok_or_else(|| "bundle has no verificationMaterial".to_string())?;
        if material.contains_key("certificate") || material.contains_key("x509CertificateChain") {
            return Err("bundle is signed with a certificate (Fulcio or PKI), which Shoal does not verify; sign with a key pair (`cosign sign --key`)".into());
        }
        if !material.contains_key("publicKey") {
            return Err("bundle's verificationMaterial names no public key".into());
        }
        if top.contains_key("messageSignature") {
            return Err(
                "bundle holds a message signature (`cosign sign-blob`), not an image signature"
                    .into(),
            );
        }
        let env = top
            .get("dsseEnvelope")
            .and_then(Value::as_object)
            .ok_or_else(|| "bundle has no dsseEnvelope".to_string())?;
        if env.get("payloadType").and_then(Value::as_str) != Some(IN_TOTO) {
            return Err(format!(
                "DSSE payload type is {}, not {IN_TOTO}",
                env.get("payloadType").unwrap_or(&Value::Null)
            ));
        }
        let payload = env
            .get("payload")
            .and_then(Value::as_str)
            .and_then(b64)
            .ok_or_else(|| "DSSE payload is not base64".to_string())?;
        let sigs = env
            .get("signatures")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "DSSE envelope has no signatures".to_string())?;
        let signatures = sigs
            .iter()
            .map(|s| s.get("sig").and_then(Value::as_str).and_then(b64))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "a DSSE signature is not base64".to_string())?;
        Ok(Bundle {
            payload,
            signatures,
        })
    }

    /// DSSE's pre-authentication encoding of the payload: the bytes the
    /// signature is over.
    fn pae(&self) -> Vec<u8> {
        let mut m =
            format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), self.payload.len()).into_bytes();
        m.extend_from_slice(&self.payload);
        m
    }

    /// Whether one of the envelope's signatures is `key`'s.
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        let pae = self.pae();
        self.signatures.iter().any(|s| key.verify(&pae, s))
    }

    /// The sha256 digests the statement signs (call after
    /// [`Bundle::signed_by`]: the payload is untrusted before).
    pub fn subjects(&self) -> Result<Vec<Digest>, String> {
        let v: Value = serde_json::from_slice(&self.payload)
            .map_err(|e| format!("bundle statement is not JSON ({e})"))?;
        let ty = v.get("_type").and_then(Value::as_str);
        if !ty.is_some_and(|t| STATEMENTS.contains(&t)) {
            return Err(format!(
                "bundle payload is not an in-toto statement (_type {})",
                v.get("_type").unwrap_or(&Value::Null)
            ));
        }
        let predicate = v.get("predicateType").and_then(Value::as_str);
        if predicate != Some(SIGN_PREDICATE) {
            return Err(format!(
                "bundle is an attestation ({}), not a signature ({SIGN_PREDICATE})",
                v.get("predicateType").unwrap_or(&Value::Null)
            ));
        }
        let subjects = v
            .get("subject")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "bundle statement has no subject".to_string())?;
        subjects
            .iter()
            .map(|s| {
                s.get("digest")
                    .and_then(|d| d.get("sha256"))
                    .and_then(Value::as_str)
                    .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
                    .ok_or_else(|| format!("bundle subject {s} has no sha256 digest"))
            })
            .collect()
    }
}

/// Standard base64 (what protobuf's JSON form writes), URL-safe accepted.
fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// The manifests an index of referrers (from the referrers API or the
/// `sha256-HEX` tag) lists that may be bundles: those whose artifactType
/// is the bundle's, the empty config's (what cosign's tag-schema index
/// records) or absent. At most [`MAX_REFERRERS`].
pub fn referrer_candidates(index: &[u8]) -> Result<Vec<Digest>, String> {
    let v: Value =
        serde_json::from_slice(index).map_err(|e| format!("referrers index is not JSON ({e})"))?;
    let list = v
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| "referrers index has no `manifests` list".to_string())?;
    let mut out = Vec::new();
    for m in list {
        let kind = m.get("artifactType").and_then(Value::as_str);
        if !matches!(
            kind,
            None | Some(BUNDLE_MEDIA_TYPE | BUNDLE_MEDIA_TYPE_ALT | EMPTY_MEDIA_TYPE)
        ) {
            continue;
        }
        let digest = m
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<Digest>().ok())
            .ok_or_else(|| format!("referrers index entry {m} has no sha256 digest"))?;
        if out.len() == MAX_REFERRERS {
            break;
        }
        out.push(digest);
    }
    Ok(out)
}

/// The bundle layer of a referrer manifest: `Ok(None)` when the manifest
/// is another kind of artifact, an error when it says it is a bundle but
/// its layer is unusable.
pub fn bundle_layer(manifest: &[u8]) -> Result<Option<(Digest, u64)>, String> {
    let v: Value = serde_json::from_slice(manifest)
        .map_err(|e| format!("referrer manifest is not JSON ({e})"))?;
    let is_bundle = |t: Option<&str>| matches!(t, Some(BUNDLE_MEDIA_TYPE | BUNDLE_MEDIA_TYPE_ALT));
    let kind = v.get("artifactType").and_then(Value::as_str).or_else(|| {
        v.get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
    });
    if !is_bundle(kind) {
        return Ok(None);
    }
    let layer = v
        .get("layers")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|l| is_bundle(l.get("mediaType").and_then(Value::as_str)))
        })
        .ok_or_else(|| "bundle referrer has no bundle layer".to_string())?;
    let digest = layer
        .get("digest")
        .and_then(Value::as_str)
        .and_then(|d| d.parse::<Digest>().ok())
        .ok_or_else(|| "bundle layer has no sha256 digest".to_string())?;
    let size = layer.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size > MAX_BUNDLE {
        return Err(format!(
            "bundle layer is {size} bytes, more than {MAX_BUNDLE}"
        ));
    }
    Ok(Some((digest, size)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Made by cosign 3.1.1 (`cosign sign --key k.key --tlog-upload=false
    /// --use-signing-config=false`, its default bundle format) for
    /// 127.0.0.1:5443/t16/probe@DIGEST on the test registry, and read back
    /// from the `sha256-HEX` tag's referrer.
    pub(crate) const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAS8cnh8kAEy94VF8w+0LUpTbJRU6\n6QK7lRyMcvQu6XGRyvnRZZcP+ON9sa+QkMujo34sMOyQnHA7NztKxrI4KA==\n-----END PUBLIC KEY-----\n";
    pub(crate) const DIGEST: &str =
        "sha256:934b8922f34520696d2d792aa33582b2422d6106818b3e9e9588f083bb62ccae";
    pub(crate) const BUNDLE: &str = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"yXVfKWmJwLU0Q1RXXH8BmgRTaJvolV686IyoVnMTivM="}},"dsseEnvelope":{"payload":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJzdWJqZWN0IjpbeyJkaWdlc3QiOnsic2hhMjU2IjoiOTM0Yjg5MjJmMzQ1MjA2OTZkMmQ3OTJhYTMzNTgyYjI0MjJkNjEwNjgxOGIzZTllOTU4OGYwODNiYjYyY2NhZSJ9LCJhbm5vdGF0aW9ucyI6e319XSwicHJlZGljYXRlVHlwZSI6Imh0dHBzOi8vc2lnc3RvcmUuZGV2L2Nvc2lnbi9zaWduL3YxIiwicHJlZGljYXRlIjp7fX0=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"MEUCIQDYAP+ejXOiZFpoot7LbyvTIT5A3xHmoZwi8hqMf63bMgIgeYOX7j13DD8Y6r7cAA+S1Zay/sM7ur5Sz8uM+n84NnY="}]}}"#;
    /// The referrer manifest and tag-schema index cosign wrote for it.
    const REFERRER: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"},"layers":[{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","size":659,"digest":"sha256:93020a8b92d0d2cd76da6bcfa51d8a815391678b4a07c6c8ba97327fe4d8c053"}],"annotations":{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1"},"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":349,"digest":"sha256:934b8922f34520696d2d792aa33582b2422d6106818b3e9e9588f083bb62ccae"},"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#;
    const TAG_INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":877,"digest":"sha256:3be305698834ac2e233e8a41b03166512dc2aeeca8fafe84a19ebb949b002c4b","artifactType":"application/vnd.oci.empty.v1+json"}]}"#;

    fn key() -> PublicKey {
        PublicKey::from_pem(KEY.as_bytes()).unwrap()
    }

    #[test]
    fn a_real_cosign_bundle_verifies_and_names_the_digest_only() {
        assert_eq!(
            b64("yXVfKWmJwLU0Q1RXXH8BmgRTaJvolV686IyoVnMTivM=")
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            key().fingerprint,
            "the bundle's key hint is the key's fingerprint"
        );
        let b = Bundle::parse(BUNDLE.as_bytes()).unwrap();
        assert!(b.signed_by(&key()));
        assert_eq!(
            b.subjects().unwrap(),
            vec![DIGEST.parse::<Digest>().unwrap()]
        );
        // No repository anywhere in what is signed.
        let statement = String::from_utf8(b.payload.clone()).unwrap();
        assert!(
            !statement.contains("name") && !statement.contains("127.0.0.1"),
            "{statement}"
        );
    }

    #[test]
    fn another_key_or_a_changed_payload_does_not_verify() {
        let (_, other) = super::super::sigstore::test_key();
        let b = Bundle::parse(BUNDLE.as_bytes()).unwrap();
        assert!(!b.signed_by(&PublicKey::from_pem(other.as_bytes()).unwrap()));
        // The same signature over another statement (another image's digest).
        let forged = String::from_utf8(b.payload.clone())
            .unwrap()
            .replace("934b", "934c");
        let mut f = b.clone();
        f.payload = forged.into_bytes();
        assert!(!f.signed_by(&key()));
        // A signature over the bare payload (no PAE) is not accepted.
        assert!(!key().verify(&b.payload, &b.signatures[0]));
    }

    #[test]
    fn a_bundle_signed_here_over_the_pae_verifies() {
        let (pair, pem) = super::super::sigstore::test_key();
        let statement = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"{SIGN_PREDICATE}","predicate":{{}}}}"#,
            &DIGEST[7..]
        );
        let mut b = Bundle {
            payload: statement.into_bytes(),
            signatures: vec![],
        };
        let sig = pair
            .sign(&ring::rand::SystemRandom::new(), &b.pae())
            .unwrap();
        b.signatures.push(sig.as_ref().to_vec());
        let k = PublicKey::from_pem(pem.as_bytes()).unwrap();
        assert!(b.signed_by(&k));
        assert!(b
            .pae()
            .starts_with(b"DSSEv1 28 application/vnd.in-toto+json "));
    }

    #[test]
    fn malformed_bundles_are_refused_with_the_reason() {
        let swap = |from: &str, to: &str| BUNDLE.replacen(from, to, 1);
        for (bad, want) in [
            ("{".to_string(), "bundle is not JSON"),
            ("[]".to_string(), "not a JSON object"),
            (
                swap("bundle.v0.3+json", "bundle.v0.1+json"),
                "bundle media type is \"application/vnd.dev.sigstore.bundle.v0.1+json\"",
            ),
            (swap(r#""mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","#, ""), "media type is missing"),
            (swap(r#""publicKey""#, r#""certificate""#), "certificate (Fulcio or PKI)"),
            (swap("dsseEnvelope", "messageSignature"), "message signature"),
            (swap("application/vnd.in-toto+json", "text/plain"), "DSSE payload type"),
            (swap(r#""payload":"ey"#, r#""payload":"!ey"#), "payload is not base64"),
            (swap(r#""sig":"ME"#, r#""sig":"*ME"#), "not base64"),
            (BUNDLE.replace(r#"[{"sig":"MEUCIQDYAP+ejXOiZFpoot7LbyvTIT5A3xHmoZwi8hqMf63bMgIgeYOX7j13DD8Y6r7cAA+S1Zay/sM7ur5Sz8uM+n84NnY="}]"#, "[]"), "no signatures"),
        ] {
            let e = Bundle::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn statements_other_than_an_image_signature_are_refused() {
        let b = |s: &str| Bundle {
            payload: s.as_bytes().to_vec(),
            signatures: vec![],
        };
        let h = &DIGEST[7..];
        for (s, want) in [
            ("nope".to_string(), "not JSON"),
            (r#"{"_type":"x"}"#.to_string(), "not an in-toto statement"),
            (
                format!(
                    r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{h}"}}}}],"predicateType":"https://slsa.dev/provenance/v1"}}"#
                ),
                "an attestation",
            ),
            (
                format!(
                    r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"{SIGN_PREDICATE}"}}"#
                ),
                "no subject",
            ),
            (
                format!(
                    r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha512":"{h}"}}}}],"predicateType":"{SIGN_PREDICATE}"}}"#
                ),
                "no sha256 digest",
            ),
        ] {
            let e = b(&s).subjects().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn referrers_lead_to_the_bundle_layer() {
        assert_eq!(
            referrer_candidates(TAG_INDEX.as_bytes()).unwrap(),
            vec![
                "sha256:3be305698834ac2e233e8a41b03166512dc2aeeca8fafe84a19ebb949b002c4b"
                    .parse::<Digest>()
                    .unwrap()
            ]
        );
        // The referrers API's answer filtered by the registry, or not.
        let api = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","artifactType":"application/spdx+json"}]}"#;
        assert_eq!(referrer_candidates(api.as_bytes()).unwrap().len(), 1);
        assert!(referrer_candidates(b"{}")
            .unwrap_err()
            .contains("no `manifests`"));
        assert!(referrer_candidates(b"x").unwrap_err().contains("not JSON"));
        assert_eq!(
            bundle_layer(REFERRER.as_bytes()).unwrap(),
            Some((
                "sha256:93020a8b92d0d2cd76da6bcfa51d8a815391678b4a07c6c8ba97327fe4d8c053"
                    .parse()
                    .unwrap(),
                659
            ))
        );
        // Another artifact (an SBOM) is not a bundle.
        assert_eq!(
            bundle_layer(
                REFERRER
                    .replace(BUNDLE_MEDIA_TYPE, "application/spdx+json")
                    .as_bytes()
            )
            .unwrap(),
            None
        );
        let no_layer = REFERRER.replacen(
            r#""mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json""#,
            r#""mediaType":"x""#,
            1,
        );
        assert!(bundle_layer(no_layer.as_bytes())
            .unwrap_err()
            .contains("no bundle layer"));
        let huge = REFERRER.replace(r#""size":659"#, r#""size":99999999"#);
        assert!(bundle_layer(huge.as_bytes())
            .unwrap_err()
            .contains("more than"));
    }
}
