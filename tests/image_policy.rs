//! The site image policy (containers-policy.json) with real cosign
//! signatures, on the real registry and the three-node cluster: `shoal
//! pull` refuses before any layer, srun refuses at the prompt, and root
//! refuses again on the nodes when the policy changed after submission.
//!
//! cosign comes from Debian sid (tests/testbed/cosign.sh, run by setup.sh);
//! it signs with an offline key pair and no transparency log. The policy is
//! installed into the cluster's /etc/shoal/shoal.toml only while a test
//! holds [`PolicyGuard`], which restores the file when dropped (and up.sh
//! restores it too, should a run be killed). Repositories are `i16/...`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use support::{fails, ok, slurm, Testbed};

const REG: &str = "127.0.0.1:5443";
const STATE: &str = "/var/lib/shoal-testbed/i16-policy";
const CONFIG: &str = "/etc/shoal/shoal.toml";

/// Keys and images, made once per run.
struct Fixture {
    tb: &'static Testbed,
    cosign: PathBuf,
    /// Digests of shoal/busybox:latest and :v2.
    a: String,
    b: String,
}

fn root(tb: &Testbed, script: &str) -> String {
    ok(&tb.root(&format!("set -euo pipefail\n{script}")))
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tb = slurm();
        let cosign = PathBuf::from(root(tb, "bash tests/testbed/cosign.sh").trim());
        root(
            tb,
            &format!(
                "mkdir -p {STATE} && chmod 755 {STATE} && cd {STATE}\n\
                 for k in trusted stranger; do\n\
                   [ -f $k.pub ] || COSIGN_PASSWORD=test {cosign} generate-key-pair --output-key-prefix $k >/dev/null 2>&1\n\
                   chmod 644 $k.pub\n\
                 done",
                cosign = cosign.display()
            ),
        );
        let digest = |tag: &str| {
            root(tb, &format!("skopeo inspect --cert-dir /var/lib/shoal-testbed/tls/skopeo --format '{{{{.Digest}}}}' docker://{REG}/shoal/busybox:{tag}"))
                .trim()
                .to_string()
        };
        let f = Fixture { tb, cosign, a: digest("latest"), b: digest("v2") };
        assert_ne!(f.a, f.b);
        f
    })
}

impl Fixture {
    /// Puts shoal/busybox:FROM at i16/REPO:v1 (same digest as the source).
    fn copy(&self, from: &str, repo: &str) {
        root(
            self.tb,
            &format!(
                "skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo --dest-cert-dir /var/lib/shoal-testbed/tls/skopeo \
                 --preserve-digests docker://{REG}/shoal/busybox:{from} docker://{REG}/i16/{repo}:v1"
            ),
        );
    }

    /// Signs i16/REPO@DIGEST with KEY, as cosign 2 did by default
    /// (simple signing under the `.sig` tag), optionally with a payload.
    fn sign(&self, key: &str, repo: &str, digest: &str, payload: Option<&str>) {
        let payload = payload
            .map(|p| format!("--payload {p}"))
            .unwrap_or_default();
        root(
            self.tb,
            &format!(
                "cd {STATE} && COSIGN_PASSWORD=test {cosign} sign --key {key}.key --tlog-upload=false --use-signing-config=false \
                 --new-bundle-format=false --registry-cacert /var/lib/shoal-testbed/tls/cert.pem -y {payload} {REG}/i16/{repo}@{digest} 2>&1",
                cosign = self.cosign.display()
            ),
        );
    }

    /// Runs `shoal` as the user with the store `store` under the
    /// config of `policy`; returns the output.
    fn shoal(&self, policy: &LocalPolicy, store: &Path, args: &str) -> std::process::Output {
        self.tb.user(&format!(
            "SHOAL_CONFIG={} XDG_DATA_HOME={} shoal {args}",
            policy.config.display(),
            store.display()
        ))
    }
}

/// A policy only the commands given its config see: the cluster's config
/// plus `[policy]`, in a file of its own, so nothing else is affected.
struct LocalPolicy {
    config: PathBuf,
    file: PathBuf,
}

