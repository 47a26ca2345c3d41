//! cosign's key-based image signatures: the public key, the signed
//! "simple signing" payload, and the ECDSA check.
//!
//! cosign signs a JSON payload
//! `{"critical": {"identity": {"docker-reference": REPO}, "image":
//! {"docker-manifest-digest": DIGEST}, "type": "cosign container image
//! signature"}, "optional": ...}` with ECDSA P-256 over SHA-256, and stores
//! the payload as a layer of the `sha256-HEX.sig` tag, the base64 DER
//! signature in the layer's `dev.cosignproject.cosign/signature`
//! annotation. The payload is parsed only after its signature checks, and
//! as strictly as containers/image parses it (exact field sets), so two
//! tools never read one payload two ways.
//!
//! The cryptography is ring's (`ECDSA_P256_SHA256_ASN1`); the PEM
//! SubjectPublicKeyInfo is read with the `spki` crate. Nothing here is
//! hand-rolled beyond picking fields.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use spki::der::{asn1::ObjectIdentifier, DecodePem, Encode};

use crate::reference::Digest;

/// `id-ecPublicKey` and the `prime256v1` curve: cosign's default key.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// What a simple-signing payload's `critical.type` must say.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Media type of the payload layers of a `.sig` manifest.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The uncompressed SEC1 point, as ring takes it.
    point: Vec<u8>,
    /// sha256 of the DER SubjectPublicKeyInfo (what cosign prints as the
    /// key's hint), hex.
    pub fingerprint: String,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (what `cosign generate-key-pair` writes to
    /// `cosign.pub`). Other key types are refused with the reason.
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        let text =
            std::str::from_utf8(pem).map_err(|_| "the public key is not PEM text".to_string())?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_pem(text.trim())
            .map_err(|e| format!("not a PEM `PUBLIC KEY` ({e}); give the cosign.pub that `cosign generate-key-pair` wrote"))?;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
            return Err(format!(
                "the public key's algorithm is {}{}, not ECDSA P-256 (cosign's default, the only kind Shoal verifies)",
                spki.algorithm.oid,
                curve.map(|c| format!(" ({c})")).unwrap_or_default()
            ));
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| "the public key's bit string is not whole bytes".to_string())?
            .to_vec();
        if point.len() != 65 || point[0] != 4 {
            return Err("the public key is not an uncompressed P-256 point".into());
        }
        let der = spki
            .to_der()
            .map_err(|e| format!("cannot re-encode the public key ({e})"))?;
        Ok(PublicKey {
            point,
            fingerprint: format!("{:x}", Sha256::digest(&der)),
        })
    }

    /// Whether `signature` (DER) is this key's ECDSA P-256 SHA-256
    /// signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(message, signature)
        .is_ok()
    }
}

/// What a verified payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The manifest (or index) digest that was signed.
    pub digest: Digest,
    /// The repository (or reference) the signer named.
    pub docker_reference: String,
}

impl Payload {
    /// Parses a simple-signing payload; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Payload, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("payload is not JSON ({e})"))?;
        let top = exact(&v, "payload", &["critical", "optional"])?;
        match &top["optional"] {
            Value::Null | Value::Object(_) => {}
            _ => return Err("payload `optional` is neither null nor an object".into()),
        }
        let critical = exact(&top["critical"], "critical", &["type", "image", "identity"])?;
        if critical["type"].as_str() != Some(PAYLOAD_TYPE) {
            return Err(format!(
                "payload type is {}, not {PAYLOAD_TYPE:?}",
                critical["type"]
            ));
        }
        let image = exact(
            &critical["image"],
            "critical.image",
            &["docker-manifest-digest"],
        )?;
        let digest = image["docker-manifest-digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
            .ok_or_else(|| {
                format!(
                    "docker-manifest-digest {} is not a sha256 digest",
                    image["docker-manifest-digest"]
                )
            })?;
        let identity = exact(
            &critical["identity"],
            "critical.identity",
            &["docker-reference"],
        )?;
        let docker_reference = identity["docker-reference"]
            .as_str()
            .ok_or_else(|| "docker-reference is not a string".to_string())?
            .to_string();
        Ok(Payload {
            digest,
            docker_reference,
        })
    }
}

