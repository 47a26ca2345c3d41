//! Unit tests of `policy` (moved out of it to keep the file to one job).

use super::super::sigstore::test_key;
use super::*;

fn reference(s: &str) -> ImageRef {
    match s.parse::<ImageSpec>().unwrap() {
        ImageSpec::Registry(r) => r,
        other => panic!("{other:?}"),
    }
}

fn parse(json: &str) -> Result<Policy, PolicyError> {
    Policy::parse(json.as_bytes(), Path::new("/etc/containers/policy.json"))
}

fn scope_of(p: &Policy, r: &str) -> Scope {
    p.requirements_for(&reference(r)).0
}

#[test]
fn scope_candidates_follow_containers_image() {
    assert_eq!(
        scope_candidates(&reference("reg.example.com:5000/team/sub/app:1")),
        [
            "reg.example.com:5000/team/sub/app:1",
            "reg.example.com:5000/team/sub/app",
            "reg.example.com:5000/team/sub",
            "reg.example.com:5000/team",
            "reg.example.com:5000",
            "*.example.com",
            "*.com",
            ""
        ]
    );
    let hub = scope_candidates(&reference("busybox"));
    assert_eq!(
        hub[..4],
        [
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox",
            "docker.io/library",
            "docker.io"
        ]
    );
    assert_eq!(hub[4], "*.io");
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        scope_candidates(&reference(&format!("localhost/x:1@{d}")))[0],
        format!("localhost/x@{d}")
    );
    assert_eq!(
        scope_candidates(&reference("127.0.0.1:5443/i16/app:v1"))[4..],
        ["*.0.0.1", "*.0.1", "*.1", ""]
    );
}

#[test]
fn most_specific_scope_wins() {
    let p = parse(
        r#"{"default": [{"type": "reject"}],
                "transports": {"docker": {
                    "": [{"type": "insecureAcceptAnything"}],
                    "reg.example.com": [{"type": "reject"}],
                    "reg.example.com/team": [{"type": "insecureAcceptAnything"}],
                    "reg.example.com/team/app:1": [{"type": "reject"}],
                    "*.example.com": [{"type": "reject"}]
                }}}"#,
    )
    .unwrap();
    assert_eq!(
        scope_of(&p, "reg.example.com/team/app:1"),
        Scope::Docker("reg.example.com/team/app:1".into())
    );
    assert_eq!(
        scope_of(&p, "reg.example.com/team/app:2"),
        Scope::Docker("reg.example.com/team".into())
    );
    assert_eq!(
        scope_of(&p, "reg.example.com/other:2"),
        Scope::Docker("reg.example.com".into())
    );
    assert_eq!(
        scope_of(&p, "mirror.example.com/x"),
        Scope::Docker("*.example.com".into())
    );
    assert_eq!(scope_of(&p, "ghcr.io/x"), Scope::Docker("".into()));
    // No docker section at all: the global default.
    let p = parse(r#"{"default": [{"type": "reject"}], "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}"#).unwrap();
    assert_eq!(scope_of(&p, "ghcr.io/x"), Scope::Default);
    assert_eq!(p.other_transports, ["docker-daemon"]);
    assert_eq!(
        p.requirements_for(&reference("ghcr.io/x")).1,
        [Requirement::Reject]
    );
}

#[test]
fn debian_default_policy_parses() {
    let p = parse(
        r#"{"default": [{"type": "insecureAcceptAnything"}],
                "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    assert_eq!(
        p.default_requirements(),
        [Requirement::InsecureAcceptAnything]
    );
}