impl LocalPolicy {
    fn new(name: &str, policy: &str) -> LocalPolicy {
        let dir = PathBuf::from(format!("{STATE}/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = LocalPolicy {
            config: dir.join("shoal.toml"),
            file: dir.join("policy.json"),
        };
        p.set(policy);
        let status = Command::new("chmod")
            .args(["-R", "a+rX", STATE])
            .status()
            .unwrap();
        assert!(status.success());
        p
    }

    fn set(&self, policy: &str) {
        std::fs::write(&self.file, policy).unwrap();
        let mut config = std::fs::read(CONFIG).expect("read shoal.toml");
        config.extend_from_slice(
            format!("\n[policy]\nfile = \"{}\"\n", self.file.display()).as_bytes(),
        );
        std::fs::write(&self.config, config).unwrap();
    }
}

/// The cluster's Shoal config with `[policy] file = ...` while held: for
/// the test that goes through Slurm, whose plugin reads only that file.
struct PolicyGuard {
    original: Vec<u8>,
}

/// The tests of this file run one at a time: they sign and move the same
/// repositories.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

impl PolicyGuard {
    fn install(policy: &str) -> PolicyGuard {
        let original = std::fs::read(CONFIG).expect("read shoal.toml");
        let guard = PolicyGuard { original };
        guard.set(policy);
        guard
    }