/// `v` must be an object with exactly the fields `fields`.
fn exact<'v>(v: &'v Value, what: &str, fields: &[&str]) -> Result<&'v Map<String, Value>, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{what} is not an object"))?;
    if o.len() != fields.len() || !fields.iter().all(|f| o.contains_key(*f)) {
        let have: Vec<&str> = o.keys().map(String::as_str).collect();
        return Err(format!(
            "{what} has fields [{}], expected exactly [{}]",
            have.join(", "),
            fields.join(", ")
        ));
    }
    Ok(o)
}

/// One signature as fetched: the payload bytes and the signature, both as
/// the registry served them (base64 in JSON so the set travels in a pin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// base64 of the payload blob.
    pub payload: String,
    /// The `dev.cosignproject.cosign/signature` annotation (base64 DER).
    pub signature: String,
}

impl Signature {
    pub fn new(payload: &[u8], signature_b64: &str) -> Signature {
        Signature {
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            signature: signature_b64.trim().to_string(),
        }
    }

    /// The payload bytes and the DER signature; `None` if either is not
    /// base64.
    pub fn decode(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let b = base64::engine::general_purpose::STANDARD;
        Some((
            b.decode(&self.payload).ok()?,
            b.decode(&self.signature).ok()?,
        ))
    }
}

/// Everything needed to judge one image offline: the signatures found for
/// it (and for the index it was chosen from), kept in the store next to
/// the image and carried in the job's pin to every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureSet {
    /// The index the image was selected from, when it came from one: a
    /// signature of the index covers the image only through this document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexDocument>,
    pub signatures: Vec<Signature>,
    /// Sigstore bundles (cosign 3's default format), base64 of the bundle
    /// JSON as the registry served it: found through the referrers API or
    /// the `sha256-HEX` tag, checked by [`super::bundle`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// Signature documents found but unreadable (a malformed `.sig`
    /// manifest, a signature format Shoal does not verify): reported when
    /// no signature is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// When they were fetched (seconds since the epoch).
    #[serde(default)]
    pub fetched_at: u64,
}

impl SignatureSet {
    /// Adds what `other` holds that this set lacks (signatures, bundles,
    /// problems; the index when this set has none).
    pub fn merge(&mut self, other: SignatureSet) {
        for sig in other.signatures {
            if !self.signatures.contains(&sig) {
                self.signatures.push(sig);
            }
        }
        for b in other.bundles {
            if !self.bundles.contains(&b) {
                self.bundles.push(b);
            }
        }
        for p in other.problems {
            if !self.problems.contains(&p) {
                self.problems.push(p);
            }
        }
        if self.index.is_none() {
            self.index = other.index;
        }
        self.fetched_at = self.fetched_at.max(other.fetched_at);
    }
}

/// An index as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDocument {
    pub digest: Digest,
    /// base64 of the index bytes.
    pub body: String,
}

#[cfg(test)]
pub(crate) fn test_key() -> (ring::signature::EcdsaKeyPair, String) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use spki::der::{asn1::BitString, Any, EncodePem};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let spki = spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: EC_PUBLIC_KEY,
            parameters: Some(Any::from(P256)),
        },
        subject_public_key: BitString::from_bytes(pair.public_key().as_ref()).unwrap(),
    };
    (pair, spki.to_pem(spki::der::pem::LineEnding::LF).unwrap())
}

/// A payload cosign would write for `digest` in `repository`.
#[cfg(test)]
pub(crate) fn test_payload(repository: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repository}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

