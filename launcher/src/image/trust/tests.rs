//! The decision, with key pairs made in the test and payloads as cosign
//! writes them.

use std::path::Path;

use base64::Engine as _;

use super::sigstore::{test_key, test_payload, test_sign, IndexDocument};
use super::*;
use crate::reference::ImageSpec;

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn reference(s: &str) -> ImageRef {
    match s.parse::<ImageSpec>().unwrap() {
        ImageSpec::Registry(r) => r,
        other => panic!("{other:?}"),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A policy: reg.io/signed needs `key` (matchRepository), reg.io/exact
/// needs `key` with the default rule, reg.io is open, everything else
/// is rejected.
fn policy(key_pem: &str) -> Policy {
    let k = b64(key_pem);
    let json = format!(
        r#"{{"default": [{{"type": "reject"}}],
            "transports": {{"docker": {{
                "reg.io": [{{"type": "insecureAcceptAnything"}}],
                "reg.io/signed": [{{"type": "sigstoreSigned", "keyData": "{k}", "signedIdentity": {{"type": "matchRepository"}}}}],
                "reg.io/exact": [{{"type": "sigstoreSigned", "keyData": "{k}"}}],
                "reg.io/both": [{{"type": "insecureAcceptAnything"}}, {{"type": "sigstoreSigned", "keyData": "{k}", "signedIdentity": {{"type": "matchRepository"}}}}, {{"type": "reject"}}]
            }}}}}}"#
    );
    Policy::parse(json.as_bytes(), Path::new("/etc/containers/policy.json")).unwrap()
}

fn set(sigs: Vec<Signature>) -> SignatureSet {
    SignatureSet {
        signatures: sigs,
        ..SignatureSet::default()
    }
}

fn why(r: Result<Accepted, Refusal>) -> Why {
    r.unwrap_err().why
}

#[test]
fn signed_image_is_accepted_and_says_by_which_key() {
    let (pair, pem) = test_key();
    let p = policy(&pem);
    let r = reference("reg.io/signed:1");
    let image: Digest = IMAGE.parse().unwrap();
    let s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed", IMAGE),
    )]);
    match check(&p, Identity::Registry(&r), &image, Some(&s)).unwrap() {
        Accepted::Signed {
            scope,
            keys,
            identity,
        } => {
            assert_eq!(scope, r#"scope docker "reg.io/signed""#);
            assert_eq!(keys, ["keyData"]);
            assert_eq!(identity, "reg.io/signed");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_refusal_names_its_reason() {
    let (pair, pem) = test_key();
    let (stranger, _) = test_key();
    let p = policy(&pem);
    let r = reference("reg.io/signed:1");
    let image: Digest = IMAGE.parse().unwrap();
    let id = Identity::Registry(&r);
    assert_eq!(why(check(&p, id, &image, None)), Why::NoSignature);
    assert_eq!(
        why(check(&p, id, &image, Some(&set(vec![])))),
        Why::NoSignature
    );
    let by_stranger = set(vec![test_sign(
        &stranger,
        &test_payload("reg.io/signed", IMAGE),
    )]);
    assert!(matches!(
        why(check(&p, id, &image, Some(&by_stranger))),
        Why::UntrustedKey { .. }
    ));
    let for_other = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed", OTHER),
    )]);
    assert_eq!(
        why(check(&p, id, &image, Some(&for_other))),
        Why::OtherDigest {
            signed: OTHER.parse().unwrap()
        }
    );
    let other_repo = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/elsewhere", IMAGE),
    )]);
    assert!(matches!(
        why(check(&p, id, &image, Some(&other_repo))),
        Why::Identity { .. }
    ));
    let junk = set(vec![test_sign(
        &pair,
        br#"{"critical":{},"optional":null}"#,
    )]);
    assert!(matches!(
        why(check(&p, id, &image, Some(&junk))),
        Why::Malformed(_)
    ));
    let not_b64 = set(vec![Signature {
        payload: "%%".into(),
        signature: "%%".into(),
    }]);
    assert!(matches!(
        why(check(&p, id, &image, Some(&not_b64))),
        Why::Malformed(_)
    ));
    let mut with_problem = set(vec![]);
    with_problem
        .problems
        .push("signature manifest x is not JSON".into());
    assert_eq!(
        why(check(&p, id, &image, Some(&with_problem))),
        Why::Malformed("signature manifest x is not JSON".into())
    );
    // The most telling failure is reported; one good signature suffices.
    let mixed = set(vec![
        test_sign(&stranger, &test_payload("reg.io/signed", IMAGE)),
        test_sign(&pair, &test_payload("reg.io/signed", OTHER)),
    ]);
    assert!(matches!(
        why(check(&p, id, &image, Some(&mixed))),
        Why::OtherDigest { .. }
    ));
    let mut good = mixed.clone();
    good.signatures
        .push(test_sign(&pair, &test_payload("reg.io/signed", IMAGE)));
    assert!(check(&p, id, &image, Some(&good)).is_ok());
}

