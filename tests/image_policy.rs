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

// --- cosign 3's sigstore bundles and signed indexes (repositories t16/...) ---

const CERT: &str = "/var/lib/shoal-testbed/tls/cert.pem";
const SKOPEO_CERTS: &str = "/var/lib/shoal-testbed/tls/skopeo";

impl Fixture {
    /// Puts shoal/busybox:FROM at t16/REPO:TAG (same digest), with no
    /// signature for it in REPO.
    fn copy_t16(&self, from: &str, repo: &str, tag: &str) {
        root(
            self.tb,
            &format!(
                "skopeo copy -q --src-cert-dir {SKOPEO_CERTS} --dest-cert-dir {SKOPEO_CERTS} \
                 --preserve-digests docker://{REG}/shoal/busybox:{from} docker://{REG}/t16/{repo}:{tag}"
            ),
        );
        let digest = match from {
            "latest" => &self.a,
            "v2" => &self.b,
            other => panic!("no digest known for shoal/busybox:{other}"),
        };
        self.unsign_t16(repo, digest);
    }

    /// Deletes what earlier runs signed for t16/REPO@DIGEST on this
    /// registry (it outlives runs, and cosign 3 adds a bundle to the
    /// `sha256-HEX` index at each signing): the `sha256-HEX` and
    /// `sha256-HEX.sig` tags' manifests.
    fn unsign_t16(&self, repo: &str, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        root(
            self.tb,
            &format!(
                "for t in sha256-{hex} sha256-{hex}.sig; do\n\
                   d=$(curl -sI --cacert {CERT} -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
                       https://{REG}/v2/t16/{repo}/manifests/$t | tr -d '\\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')\n\
                   [ -z \"$d\" ] || curl -sf --cacert {CERT} -X DELETE https://{REG}/v2/t16/{repo}/manifests/$d >/dev/null\n\
                 done"
            ),
        );
    }

    /// Signs t16/REPO@DIGEST with KEY in cosign 3's default format (a
    /// sigstore bundle attached as a referrer), or with `classic` in the
    /// simple-signing format.
    fn sign_t16(&self, key: &str, repo: &str, digest: &str, classic: bool) {
        let format = if classic { "--new-bundle-format=false" } else { "" };
        root(
            self.tb,
            &format!(
                "cd {STATE} && COSIGN_PASSWORD=test {cosign} sign --key {key}.key --tlog-upload=false --use-signing-config=false \
                 {format} --registry-cacert {CERT} -y {REG}/t16/{repo}@{digest} 2>&1",
                cosign = self.cosign.display()
            ),
        );
    }

    /// PUTs `body` as t16/REPO's manifest TAG (an index when `index`).
    fn put_manifest(&self, repo: &str, tag: &str, body: &str, index: bool) {
        let file = format!("{STATE}/t16-put.json");
        std::fs::write(&file, body).unwrap();
        let ty = if index {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        };
        root(
            self.tb,
            &format!(
                "curl -sf --cacert {CERT} -X PUT -H 'Content-Type: {ty}' --data-binary @{file} \
                 https://{REG}/v2/t16/{repo}/manifests/{tag}"
            ),
        );
    }

    /// Uploads `body` as a blob of t16/REPO; returns its digest.
    fn put_blob(&self, repo: &str, body: &str) -> String {
        let file = format!("{STATE}/t16-blob");
        std::fs::write(&file, body).unwrap();
        root(
            self.tb,
            &format!(
                "d=sha256:$(sha256sum {file} | cut -d' ' -f1)\n\
                 loc=$(curl -sf --cacert {CERT} -X POST -D - -o /dev/null https://{REG}/v2/t16/{repo}/blobs/uploads/ | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p')\n\
                 case $loc in http*) ;; *) loc=https://{REG}$loc ;; esac\n\
                 case $loc in *\\?*) sep='&' ;; *) sep='?' ;; esac\n\
                 curl -sf --cacert {CERT} -X PUT -H 'Content-Type: application/octet-stream' --data-binary @{file} \"$loc${{sep}}digest=$d\"\n\
                 echo $d"
            ),
        )
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_string()
    }
}

/// The t16 policy: each repository below needs the trusted key
/// (matchRepository); the rest of t16 is rejected.
fn t16_policy(key: &str) -> String {
    let repo = signed(key, r#"{"type": "matchRepository"}"#);
    let repos: Vec<String> = [
        "bundle", "bundle-otherkey", "bundle-copied", "bundle-both", "bundle-bad",
        "idx-signed", "idx-unsigned", "idx-otherkey",
    ]
    .iter()
    .map(|r| format!(r#""{REG}/t16/{r}": {repo}"#))
    .collect();
    format!(
        r#"{{"default": [{{"type": "reject"}}],
            "transports": {{"docker": {{
                "{REG}": [{{"type": "insecureAcceptAnything"}}],
                "{REG}/t16": [{{"type": "reject"}}],
                {}
            }}}}}}"#,
        repos.join(",\n")
    )
}

/// cosign 3.1.1's default signature, a sigstore bundle, on a registry
/// without a referrers API: Shoal asks the API (404), finds the bundle
/// under the `sha256-HEX` tag, checks the key and the digest, and refuses
/// it for the identity it lacks; another key, another image's bundle and
/// an unreadable bundle are each refused as such; next to a classic
/// signature the bundle is kept in the store.
#[test]
fn cosign_3_bundles_are_found_through_the_referrers_tag_and_checked() {
    let _s = serial();
    let f = fixture();
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    // Debian's registry 2.8 has no referrers API.
    f.copy_t16("latest", "bundle", "v1");
    f.sign_t16("trusted", "bundle", &f.a, false);
    let code = root(f.tb, &format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --cacert {CERT} https://{REG}/v2/t16/bundle/referrers/{}", f.a
    ));
    assert_eq!(code.trim(), "404");

    f.copy_t16("latest", "bundle-otherkey", "v1");
    f.sign_t16("stranger", "bundle-otherkey", &f.a, false);
    // The bundle of A, listed as a referrer of B.
    f.copy_t16("latest", "bundle-copied", "v1");
    f.sign_t16("trusted", "bundle-copied", &f.a, false);
    f.copy_t16("v2", "bundle-copied", "v2");
    let listed = root(f.tb, &format!(
        "curl -sf --cacert {CERT} -H 'Accept: application/vnd.oci.image.index.v1+json' https://{REG}/v2/t16/bundle-copied/manifests/sha256-{}",
        hex(&f.a)
    ));
    f.put_manifest("bundle-copied", &format!("sha256-{}", hex(&f.b)), listed.trim(), true);
    // A referrer whose bundle is not JSON.
    f.copy_t16("latest", "bundle-bad", "v1");
    let empty = f.put_blob("bundle-bad", "{}");
    let bad_body = r#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "#;
    let bad = f.put_blob("bundle-bad", bad_body);
    let bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let referrer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": bundle_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": bundle_type, "digest": bad, "size": bad_body.len()}],
    })
    .to_string();
    f.put_manifest("bundle-bad", "bad-referrer", &referrer, false);
    let referrer_digest = format!("sha256:{}", sha256_hex(referrer.as_bytes()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": referrer_digest,
                       "size": referrer.len(), "artifactType": bundle_type}],
    })
    .to_string();
    f.put_manifest("bundle-bad", &format!("sha256-{}", hex(&f.a)), &index, true);

    let p = LocalPolicy::new("t16-bundles", &t16_policy("trusted"));
    let s = store(f.tb, "t16-bundles");
    for (repo, want) in [
        (
            "bundle",
            format!(r#"(scope docker "{REG}/t16/bundle"): the only trusted signature is a sigstore bundle (cosign 3's default format), which names no repository, so signedIdentity matchRepository cannot accept it; sign it in cosign's classic format"#),
        ),
        (
            "bundle-otherkey",
            format!(r#"(scope docker "{REG}/t16/bundle-otherkey"): not signed by a trusted key (trusted: {STATE}/trusted.pub)"#),
        ),
        (
            "bundle-bad",
            format!(r#"(scope docker "{REG}/t16/bundle-bad"): malformed or unsupported signature (sigstore bundle: bundle is not JSON"#),
        ),
    ] {
        let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/t16/{repo}:v1")));
        assert!(e.contains(&format!("{REG}/t16/{repo}:v1: refused by the site image policy")), "{repo}: {e}");
        assert!(e.contains(&want), "{repo}: want {want:?} in:\n{e}");
        assert_eq!(e.trim().lines().count(), 1, "{repo}: one line: {e}");
    }
    let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/t16/bundle-copied:v2")));
    assert!(
        e.contains(&format!(r#"(scope docker "{REG}/t16/bundle-copied"): signature is for another digest ({})"#, f.a)),
        "{e}"
    );
    let images = ok(&f.tb.user(&format!("ls {}/shoal/images/sha256 2>/dev/null | wc -l", s.display())));
    assert_eq!(images.trim(), "0", "a refused pull stores nothing");

    // Both formats: the classic signature accepts it, and the bundle is
    // kept with it for offline nodes.
    f.copy_t16("latest", "bundle-both", "v1");
    f.sign_t16("trusted", "bundle-both", &f.a, false);
    f.sign_t16("trusted", "bundle-both", &f.a, true);
    ok(&f.shoal(&p, &s, &format!("pull -q {REG}/t16/bundle-both:v1")));
    let stored = std::fs::read_to_string(s.join(format!("shoal/signatures/{}.json", hex(&f.a)))).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["bundles"].as_array().map(Vec::len), Some(1), "{stored}");
    let out = ok(&f.shoal(&p, &s, &format!("inspect {REG}/t16/bundle-both:v1")));
    assert!(out.contains("signatures: 1 stored, 1 sigstore bundles (fetched at pull)"), "{out}");
}

/// While held, and when dropped: the user's default store keeps no
/// signatures for the digests A and B.
struct DefaultSignatures(&'static Fixture);

impl DefaultSignatures {
    fn clear(f: &'static Fixture) -> DefaultSignatures {
        let d = DefaultSignatures(f);
        ok(&d.remove());
        d
    }

    fn remove(&self) -> std::process::Output {
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        self.0.tb.user(&format!(
            "rm -f ~/.local/share/shoal/signatures/{}.json ~/.local/share/shoal/signatures/{}.json",
            hex(&self.0.a),
            hex(&self.0.b)
        ))
    }
}

impl Drop for DefaultSignatures {
    fn drop(&mut self) {
        // Not checked: a panic here would abort a test already failing.
        let _ = self.remove();
    }
}

/// sha256 of `bytes`, hex (sha256sum: the tests link no hash crate).
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// The content digest and size of t16/REPO:TAG's manifest.
fn manifest_of(tb: &Testbed, repo: &str, tag: &str) -> (String, usize) {
    let body = root(
        tb,
        &format!(
            "curl -sf --cacert {CERT} -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
             https://{REG}/v2/t16/{repo}/manifests/{tag}"
        ),
    );
    (format!("sha256:{}", sha256_hex(body.as_bytes())), body.len())
}

/// A two-entry index (shoal/busybox:latest as linux/amd64, :v2 as
/// linux/arm64) pushed byte for byte as t16/REPO:1; returns its digest.
fn push_index(f: &Fixture, repo: &str) -> String {
    f.copy_t16("latest", repo, "amd64");
    f.copy_t16("v2", repo, "arm64");
    let (a, a_size) = manifest_of(f.tb, repo, "amd64");
    let (b, b_size) = manifest_of(f.tb, repo, "arm64");
    assert_eq!((a.as_str(), b.as_str()), (f.a.as_str(), f.b.as_str()));
    let m = "application/vnd.oci.image.manifest.v1+json";
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": m, "digest": a, "size": a_size, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": m, "digest": b, "size": b_size, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    })
    .to_string();
    f.put_manifest(repo, "1", &body, true);
    let digest = format!("sha256:{}", sha256_hex(body.as_bytes()));
    f.unsign_t16(repo, &digest);
    digest
}

/// A signed multi-entry index on the cluster: the index's signature covers
/// the entry each node chooses (through the index bytes the pin carries),
/// so it runs on three nodes, and root refuses a pin stripped of the
/// index; an index whose chosen entry is unsigned, or signed by another
/// key (another entry's trusted signature does not help), is refused at
/// pull with one line.
#[test]
fn a_signed_index_runs_on_three_nodes_and_its_chosen_entry_must_be_covered() {
    let _s = serial();
    let f = fixture();
    let tb = f.tb;
    let signed_index = push_index(f, "idx-signed");
    f.sign_t16("trusted", "idx-signed", &signed_index, true);
    push_index(f, "idx-unsigned");
    push_index(f, "idx-otherkey");
    f.sign_t16("stranger", "idx-otherkey", &f.a, true);
    f.sign_t16("trusted", "idx-otherkey", &f.b, true);

    let p = LocalPolicy::new("t16-index", &t16_policy("trusted"));
    let s = store(tb, "t16-index");
    for (repo, want) in [
        ("idx-unsigned", "no signature; sign it".to_string()),
        ("idx-otherkey", format!("not signed by a trusted key (trusted: {STATE}/trusted.pub)")),
    ] {
        let e = fails(&f.shoal(&p, &s, &format!("pull -q {REG}/t16/{repo}:1")));
        assert!(
            e.contains(&format!(
                r#"{REG}/t16/{repo}:1: refused by the site image policy {} (scope docker "{REG}/t16/{repo}"): {want}"#,
                p.file.display()
            )),
            "{repo}: {e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "{repo}: one line: {e}");
    }

    // The srun half goes through the user's default store, which outlives
    // runs and merges the signatures of every repository an image came
    // from: start from none for A and B, and leave none behind (the i16
    // forged-pin test reads B's and A's too).
    let _clean = DefaultSignatures::clear(f);
    let guard = PolicyGuard::install(&t16_policy("trusted"));
    ok(&tb.user(&format!("shoal pull -q {REG}/t16/idx-signed:1")));
    // Root's accepted decisions are cached per (policy, identity, digest);
    // emptied here so that each node below decides anew.
    let clear = || root(tb, "rm -f /var/cache/shoal/n1/trust/* /var/cache/shoal/n2/trust/* /var/cache/shoal/n3/trust/*");
    // The pin carries the index bytes that connect its signature to the
    // entry; without them root finds a signature for another digest.
    let pin = ok(&tb.user(&format!(
        "srun -N1 --image={REG}/t16/idx-signed:1 sh -c 'printf %s \"$SHOAL_IMAGE_PIN\"'"
    )));
    let mut pin: serde_json::Value = serde_json::from_str(pin.trim()).expect("pin JSON");
    assert_eq!(pin["signatures"]["index"]["digest"].as_str(), Some(signed_index.as_str()), "{pin}");
    pin["signatures"].as_object_mut().unwrap().remove("index");
    clear();
    let e = fails(&tb.user(&format!(
        "SHOAL_IMAGE_PIN='{pin}' srun -N1 --image={REG}/t16/idx-signed:1 cat /etc/shoal-test-image"
    )));
    assert!(e.contains(&format!("signature is for another digest ({signed_index})")), "{e}");
    // Each node chooses the amd64 entry and root accepts it through the
    // index's signature.
    clear();
    let out = ok(&tb.user(&format!(
        "srun -N3 -l --image={REG}/t16/idx-signed:1 sh -c 'echo $(hostname) $(cat /etc/shoal-test-image)'"
    )));
    for n in ["n1", "n2", "n3"] {
        assert!(out.contains(&format!("{n} shoal test image: busybox\n")), "{n}: {out}");
        let cached = ok(&tb.root(&format!("ls /var/cache/shoal/{n}/trust | wc -l")));
        assert_eq!(cached.trim(), "1", "{n}: root decided once: {cached}");
    }
    drop(guard);
}