#[cfg(test)]
pub(crate) fn test_sign(pair: &ring::signature::EcdsaKeyPair, payload: &[u8]) -> Signature {
    let sig = pair
        .sign(&ring::rand::SystemRandom::new(), payload)
        .unwrap();
    Signature::new(
        payload,
        &base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:4abaff302879772b31c5bc497b72e8cf73d573b2f0b326a901482bbbc46630f2";

    #[test]
    fn signature_made_with_the_key_verifies_and_others_do_not() {
        let (pair, pem) = test_key();
        let key = PublicKey::from_pem(pem.as_bytes()).unwrap();
        let payload = test_payload("reg.io/app", D);
        let sig = test_sign(&pair, &payload);
        let (p, s) = sig.decode().unwrap();
        assert!(key.verify(&p, &s));
        let mut tampered = p.clone();
        tampered[10] ^= 1;
        assert!(!key.verify(&tampered, &s));
        let (_, other_pem) = test_key();
        assert!(!PublicKey::from_pem(other_pem.as_bytes())
            .unwrap()
            .verify(&p, &s));
        assert!(!key.verify(&p, b"not DER"));
    }

    #[test]
    fn a_real_cosign_key_and_signature_verify() {
        // Made by `cosign generate-key-pair` and `cosign sign --key`
        // (cosign 3.1.1, --new-bundle-format=false) against a local registry.
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYUmoj2wgX8GY+77u6ovIpuA5jxim\nagrOXlRXSpooNTub+UmcLUVcvprKL5a+RobJx6TRMuZm5YuJ0wboYXa12g==\n-----END PUBLIC KEY-----\n";
        let payload = r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5916/i16/app"},"image":{"docker-manifest-digest":"sha256:4abaff302879772b31c5bc497b72e8cf73d573b2f0b326a901482bbbc46630f2"},"type":"cosign container image signature"},"optional":null}"#;
        let sig = Signature::new(payload.as_bytes(), "MEUCIQDUftEzwPI4eaJ8fh16H8qLQysU4dMUqpHAJzkSdIr/agIgJtfVuYsL7gg1WllyKnkU47XM9yIt1C8jMK4RmBbUPFo=");
        let key = PublicKey::from_pem(pem.as_bytes()).unwrap();
        let (p, s) = sig.decode().unwrap();
        assert!(key.verify(&p, &s));
        let parsed = Payload::parse(&p).unwrap();
        assert_eq!(parsed.digest.as_str(), D);
        assert_eq!(parsed.docker_reference, "127.0.0.1:5916/i16/app");
    }

    #[test]
    fn keys_other_than_p256_are_refused() {
        // An Ed25519 SubjectPublicKeyInfo.
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(ed.as_bytes()).unwrap_err();
        assert!(
            e.contains("not ECDSA P-256") && e.contains("1.3.101.112"),
            "{e}"
        );
        let e = PublicKey::from_pem(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n").unwrap_err();
        assert!(e.contains("cosign.pub"), "{e}");
        assert!(PublicKey::from_pem(b"garbage").is_err());
    }

    #[test]
    fn payloads_are_parsed_strictly() {
        assert_eq!(
            Payload::parse(&test_payload("r.io/a", D))
                .unwrap()
                .docker_reference,
            "r.io/a"
        );
        let with_optional = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":{{"creator":"x","sig":"y"}}}}"#
        );
        assert!(Payload::parse(with_optional.as_bytes()).is_ok());
        for (bad, want) in [
            ("[]".to_string(), "not an object"),
            ("{".to_string(), "not JSON"),
            (r#"{"critical":{}}"#.to_string(), "expected exactly [critical, optional]"),
            (
                format!(r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"atomic container signature"}},"optional":null}}"#),
                "payload type",
            ),
            (
                r#"{"critical":{"identity":{"docker-reference":"r.io/a"},"image":{"docker-manifest-digest":"md5:00"},"type":"cosign container image signature"},"optional":null}"#.to_string(),
                "not a sha256 digest",
            ),
            (
                format!(r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a","extra":1}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#),
                "critical.identity has fields",
            ),
            (
                format!(r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature","more":1}},"optional":null}}"#),
                "critical has fields",
            ),
            (
                format!(r#"{{"critical":{{"identity":{{"docker-reference":7}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#),
                "not a string",
            ),
        ] {
            let e = Payload::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn signature_sets_round_trip_through_json() {
        let (pair, _) = test_key();
        let set = SignatureSet {
            index: None,
            signatures: vec![test_sign(&pair, &test_payload("r.io/a", D))],
            bundles: vec!["e30=".into()],
            problems: vec![],
            fetched_at: 1,
        };
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<SignatureSet>(&json).unwrap(), set);
        assert!(Signature {
            payload: "!".into(),
            signature: "x".into()
        }
        .decode()
        .is_none());
    }
}