    /// Replaces the policy (the config keeps pointing at the same file).
    fn set(&self, policy: &str) {
        let file = format!("{STATE}/policy.json");
        std::fs::write(&file, policy).unwrap();
        let mut config = self.original.clone();
        config.extend_from_slice(format!("\n[policy]\nfile = \"{file}\"\n").as_bytes());
        std::fs::write(CONFIG, config).unwrap();
        let status = Command::new("chmod")
            .args(["644", &file, CONFIG])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(CONFIG, &self.original);
    }
}

fn signed(key: &str, identity: &str) -> String {
    format!(
        r#"[{{"type": "sigstoreSigned", "keyPath": "{STATE}/{key}.pub", "signedIdentity": {identity}}}]"#
    )
}

/// The test policy: the registry is open, its `i16` namespace rejected,
/// and each `i16/...` repository below needs the trusted key; anything else
/// falls to the default, reject.
fn policy(key: &str) -> String {
    let repo = signed(key, r#"{"type": "matchRepository"}"#);
    let repos: Vec<String> = [
        "signed",
        "unsigned",
        "otherkey",
        "copied",
        "moved",
        "elsewhere",
        "badsig",
        "badpayload",
    ]
    .iter()
    .map(|r| format!(r#""{REG}/i16/{r}": {repo}"#))
    .collect();
    format!(
        r#"{{"default": [{{"type": "reject"}}],
            "transports": {{
              "docker": {{
                "{REG}": [{{"type": "insecureAcceptAnything"}}],
                "{REG}/i16": [{{"type": "reject"}}],
                "{REG}/i16/exact": [{{"type": "sigstoreSigned", "keyPath": "{STATE}/{key}.pub"}}],
                {}
              }},
              "docker-daemon": {{"": [{{"type": "insecureAcceptAnything"}}]}}
            }}}}"#,
        repos.join(",\n")
    )
}

fn store(tb: &Testbed, name: &str) -> PathBuf {
    tb.user_tempdir(name)
}

#[test]
fn pull_accepts_a_signed_image_and_keeps_its_signature() {
    let _s = serial();
    let f = fixture();
    f.copy("latest", "signed");
    f.sign("trusted", "signed", &f.a, None);
    let p = LocalPolicy::new("signed", &policy("trusted"));
    let s = store(f.tb, "signed");
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/signed:v1")));
    let hex = f.a.trim_start_matches("sha256:");
    assert!(
        s.join(format!("shoal/signatures/{hex}.json")).is_file(),
        "signatures are kept in the store"
    );
    let out = ok(&f.shoal(&p, &s, &format!("inspect {REG}/i16/signed:v1")));
    assert!(
        out.contains(&format!(
            "policy:     allowed: signed by {STATE}/trusted.pub for {REG}/i16/signed"
        )),
        "{out}"
    );
    let json = ok(&f.shoal(&p, &s, &format!("inspect --json {REG}/i16/signed:v1")));
    assert!(json.contains("\"allowed\": true"), "{json}");
    // Offline: a second pull by digest needs no request and still passes.
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/signed@{}", f.a)));
}

#[test]
fn pull_refuses_before_any_layer_and_names_scope_reason_and_fix() {
    let _s = serial();
    let f = fixture();
    f.copy("latest", "unsigned");
    f.copy("latest", "otherkey");
    f.sign("stranger", "otherkey", &f.a, None);
    // A signature copied from another image: i16/signed's (for A) put
    // where the signature of B would be.
    f.copy("latest", "signed");
    f.sign("trusted", "signed", &f.a, None);
    f.copy("v2", "copied");
    root(f.tb, &format!(
        "skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo --dest-cert-dir /var/lib/shoal-testbed/tls/skopeo --preserve-digests \
         docker://{REG}/i16/signed:sha256-{a}.sig docker://{REG}/i16/copied:sha256-{b}.sig",
        a = f.a.trim_start_matches("sha256:"),
        b = f.b.trim_start_matches("sha256:")
    ));
    // The same signed bytes and signature in another repository: the
    // signature names i16/signed.
    f.copy("latest", "elsewhere");
    root(f.tb, &format!(
        "skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo --dest-cert-dir /var/lib/shoal-testbed/tls/skopeo --preserve-digests \
         docker://{REG}/i16/signed:sha256-{a}.sig docker://{REG}/i16/elsewhere:sha256-{a}.sig",
        a = f.a.trim_start_matches("sha256:")
    ));
    // cosign signs the repository only: the default rule wants the tag.
    f.copy("latest", "exact");
    f.sign("trusted", "exact", &f.a, None);
    f.copy("latest", "unlisted");
    let p = LocalPolicy::new("refused", &policy("trusted"));
    let s = store(f.tb, "refused");
    let cases = [
        (
            "unsigned",
            format!(r#"(scope docker "{REG}/i16/unsigned"): no signature; sign it"#),
        ),
        (
            "otherkey",
            format!(
                r#"(scope docker "{REG}/i16/otherkey"): not signed by a trusted key (trusted: {STATE}/trusted.pub)"#
            ),
        ),
        (
            "copied",
            format!(
                r#"(scope docker "{REG}/i16/copied"): signature is for another digest ({})"#,
                f.a
            ),
        ),
        (
            "elsewhere",
            format!(
                r#"(scope docker "{REG}/i16/elsewhere"): signature is for "{REG}/i16/signed", which signedIdentity matchRepository does not accept"#
            ),
        ),
        (
            "exact",
            format!(
                r#"(scope docker "{REG}/i16/exact"): signature is for "{REG}/i16/exact", which signedIdentity matchRepoDigestOrExact does not accept"#
            ),
        ),
        (
            "unlisted",
            format!(r#"(scope docker "{REG}/i16"): repository not allowed"#),
        ),
    ];
    for (repo, want) in cases {
        let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/{repo}:v1")));
        assert!(
            e.contains(&format!(
                "{REG}/i16/{repo}:v1: refused by the site image policy {}",
                p.file.display()
            )),
            "{repo}: {e}"
        );
        assert!(e.contains(&want), "{repo}: want {want:?} in:\n{e}");
        assert_eq!(e.trim().lines().count(), 1, "{repo}: one line: {e}");
    }
    // Nothing was stored, no layer landed.
    let images = ok(&f.tb.user(&format!(
        "ls {}/shoal/images/sha256 2>/dev/null | wc -l",
        s.display()
    )));
    assert_eq!(images.trim(), "0", "a refused pull stores nothing");
    // The default scope: refused without a single request (nothing listens there).
    let e = fails(&f.shoal(&p, &s, "pull -q 127.0.0.1:5999/x/y:1"));
    assert!(
        e.contains("(the default scope): repository not allowed"),
        "{e}"
    );
    // The registry rule beats the default: the rest of the registry is open.
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/shoal/busybox:latest")));
}

#[test]
fn malformed_signature_payloads_and_manifests_are_refused() {
    let _s = serial();
    let f = fixture();
    // A payload cosign signs as given: validly signed, not a simple-signing payload.
    f.copy("latest", "badpayload");
    root(f.tb, &format!(
        "printf '%s' '{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{REG}/i16/badpayload\"}},\"image\":{{\"docker-manifest-digest\":\"{a}\"}},\"type\":\"cosign container image signature\",\"extra\":1}},\"optional\":null}}' > {STATE}/bad-payload.json",
        a = f.a
    ));
    f.sign(
        "trusted",
        "badpayload",
        &f.a,
        Some(&format!("{STATE}/bad-payload.json")),
    );
    // A signature manifest whose payload layer has no signature annotation.
    f.copy("latest", "badsig");
    let manifest = root(f.tb, &format!(
        "curl -sf --cacert /var/lib/shoal-testbed/tls/cert.pem -H 'Accept: application/vnd.oci.image.manifest.v1+json' https://{REG}/v2/i16/badsig/manifests/v1"
    ));
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = &m["layers"][0];
    let bad = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": m["config"],
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": layer["digest"], "size": layer["size"]}],
    });
    std::fs::write(format!("{STATE}/bad-sig-manifest.json"), bad.to_string()).unwrap();
    root(f.tb, &format!(
        "curl -sf --cacert /var/lib/shoal-testbed/tls/cert.pem -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
         --data-binary @{STATE}/bad-sig-manifest.json https://{REG}/v2/i16/badsig/manifests/sha256-{}.sig",
        f.a.trim_start_matches("sha256:")
    ));
    let p = LocalPolicy::new("malformed", &policy("trusted"));
    let s = store(f.tb, "malformed");
    let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/badpayload:v1")));
    assert!(
        e.contains("malformed or unsupported signature (critical has fields"),
        "{e}"
    );
    let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/badsig:v1")));
    assert!(
        e.contains("malformed or unsupported signature (signature manifest sha256-")
            && e.contains("annotation"),
        "{e}"
    );
}

#[test]
fn moving_a_signed_tag_to_unsigned_content_is_refused() {
    let _s = serial();
    let f = fixture();
    f.copy("latest", "moved");
    f.sign("trusted", "moved", &f.a, None);
    let p = LocalPolicy::new("moved", &policy("trusted"));
    let s = store(f.tb, "moved");
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/moved:v1")));
    f.copy("v2", "moved");
    let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/moved:v1")));
    assert!(
        e.contains(&format!(
            r#"(scope docker "{REG}/i16/moved"): no signature"#
        )),
        "{e}"
    );
    // The signed image stays usable by its digest.
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/i16/moved@{}", f.a)));
    f.copy("latest", "moved");
}

#[test]
fn config_check_validates_the_policy_file() {
    let _s = serial();
    let f = fixture();
    let p = LocalPolicy::new("check", &policy("trusted"));
    let check = format!("SHOAL_CONFIG={} shoal config check", p.config.display());
    let out = ok(&f.tb.user(&check));
    assert!(
        out.contains(&format!("image policy {}: ok", p.file.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            r#"docker "{REG}/i16/signed": sigstoreSigned by {STATE}/trusted.pub (matchRepository)"#
        )),
        "{out}"
    );
    assert!(out.contains("docker-daemon are podman's"), "{out}");
    for (bad, want) in [
        (
            r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}]}"#,
            "GPG simple signing (`signedBy`) is not supported",
        ),
        (
            r#"{"default": [{"type": "sigstoreSigned", "fulcio": {"caPath": "/c"}, "rekorPublicKeyPath": "/r"}]}"#,
            "`fulcio`: Fulcio certificates, PKI and Rekor are not supported",
        ),
        (
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"busybox": [{"type": "reject"}]}}}"#,
            "fully expanded form",
        ),
    ] {
        p.set(bad);
        let e = fails(&f.tb.user(&check));
        assert!(
            e.contains(&format!("{}: ", p.file.display())) && e.contains(want),
            "{bad}: {e}"
        );
    }
}