#[test]
fn refused_content_is_named() {
    let cases = [
        (r#"{}"#, "no `default`"),
        (r#"{"default": []}"#, "empty"),
        (
            r#"{"default": [{"type": "reject"}], "extra": 1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"default": [{"type": "reject", "x": 1}]}"#,
            "unknown field `x`",
        ),
        (
            r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}]}"#,
            "GPG simple signing (`signedBy`)",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "fulcio": {}, "rekorPublicKeyPath": "/r"}]}"#,
            "`fulcio`",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "/k", "rekorPublicKeyPath": "/r"}]}"#,
            "`rekorPublicKeyPath`",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned"}]}"#,
            "exactly one of",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "rel.pub"}]}"#,
            "not an absolute path",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent/k.pub"}]}"#,
            "cannot read the public key",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "keyData": "!!"}]}"#,
            "not base64",
        ),
        (
            r#"{"default": [{"type": "frobnicate"}]}"#,
            "unknown requirement type \"frobnicate\"",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"busybox": [{"type": "reject"}]}}}"#,
            "fully expanded",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"docker.io/busybox": [{"type": "reject"}]}}}"#,
            "docker.io/library/busybox",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"*.": [{"type": "reject"}]}}}"#,
            "wildcard",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"example*.*.com": [{"type": "reject"}]}}}"#,
            "not a registry host",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"dir": {"": [{"type": "signedBy"}]}}}"#,
            "signedBy",
        ),
        ("not json", "not valid JSON"),
    ];
    for (json, want) in cases {
        let e = parse(json).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.starts_with("/etc/containers/policy.json: "),
            "{json}: {e}"
        );
    }
    let e = parse(r#"{"default": [{"type": "reject"}], "transports": {"docker": {"reg.io/x": [{"type": "frob"}]}}}"#)
            .unwrap_err()
            .to_string();
    assert!(e.contains(r#"transports.docker."reg.io/x"[0]: "#), "{e}");
}

#[test]
fn identity_rules() {
    let tagged = Named::of(&reference("reg.io/team/app:1"));
    let d = format!("sha256:{}", "b".repeat(64));
    let by_digest = Named::of(&reference(&format!("reg.io/team/app@{d}")));
    use SignedIdentity::*;
    // cosign signs the repository only.
    assert!(!MatchRepoDigestOrExact.matches(&tagged, "reg.io/team/app"));
    assert!(MatchRepoDigestOrExact.matches(&tagged, "reg.io/team/app:1"));
    assert!(!MatchRepoDigestOrExact.matches(&tagged, "reg.io/team/app:2"));
    assert!(MatchRepoDigestOrExact.matches(&by_digest, "reg.io/team/app:2"));
    assert!(!MatchRepoDigestOrExact.matches(&by_digest, "reg.io/team/app"));
    assert!(MatchRepository.matches(&tagged, "reg.io/team/app"));
    assert!(MatchRepository.matches(&tagged, "reg.io/team/app:9"));
    assert!(!MatchRepository.matches(&tagged, "reg.io/team/other"));
    assert!(!MatchRepository.matches(&tagged, "reg.io/team/app/sub"));
    assert!(MatchExact.matches(&tagged, "reg.io/team/app:1"));
    assert!(!MatchExact.matches(&tagged, "reg.io/team/app"));
    assert!(!MatchExact.matches(&by_digest, "reg.io/team/app:1"));
    let exact = ExactReference(Named::parse("vendor.io/p/app:1").unwrap());
    assert!(exact.matches(&tagged, "vendor.io/p/app:1"));
    assert!(!exact.matches(&tagged, "reg.io/team/app:1"));
    let repo = ExactRepository(Named::parse("vendor.io/p/app").unwrap());
    assert!(repo.matches(&tagged, "vendor.io/p/app"));
    assert!(!repo.matches(&tagged, "reg.io/team/app"));
    let remap = RemapIdentity {
        prefix: "mirror.io/vendor".into(),
        signed_prefix: "vendor.io".into(),
    };
    let mirrored = Named::of(&reference("mirror.io/vendor/p/app:1"));
    assert!(remap.matches(&mirrored, "vendor.io/p/app:1"));
    assert!(!remap.matches(&mirrored, "vendor.io/p/app"));
    assert!(!remap.matches(&mirrored, "mirror.io/vendor/p/app"));
    // Outside the prefix: no remapping, plain matchRepoDigestOrExact.
    let prefix_only = Named::of(&reference("mirror.io/vendorx/app:1"));
    assert!(remap.matches(&prefix_only, "mirror.io/vendorx/app:1"));
    assert!(!remap.matches(&prefix_only, "vendor.iox/app:1"));
    // Docker Hub spellings are normalized on both sides.
    let hub = Named::of(&reference("busybox:1"));
    assert!(MatchRepository.matches(&hub, "docker.io/library/busybox"));
    assert!(MatchRepository.matches(&hub, "busybox"));
    assert!(!MatchRepository.matches(&tagged, "not a reference"));
}

#[test]
fn identity_fields_are_checked() {
    for (id, want) in [
        (
            r#"{"type": "exactReference", "dockerReference": "reg.io/app"}"#,
            "must name a tag or digest",
        ),
        (
            r#"{"type": "exactRepository", "dockerRepository": "reg.io/app:1"}"#,
            "without tag or digest",
        ),
        (
            r#"{"type": "remapIdentity", "prefix": "reg.io/x:1", "signedPrefix": "a.io"}"#,
            "fully expanded",
        ),
        (
            r#"{"type": "matchRepository", "x": 1}"#,
            "unknown field `x`",
        ),
        (
            r#"{"type": "matchSomething"}"#,
            "unknown signedIdentity type",
        ),
    ] {
        let data = base64::engine::general_purpose::STANDARD.encode(test_key().1);
        let json = format!(
            r#"{{"default": [{{"type": "sigstoreSigned", "keyData": "{data}", "signedIdentity": {id}}}]}}"#
        );
        let e = parse(&json).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("default[0].signedIdentity"),
            "{id}: {e}"
        );
    }
}

#[test]
fn keys_load_and_change_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pub");
    std::fs::write(&key, test_key().1).unwrap();
    let json = format!(
        r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"reg.io/app": [{{"type": "sigstoreSigned", "keyPath": "{}", "signedIdentity": {{"type": "matchRepository"}}}}]}}}}}}"#,
        key.display()
    );
    let p = parse(&json).unwrap();
    let (_, reqs) = p.requirements_for(&reference("reg.io/app:1"));
    match &reqs[0] {
        Requirement::SigstoreSigned { keys, identity } => {
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].source, key.display().to_string());
            assert_eq!(identity, &SignedIdentity::MatchRepository);
        }
        other => panic!("{other:?}"),
    }
    let before = p.fingerprint.clone();
    std::fs::write(&key, test_key().1).unwrap();
    assert_ne!(
        parse(&json).unwrap().fingerprint,
        before,
        "a changed key file is another policy"
    );
    std::fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let e = parse(&json).unwrap_err().to_string();
    assert!(e.contains(&key.display().to_string()), "{e}");
}

#[test]
fn documented_admin_policy_allows_one_signed_repository_and_rejects_the_rest() {
    let doc = include_str!("../../../../packaging/image-policy.md");
    let json = doc
        .split("```json\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site-cosign.pub");
    std::fs::write(&key, test_key().1).unwrap();
    let json = json.replace(
        "/etc/containers/keys/site-cosign.pub",
        &key.display().to_string(),
    );
    let p = parse(&json).unwrap();
    let (scope, reqs) = p.requirements_for(&reference("registry.example.org/hpc/apps:1"));
    assert_eq!(scope, Scope::Docker("registry.example.org/hpc/apps".into()));
    assert!(matches!(
        &reqs[0],
        Requirement::SigstoreSigned {
            identity: SignedIdentity::MatchRepository,
            ..
        }
    ));
    assert_eq!(
        p.requirements_for(&reference("registry.example.org/hpc/other:1"))
            .1,
        [Requirement::Reject]
    );
    assert_eq!(
        p.requirements_for(&reference("docker.io/library/debian:12"))
            .1,
        [Requirement::Reject]
    );
    assert_eq!(p.requirements_for_local(), [Requirement::Reject]);
}