#[test]
fn refusal_is_one_line_with_image_scope_reason_and_fix() {
    let (_, pem) = test_key();
    let p = policy(&pem);
    let r = reference("reg.io/signed:1");
    let e = check(&p, Identity::Registry(&r), &IMAGE.parse().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.starts_with(
            "reg.io/signed:1: refused by the site image policy /etc/containers/policy.json"
        ),
        "{e}"
    );
    assert!(
        e.contains(r#"(scope docker "reg.io/signed"): no signature; sign it"#),
        "{e}"
    );
    let r = reference("ghcr.io/x:1");
    let e = check(&p, Identity::Registry(&r), &IMAGE.parse().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(the default scope): repository not allowed; use an image from"),
        "{e}"
    );
}

#[test]
fn default_identity_rule_refuses_cosign_repository_claims_for_tags() {
    let (pair, pem) = test_key();
    let p = policy(&pem);
    let image: Digest = IMAGE.parse().unwrap();
    let s = set(vec![test_sign(&pair, &test_payload("reg.io/exact", IMAGE))]);
    let tagged = reference("reg.io/exact:1");
    assert!(matches!(
        why(check(&p, Identity::Registry(&tagged), &image, Some(&s))),
        Why::Identity { .. }
    ));
    // By digest, matchRepoDigestOrExact wants a repository match... but
    // cosign's claim has no tag or digest, which the rule never accepts.
    let by_digest = reference(&format!("reg.io/exact@{IMAGE}"));
    assert!(matches!(
        why(check(&p, Identity::Registry(&by_digest), &image, Some(&s))),
        Why::Identity { .. }
    ));
    let s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/exact:1", IMAGE),
    )]);
    assert!(check(&p, Identity::Registry(&tagged), &image, Some(&s)).is_ok());
}

#[test]
fn scope_precedence_decides_which_requirements_apply() {
    let (pair, pem) = test_key();
    let p = policy(&pem);
    let image: Digest = IMAGE.parse().unwrap();
    // Registry rule: open, no signature needed.
    let open = reference("reg.io/anything:1");
    assert_eq!(
        check(&p, Identity::Registry(&open), &image, None).unwrap(),
        Accepted::Unverified {
            scope: r#"scope docker "reg.io""#.into()
        }
    );
    // Repository rule over the registry rule: signature needed.
    let signed = reference("reg.io/signed:1");
    assert_eq!(
        why(check(&p, Identity::Registry(&signed), &image, None)),
        Why::NoSignature
    );
    // A nested repository is inside the repository scope too.
    let nested = reference("reg.io/signed/sub:1");
    let s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed/sub", IMAGE),
    )]);
    assert!(check(&p, Identity::Registry(&nested), &image, Some(&s)).is_ok());
    // The global default rejects.
    let elsewhere = reference("other.io/x:1");
    assert_eq!(
        why(check(&p, Identity::Registry(&elsewhere), &image, None)),
        Why::Rejected
    );
    // Every requirement of a scope must hold: a trailing reject wins.
    let both = reference("reg.io/both:1");
    let s = set(vec![test_sign(&pair, &test_payload("reg.io/both", IMAGE))]);
    assert_eq!(
        why(check(&p, Identity::Registry(&both), &image, Some(&s))),
        Why::Rejected
    );
}