/// A signed image on all three nodes; a refused stored image fails at the
/// prompt; and root on the node refuses what salloc accepted once the
/// policy changed in between, or a pin forged without signatures.
#[test]
fn srun_and_salloc_check_at_submission_and_root_checks_again_on_the_nodes() {
    let _s = serial();
    let f = fixture();
    let tb = f.tb;
    f.copy("latest", "signed");
    f.sign("trusted", "signed", &f.a, None);
    // Other content than the signed image's (whose stored signatures name
    // i16/signed).
    f.copy("v2", "unsigned");
    // The user's default store outlives test runs on one machine and keeps
    // (merges) the signatures of every repository an image was pulled
    // from: another suite's signed index listing B would make the forged
    // pin below fail for that signature's identity instead. Start from
    // the signatures this test fetches.
    ok(&tb.user(&format!(
        "rm -f ~/.local/share/shoal/signatures/{}.json ~/.local/share/shoal/signatures/{}.json",
        f.a.trim_start_matches("sha256:"),
        f.b.trim_start_matches("sha256:")
    )));
    let guard = PolicyGuard::install(r#"{"default": [{"type": "insecureAcceptAnything"}]}"#);
    // Pulled while everything was open; then the site locks down.
    ok(&tb.user(&format!("shoal pull -q {REG}/i16/unsigned:v1")));
    guard.set(&policy("trusted"));
    ok(&tb.user(&format!("shoal pull -q {REG}/i16/signed:v1")));

    // A signed image runs on all three nodes.
    let out = ok(&tb.user(&format!("srun -N3 -l --image={REG}/i16/signed:v1 sh -c 'cat /etc/shoal-test-image; hostname' | sort")));
    for n in ["n1", "n2", "n3"] {
        assert!(out.contains(n), "{out}");
    }
    assert_eq!(out.matches("shoal test image: busybox").count(), 3, "{out}");
    // Each node made its own decision and cached it.
    for n in ["n1", "n2", "n3"] {
        let cached = ok(&tb.root(&format!("ls /var/cache/shoal/{n}/trust | wc -l")));
        assert!(cached.trim().parse::<u32>().unwrap() >= 1, "{n}: {cached}");
    }

    // A stored image the policy now refuses fails at the prompt.
    let e = fails(&tb.user(&format!("srun -N1 --image={REG}/i16/unsigned:v1 true")));
    assert!(e.contains(&format!(r#"{REG}/i16/unsigned:v1: refused by the site image policy {STATE}/policy.json (scope docker "{REG}/i16/unsigned"): no signature"#)), "{e}");

    // Accepted when salloc pinned it; the policy then trusts another key
    // only, and the step's staging on the node (root) refuses it.
    let dir = tb.user_tempdir("recheck");
    let d = dir.display().to_string();
    let script = format!(
        "cd {d} && salloc -N1 --image={REG}/i16/signed:v1 sh -c 'touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.2; done; srun -N1 cat /etc/shoal-test-image'"
    );
    let child = Command::new("runuser")
        .args(["-u", &tb.user, "--", "env", "-i"])
        .arg(format!("HOME={}", tb.home.display()))
        .args(["PATH=/usr/local/bin:/usr/bin:/bin", "bash", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.join("ready").exists() {
        assert!(std::time::Instant::now() < deadline, "salloc did not start");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    guard.set(&policy("stranger"));
    std::fs::write(dir.join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("shoal test image"),
        "the refused image ran:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("not signed by a trusted key")
            && stderr.contains(&format!("{STATE}/stranger.pub")),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // A pin forged in the user's environment (the signed image's
    // signatures, another digest) does not get past root.
    guard.set(&policy("trusted"));
    let pin = ok(&tb.user(&format!(
        "srun -N1 --image={REG}/i16/signed:v1 sh -c 'printf %s \"$SHOAL_IMAGE_PIN\"'"
    )));
    let mut pin: serde_json::Value = serde_json::from_str(pin.trim()).expect("pin JSON");
    assert!(
        pin["signatures"]["signatures"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{pin}"
    );
    pin["digest"] = serde_json::Value::String(f.b.clone());
    let e = fails(&tb.user(&format!(
        "SHOAL_IMAGE_PIN='{pin}' srun -N1 --image={REG}/i16/signed:v1 cat /etc/shoal-test-image"
    )));
    assert!(
        e.contains(&format!("signature is for another digest ({})", f.a)),
        "{e}"
    );
}