#[test]
fn local_images_get_the_default() {
    let (_, pem) = test_key();
    let image: Digest = IMAGE.parse().unwrap();
    assert_eq!(
        why(check(&policy(&pem), Identity::Local, &image, None)),
        Why::Rejected
    );
    let k = b64(&pem);
    let signed_default = Policy::parse(
        format!(r#"{{"default": [{{"type": "sigstoreSigned", "keyData": "{k}"}}]}}"#).as_bytes(),
        Path::new("p.json"),
    )
    .unwrap();
    assert_eq!(
        why(check(&signed_default, Identity::Local, &image, None)),
        Why::Local
    );
    let open = Policy::parse(
        br#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
        Path::new("p.json"),
    )
    .unwrap();
    assert!(check(&open, Identity::Local, &image, None).is_ok());
}

#[test]
fn an_index_signature_covers_the_images_it_lists() {
    let (pair, pem) = test_key();
    let p = policy(&pem);
    let r = reference("reg.io/signed:1");
    let image: Digest = IMAGE.parse().unwrap();
    let index = format!(
        r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{IMAGE}", "size": 1, "platform": {{"os": "linux", "architecture": "amd64"}}}}]}}"#
    );
    let index_digest = crate::image::registry::sha256_digest(index.as_bytes());
    let mut s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed", index_digest.as_str()),
    )]);
    s.index = Some(IndexDocument {
        digest: index_digest.clone(),
        body: b64(&index),
    });
    assert!(check(&p, Identity::Registry(&r), &image, Some(&s)).is_ok());
    // The same index signature does not cover an image the index lacks...
    let other: Digest = OTHER.parse().unwrap();
    assert!(matches!(
        why(check(&p, Identity::Registry(&r), &other, Some(&s))),
        Why::OtherDigest { .. }
    ));
    // ...nor through an index whose bytes are not the signed digest.
    s.index = Some(IndexDocument {
        digest: index_digest,
        body: b64(&index.replace("amd64", "arm64")),
    });
    assert!(matches!(
        why(check(&p, Identity::Registry(&r), &image, Some(&s))),
        Why::OtherDigest { .. }
    ));
}

#[test]
fn decisions_are_cached_per_policy_and_image() {
    let (pair, pem) = test_key();
    let dir = tempfile::tempdir().unwrap();
    let cache = DecisionCache::new(dir.path().join("trust"));
    let p = policy(&pem);
    let r = reference("reg.io/signed:1");
    let image: Digest = IMAGE.parse().unwrap();
    let s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed", IMAGE),
    )]);
    assert!(
        !cache
            .check(&p, Identity::Registry(&r), &image, Some(&s))
            .unwrap(),
        "first check verifies"
    );
    assert!(
        cache
            .check(&p, Identity::Registry(&r), &image, Some(&s))
            .unwrap(),
        "second is cached"
    );
    // Another policy (another key): verified again, and refused.
    let (_, other_pem) = test_key();
    let p2 = policy(&other_pem);
    assert!(cache
        .check(&p2, Identity::Registry(&r), &image, Some(&s))
        .is_err());
    assert!(
        cache
            .check(&p2, Identity::Registry(&r), &image, Some(&s))
            .is_err(),
        "refusals are not cached"
    );
    // Another identity is another decision.
    let r2 = reference("reg.io/signed:2");
    assert!(!cache
        .check(&p, Identity::Registry(&r2), &image, Some(&s))
        .unwrap());
}

#[test]
fn signatures_are_kept_in_the_store() {
    let (pair, _) = test_key();
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().to_path_buf(), crate::image::store::Scope::User);
    let image: Digest = IMAGE.parse().unwrap();
    assert!(load_signatures(&root, &image).is_none());
    let s = set(vec![test_sign(
        &pair,
        &test_payload("reg.io/signed", IMAGE),
    )]);
    save_signatures(&root, &image, &s).unwrap();
    assert_eq!(load_signatures(&root, &image).unwrap(), s);
    assert!(signatures_path(&root, &image).is_file());
    // Fetched again from another repository: both kept, once each.
    let more = set(vec![test_sign(&pair, &test_payload("reg.io/other", IMAGE))]);
    save_signatures(&root, &image, &more).unwrap();
    save_signatures(&root, &image, &more).unwrap();
    assert_eq!(load_signatures(&root, &image).unwrap().signatures.len(), 2);
    gc_signatures(&root);
    assert!(
        load_signatures(&root, &image).is_none(),
        "the image is not stored: its signatures go"
    );
    assert!(signatures_path(&root, &image).ends_with(format!("signatures/{}.json", image.hex())));
}

/// A policy trusting `pem` for the real cosign bundle's repository.
fn bundle_policy(pem: &str, identity: &str) -> Policy {
    let json = format!(
        r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{
            "127.0.0.1:5443/t16/probe": [{{"type": "sigstoreSigned", "keyData": "{}", "signedIdentity": {identity}}}]}}}}}}"#,
        b64(pem)
    );
    Policy::parse(json.as_bytes(), Path::new("/etc/containers/policy.json")).unwrap()
}

fn bundle_set(bundles: &[&[u8]]) -> SignatureSet {
    SignatureSet {
        bundles: bundles
            .iter()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            .collect(),
        ..SignatureSet::default()
    }
}

#[test]
fn a_real_cosign_bundle_passes_key_and_digest_and_is_refused_for_its_missing_identity() {
    use super::bundle::tests::{BUNDLE, DIGEST, KEY};
    let r = reference("127.0.0.1:5443/t16/probe:v1");
    let image: Digest = DIGEST.parse().unwrap();
    let good = bundle_set(&[BUNDLE.as_bytes()]);
    for rule in [
        r#"{"type": "matchRepository"}"#,
        r#"{"type": "matchRepoDigestOrExact"}"#,
        r#"{"type": "exactRepository", "dockerRepository": "127.0.0.1:5443/t16/probe"}"#,
    ] {
        let p = bundle_policy(KEY, rule);
        match why(check(&p, Identity::Registry(&r), &image, Some(&good))) {
            Why::NoIdentity { .. } => {}
            other => panic!("{rule}: {other:?}"),
        }
    }
    let p = bundle_policy(KEY, r#"{"type": "matchRepository"}"#);
    let e = check(&p, Identity::Registry(&r), &image, Some(&good)).unwrap_err().to_string();
    assert!(
        e.contains("sigstore bundle (cosign 3's default format), which names no repository, so signedIdentity matchRepository cannot accept it")
            && e.contains("--new-bundle-format=false"),
        "{e}"
    );
    // The same bundle for another image: the subject digest does not match.
    let other: Digest = OTHER.parse().unwrap();
    assert_eq!(
        why(check(&p, Identity::Registry(&r), &other, Some(&good))),
        Why::OtherDigest { signed: image.clone() }
    );
    // Trusting another key.
    let (_, stranger) = test_key();
    assert!(matches!(
        why(check(&bundle_policy(&stranger, r#"{"type": "matchRepository"}"#), Identity::Registry(&r), &image, Some(&good))),
        Why::UntrustedKey { .. }
    ));
    // Unreadable bundles.
    for bad in [&b"{"[..], br#"{"mediaType": "application/json"}"#] {
        assert!(matches!(
            why(check(&p, Identity::Registry(&r), &image, Some(&bundle_set(&[bad])))),
            Why::Malformed(m) if m.starts_with("sigstore bundle: ")
        ));
    }
    // A classic signature next to the bundle is what accepts the image.
    let (pair, pem) = test_key();
    let mut both = good.clone();
    both.signatures.push(test_sign(&pair, &test_payload("127.0.0.1:5443/t16/probe", DIGEST)));
    let p = bundle_policy(&pem, r#"{"type": "matchRepository"}"#);
    assert!(check(&p, Identity::Registry(&r), &image, Some(&both)).is_ok());
}
