//! The image pipeline's pull side, driven as the unprivileged user against
//! the real local TLS registries (tests/testbed/up.sh: 127.0.0.1:5443, and
//! 127.0.0.1:5444 which wants a login): protocol, auth, TLS, platforms,
//! digests, the store's atomic publish under concurrency and kills, gc,
//! import, and the one-line errors.
//!
//! Fixtures: tests/testbed/images.d/30-fetch.sh (and 10-busybox.sh).

mod support;

use std::path::{Path, PathBuf};

use support::{fails, ok, testbed, Testbed};

const REG: &str = "127.0.0.1:5443";
const AUTH_REG: &str = "127.0.0.1:5444";
const AUTH_LOGIN: &str = "shoaltest:shoal-test-password";

/// A user-owned scratch dir with its own store; `sh` runs a script as the
/// user with `shoal` = this build, the test CA trusted and that store.
struct Env<'a> {
    tb: &'a Testbed,
    dir: PathBuf,
}

impl<'a> Env<'a> {
    fn new(name: &str) -> Env<'a> {
        let tb = testbed();
        Env {
            tb,
            dir: tb.user_tempdir(name),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("data/shoal")
    }

    /// Exports for the script: store under `dir`, the CA, an empty config
    /// (so the machine's site store is not looked at).
    fn prelude(&self) -> String {
        format!(
            "set -e; cd '{d}'; export XDG_DATA_HOME='{d}/data' SSL_CERT_FILE='{ca}' SHOAL_CONFIG='{d}/shoal.toml'; \
             touch '{d}/shoal.toml'; export SHOAL_BIN='{bin}'; shoal() {{ \"$SHOAL_BIN\" \"$@\"; }}; ",
            d = self.dir.display(),
            ca = self.tb.ca_cert.display(),
            bin = self.tb.shoal().display()
        )
    }

    fn sh(&self, script: &str) -> std::process::Output {
        self.tb.user(&format!("{}{script}", self.prelude()))
    }

    /// Image directories in the store.
    fn images(&self) -> Vec<String> {
        let dir = self.store().join("images/sha256");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Work dirs (not lock files) left under the store's tmp/.
    fn temps(&self) -> Vec<String> {
        std::fs::read_dir(self.store().join("tmp"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// Lines of `SHOAL_DEBUG_HTTP` output: the requests a command made.
fn requests(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("shoal: http "))
        .map(str::to_string)
        .collect()
}

#[test]
fn pull_then_inspect_images_rm_and_gc_as_the_user() {
    let env = Env::new("pull-basic");
    let out = ok(&env.sh(&format!("shoal pull docker://{REG}/shoal/busybox:latest")));
    assert!(out.contains("pulled sha256:"), "{out}");
    let info = json(&ok(
        &env.sh(&format!("shoal inspect --json {REG}/shoal/busybox"))
    ));
    assert_eq!(info["config"]["cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(info["config"]["labels"]["org.shoal.test"], "busybox");
    assert_eq!(
        info["config"]["env"][0],
        "PATH=/usr/local/bin:/usr/bin:/bin"
    );
    assert_eq!(info["scope"], "user");
    assert_eq!(info["platform"]["architecture"], "amd64");
    let sqfs = PathBuf::from(info["squashfs"].as_str().unwrap());
    assert!(sqfs.starts_with(env.store()), "{}", sqfs.display());
    // The squashfs is what the metadata says, and holds the image's files.
    let sha = ok(&env.sh(&format!("sha256sum '{}'", sqfs.display())));
    assert_eq!(
        sha.split_whitespace().next().unwrap(),
        info["squashfs_sha256"].as_str().unwrap()
    );
    let marker = ok(&env.sh(&format!(
        "unsquashfs -cat '{}' etc/shoal-test-image",
        sqfs.display()
    )));
    assert_eq!(marker.trim(), "shoal test image: busybox");
    // Listed, by its digest too.
    let list = json(&ok(&env.sh("shoal images --json")));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["reference"], format!("{REG}/shoal/busybox:latest"));
    let digest = info["digest"].as_str().unwrap();
    ok(&env.sh(&format!("shoal inspect id:{digest}")));
    ok(&env.sh(&format!("shoal inspect {REG}/shoal/busybox@{digest}")));
    let table = ok(&env.sh("shoal images"));
    assert!(
        table.contains("shoal/busybox:latest") && table.contains("user"),
        "{table}"
    );
    // rm forgets the name and deletes the image nothing else names.
    ok(&env.sh(&format!("shoal rm {REG}/shoal/busybox")));
    assert!(env.images().is_empty());
    let e = fails(&env.sh(&format!("shoal inspect {REG}/shoal/busybox")));
    assert!(e.contains("shoal pull") && e.lines().count() == 1, "{e}");
    let e = fails(&env.sh(&format!("shoal rm {REG}/shoal/busybox")));
    assert!(e.contains("not in the user store"), "{e}");
    ok(&env.sh("shoal gc"));
}

#[test]
fn re_pull_of_an_unchanged_image_is_one_manifest_request() {
    let env = Env::new("repull");
    let first = env.sh(&format!(
        "SHOAL_DEBUG_HTTP=1 shoal pull {REG}/shoal/busybox"
    ));
    ok(&first);
    let first = requests(&first.stderr);
    assert!(first.iter().any(|r| r.contains("/blobs/")), "{first:?}");
    let again = env.sh(&format!(
        "SHOAL_DEBUG_HTTP=1 shoal pull {REG}/shoal/busybox"
    ));
    let out = ok(&again);
    assert!(out.contains("up to date"), "{out}");
    let reqs = requests(&again.stderr);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0].starts_with("shoal: http HEAD ") && reqs[0].contains("/manifests/latest"),
        "{reqs:?}"
    );
}

#[test]
fn multi_platform_index_gives_each_platform_its_own_image() {
    let env = Env::new("multiarch");
    let img = format!("{REG}/shoal/fetch-multiarch:latest");
    let platform_of = |p: Option<&str>| {
        let flag = p.map(|p| format!("--platform {p}")).unwrap_or_default();
        ok(&env.sh(&format!("shoal pull -q {flag} {img}")));
        let info = json(&ok(&env.sh(&format!("shoal inspect --json {flag} {img}"))));
        let sqfs = info["squashfs"].as_str().unwrap().to_string();
        ok(&env.sh(&format!("unsquashfs -cat '{sqfs}' etc/platform")))
            .trim()
            .to_string()
    };
    assert_eq!(platform_of(None), "linux/amd64");
    assert_eq!(platform_of(Some("linux/arm64")), "linux/arm64/v8");
    assert_eq!(platform_of(Some("linux/arm/v7")), "linux/arm/v7");
    assert_eq!(env.images().len(), 3);
    let e = fails(&env.sh(&format!("shoal pull --platform linux/s390x {img}")));
    assert!(
        e.contains("no image for platform linux/s390x")
            && e.contains("linux/arm64/v8")
            && e.contains("--platform"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // Inspecting a platform that was not pulled says how to get it.
    let e = fails(&env.sh(&format!("shoal inspect --platform linux/ppc64le {img}")));
    assert!(e.contains("--platform linux/ppc64le"), "{e}");
}

#[test]
fn digest_references_pull_and_re_pull_without_asking_the_registry() {
    let env = Env::new("digest");
    // The index digest as the registry reports it.
    let head = ok(&env.sh(&format!(
        "curl -sfI --cacert \"$SSL_CERT_FILE\" -H 'Accept: application/vnd.oci.image.index.v1+json' \
         https://{REG}/v2/shoal/fetch-multiarch/manifests/latest"
    )));
    let index = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest:")
                .map(|d| d.trim().to_string())
        })
        .expect("Docker-Content-Digest header");
    let by_index = format!("{REG}/shoal/fetch-multiarch@{index}");
    ok(&env.sh(&format!("shoal pull -q --platform linux/arm64 {by_index}")));
    let info = json(&ok(&env.sh(&format!(
        "shoal inspect --json --platform linux/arm64 {by_index}"
    ))));
    let arm = info["digest"].as_str().unwrap().to_string();
    assert_ne!(
        arm, index,
        "the stored image is the platform's manifest, not the index"
    );
    // A platform manifest's digest works as a reference too.
    let env2 = Env::new("digest2");
    ok(&env2.sh(&format!(
        "shoal pull -q --platform linux/arm64 {REG}/shoal/fetch-multiarch@{arm}"
    )));
    assert_eq!(
        env2.images(),
        vec![arm.trim_start_matches("sha256:").to_string()]
    );
    // Pinned content: a re-pull asks nothing.
    let again = env.sh(&format!(
        "SHOAL_DEBUG_HTTP=1 shoal pull --platform linux/arm64 {by_index}"
    ));
    assert!(ok(&again).contains("up to date"));
    assert_eq!(requests(&again.stderr), Vec::<String>::new());
    // A digest the registry does not have.
    let zeros = format!("sha256:{}", "0".repeat(64));
    let e = fails(&env.sh(&format!("shoal pull {REG}/shoal/fetch-multiarch@{zeros}")));
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn login_protected_registry_uses_saved_logins() {
    let env = Env::new("auth");
    let img = format!("{AUTH_REG}/shoal/busybox:latest");
    let e = fails(&env.sh(&format!("shoal pull {img}")));
    assert!(
        e.contains("authentication failed")
            && e.contains("podman login")
            && e.contains("no saved login"),
        "{e}"
    );
    let auth = |login: &str| {
        let b64 = base64(login);
        format!(r#"{{"auths":{{"{AUTH_REG}":{{"auth":"{b64}"}}}}}}"#)
    };
    // A wrong password names the file it came from.
    let e = fails(&env.sh(&format!(
        "echo '{}' > bad.json && REGISTRY_AUTH_FILE=$PWD/bad.json shoal pull {img}",
        auth("shoaltest:nope")
    )));
    assert!(
        e.contains("authentication failed") && e.contains("bad.json"),
        "{e}"
    );
    // REGISTRY_AUTH_FILE, podman's auth.json, docker's config.json.
    for (i, setup) in [
        format!("echo '{}' > good.json && export REGISTRY_AUTH_FILE=$PWD/good.json", auth(AUTH_LOGIN)),
        format!("mkdir -p run/containers && echo '{}' > run/containers/auth.json && export XDG_RUNTIME_DIR=$PWD/run", auth(AUTH_LOGIN)),
        format!("mkdir -p docker && echo '{}' > docker/config.json && export DOCKER_CONFIG=$PWD/docker", auth(AUTH_LOGIN)),
    ]
    .iter()
    .enumerate()
    {
        let out = ok(&env.sh(&format!("export XDG_DATA_HOME=$PWD/data{i}; {setup}; shoal pull {img}")));
        assert!(out.contains("pulled"), "{out}");
    }
    // With the login sent from the start, a re-pull is still one request.
    let again = env.sh(&format!(
        "export XDG_DATA_HOME=$PWD/data0 REGISTRY_AUTH_FILE=$PWD/good.json SHOAL_DEBUG_HTTP=1; shoal pull {img}"
    ));
    assert!(ok(&again).contains("up to date"));
    assert_eq!(
        requests(&again.stderr).len(),
        1,
        "{:?}",
        requests(&again.stderr)
    );
    // ~/.docker/config.json itself, the default place.
    let home_cfg = env.tb.home.join(".docker/config.json");
    let out = env.sh(&format!(
        "mkdir -p ~/.docker && echo '{}' > ~/.docker/config.json && export XDG_DATA_HOME=$PWD/data9 && shoal pull {img}",
        auth(AUTH_LOGIN)
    ));
    let _ = std::fs::remove_file(&home_cfg);
    assert!(ok(&out).contains("pulled"));
}

fn base64(s: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        });
    String::from_utf8(out.unwrap().stdout).unwrap()
}

#[test]
fn tls_is_verified_unless_told_otherwise() {
    let env = Env::new("tls");
    let img = format!("{REG}/shoal/busybox");
    let e = fails(&env.sh(&format!("unset SSL_CERT_FILE; shoal pull {img}")));
    assert!(
        e.contains("TLS certificate check failed")
            && e.contains("ca_file")
            && e.contains("--tls-verify=false"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(env.images().is_empty());
    // The CA from the registry's config section.
    ok(&env.sh(&format!(
        "unset SSL_CERT_FILE; printf '[registries.\"{REG}\"]\\nca_file = \"{}\"\\n' > shoal.toml; shoal pull -q {img}",
        env.tb.ca_cert.display()
    )));
    assert_eq!(env.images().len(), 1);
    // One call without checks, for a lab registry.
    ok(&env.sh(&format!("unset SSL_CERT_FILE; : > shoal.toml; export XDG_DATA_HOME=$PWD/d2; shoal pull -q --tls-verify=false {img}")));
    // A CA file that is no CA file.
    let e = fails(&env.sh(&format!(
        "echo junk > junk.pem; SSL_CERT_FILE=$PWD/junk.pem shoal pull {img}"
    )));
    assert!(
        e.contains("junk.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
}

#[test]
fn corrupt_blob_fails_the_pull_and_leaves_nothing() {
    let env = Env::new("corrupt");
    let e = fails(&env.sh(&format!("shoal pull {REG}/shoal/fetch-corrupt")));
    assert!(
        e.contains("is corrupt") && e.contains("nothing was stored"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(env.images().is_empty());
    assert!(env.temps().is_empty(), "{:?}", env.temps());
    assert_eq!(
        json(&ok(&env.sh("shoal images --json"))),
        serde_json::json!([])
    );
}

#[test]
fn registry_errors_are_one_line_that_says_what_to_do() {
    let env = Env::new("errors");
    for (img, says) in [
        (
            format!("{REG}/shoal/no-such-image:1"),
            "not found on 127.0.0.1:5443",
        ),
        (
            format!("{REG}/shoal/busybox:no-such-tag"),
            "check the name and tag",
        ),
        (
            format!("{REG}/shoal/fetch-badmanifest"),
            "malformed manifest: image manifest without a `config`",
        ),
        // Nothing listens there: retried with backoff, then given up.
        (
            "127.0.0.1:5999/shoal/busybox".to_string(),
            "registry unreachable",
        ),
    ] {
        let e = fails(&env.sh(&format!("shoal pull {img}")));
        assert!(e.contains(says), "{img}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{img}: {e}");
        assert!(e.starts_with("shoal: "), "{e}");
    }
    let e = fails(&env.sh("shoal pull 'Bad::Ref'"));
    assert!(e.contains("invalid image reference"), "{e}");
    assert!(env.images().is_empty() && env.temps().is_empty());
}

#[test]
fn a_full_disk_is_reported_and_leaves_nothing() {
    let env = Env::new("diskfull");
    // A 4 MB tmpfs as the store, in the user's own namespaces.
    let e = fails(&env.sh(&format!(
        "mkdir -p data && unshare -Urm sh -c 'mount -t tmpfs -o size=4m tmpfs data && \"$0\" pull {REG}/shoal/fetch-big; rc=$?; ls -A data/shoal/images/sha256 2>/dev/null | wc -l >&2; exit $rc' '{}'",
        env.tb.shoal().display()
    )));
    assert!(
        e.contains("no space left") && e.contains("store.user_dir"),
        "{e}"
    );
    assert!(e.trim().ends_with('0'), "an image was published:\n{e}");
}

#[test]
fn concurrent_pulls_of_one_image_end_with_exactly_one_image() {
    let env = Env::new("concurrent");
    let out = ok(&env.sh(&format!(
        "pids=; for i in 1 2 3 4; do SHOAL_DEBUG_HTTP=1 shoal pull {REG}/shoal/fetch-big > out.$i 2>&1 & pids=\"$pids $!\"; done; \
         fail=0; for p in $pids; do wait $p || fail=1; done; cat out.*; exit $fail"
    )));
    assert_eq!(out.matches("fetch-big:latest: ").count(), 4, "{out}");
    // The waiting pulls found the image published: the layers were fetched
    // by one of the four only.
    let blob_gets = requests(out.as_bytes())
        .into_iter()
        .filter(|r| r.contains("/blobs/"))
        .count();
    assert_eq!(blob_gets, 2, "config and layer, once:\n{out}");
    assert_eq!(env.images().len(), 1, "{:?}", env.images());
    assert!(env.temps().is_empty(), "{:?}", env.temps());
    let info = json(&ok(
        &env.sh(&format!("shoal inspect --json {REG}/shoal/fetch-big"))
    ));
    let sqfs = info["squashfs"].as_str().unwrap();
    let size = ok(&env.sh(&format!("unsquashfs -lln '{sqfs}' data/random.bin")));
    assert!(size.contains(&(48 << 20).to_string()), "{size}");
}

#[test]
fn three_nodes_pulling_into_one_shared_store_end_with_one_image() {
    let env = Env::new("nodes");
    // One task per Slurm node, same store directory (the user's home is
    // shared by the three nodes, as a cluster's would be).
    let out = ok(&env.sh(&format!(
        "srun -N3 --ntasks-per-node=1 -l bash -c 'XDG_DATA_HOME={d}/data SSL_CERT_FILE={ca} {bin} --config {d}/shoal.toml pull {REG}/shoal/fetch-big'",
        d = env.dir.display(),
        ca = env.tb.ca_cert.display(),
        bin = env.tb.shoal().display()
    )));
    assert_eq!(out.matches("fetch-big:latest: ").count(), 3, "{out}");
    assert_eq!(env.images().len(), 1);
    assert!(env.temps().is_empty(), "{:?}", env.temps());
}

#[test]
fn killed_pull_leaves_no_image_and_the_next_pull_succeeds() {
    let env = Env::new("killed");
    let store = env.store();
    let img = format!("{REG}/shoal/fetch-big");
    // Kill it as soon as layer bytes are arriving in its work dir.
    let script = format!(
        "\"$SHOAL_BIN\" pull -q {img} & pid=$!; \
         for i in $(seq 1 3000); do \
           if [ -n \"$(find '{tmp}' -path '*/blobs/*' -size +1k 2>/dev/null)\" ]; then kill -9 $pid; wait $pid || true; echo killed; exit 0; fi; \
           sleep 0.005; done; wait $pid; echo finished",
        tmp = store.join("tmp").display()
    );
    let out = ok(&env.sh(&script));
    assert_eq!(
        out.trim(),
        "killed",
        "the pull ended before it could be killed"
    );
    assert!(
        env.images().is_empty(),
        "a killed pull published {:?}",
        env.images()
    );
    assert_eq!(
        env.temps().len(),
        1,
        "the killed pull's work dir stays until gc"
    );
    assert_eq!(
        json(&ok(&env.sh("shoal images --json"))),
        serde_json::json!([])
    );
    // The next pull does not trip over the leftovers; gc removes them.
    let out = ok(&env.sh(&format!("shoal pull {img}")));
    assert!(out.contains("pulled"), "{out}");
    let gc = ok(&env.sh("shoal gc"));
    assert!(gc.contains("1 leftover work dir"), "{gc}");
    assert!(env.temps().is_empty());
    assert_eq!(env.images().len(), 1);
}

#[test]
fn import_layout_archive_directory_and_squashfs() {
    let env = Env::new("import");
    let skopeo = format!("skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo docker://{REG}/shoal/busybox:latest");
    let out = ok(&env.sh(&format!(
        "{skopeo} oci:layout:bb && {skopeo} docker-archive:bb.tar:shoal/bb:1 && \
         mkdir -p tree/etc && echo hello > tree/etc/hello && \
         shoal import layout && shoal import --name localhost/bb:tar bb.tar && shoal import tree && \
         shoal pull -q {REG}/shoal/busybox && cp \"$(shoal inspect --json {REG}/shoal/busybox | sed -n 's/.*\"squashfs\": \"\\(.*\\)\".*/\\1/p')\" copy.sqfs && \
         shoal import --name localhost/copy:1 copy.sqfs && shoal images"
    )));
    for name in [
        "localhost/layout:latest",
        "localhost/bb:tar",
        "localhost/tree:latest",
        "localhost/copy:1",
    ] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    // Layout and archive keep the image's settings; the directory's content
    // is there.
    for name in ["localhost/layout", "localhost/bb:tar"] {
        let info = json(&ok(&env.sh(&format!("shoal inspect --json {name}"))));
        assert_eq!(
            info["config"]["cmd"],
            serde_json::json!(["/bin/sh"]),
            "{name}"
        );
        let marker = ok(&env.sh(&format!(
            "unsquashfs -cat '{}' etc/shoal-test-image",
            info["squashfs"].as_str().unwrap()
        )));
        assert_eq!(marker.trim(), "shoal test image: busybox", "{name}");
    }
    let tree = json(&ok(&env.sh("shoal inspect --json localhost/tree")));
    assert_eq!(
        ok(&env.sh(&format!(
            "unsquashfs -cat '{}' etc/hello",
            tree["squashfs"].as_str().unwrap()
        )))
        .trim(),
        "hello"
    );
    let e = fails(&env.sh("echo notanimage > x.bin && shoal import x.bin"));
    assert!(e.contains("x.bin"), "{e}");
    let e = fails(&env.sh("shoal import /nonexistent"));
    assert!(e.contains("/nonexistent"), "{e}");
}

#[test]
fn site_store_is_written_by_admins_and_read_by_users() {
    let tb = testbed();
    let env = Env::new("site");
    let site = PathBuf::from(format!("/var/tmp/shoal-site-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&site);
    let cfg = env.dir.join("site.toml");
    std::fs::write(
        &cfg,
        format!("[store]\nsite_dir = \"{}\"\n", site.display()),
    )
    .unwrap();
    ok(&tb.root(&format!(
        "XDG_DATA_HOME=/nonexistent SSL_CERT_FILE={} {} --config {} pull -q --site {REG}/shoal/busybox",
        tb.ca_cert.display(),
        tb.shoal().display(),
        cfg.display()
    )));
    let info = json(&ok(&env.sh(&format!(
        "shoal --config '{}' inspect --json {REG}/shoal/busybox",
        cfg.display()
    ))));
    assert_eq!(info["scope"], "site");
    assert!(Path::new(info["squashfs"].as_str().unwrap()).starts_with(&site));
    let e = fails(&env.sh(&format!(
        "shoal --config '{}' pull --site {REG}/shoal/fetch-multiarch",
        cfg.display()
    )));
    assert!(
        e.contains(&site.display().to_string()) && e.to_lowercase().contains("permission denied"),
        "{e}"
    );
    std::fs::remove_dir_all(&site).unwrap();
}

/// `skopeo copy` of `repo:tag` from the registry, `umoci unpack` as root
/// (real owners), device nodes dropped (Shoal drops them: mounts are
/// nodev), packed by mksquashfs: an independent reference for what a pull
/// must produce. Returns the reference squashfs, readable by the user.
fn reference_squashfs(tb: &Testbed, repo_tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/var/tmp/shoal-pull-ref-{}-{}",
        std::process::id(),
        repo_tag.replace([':', '/'], "-")
    ));
    let out = dir.with_extension("sqfs");
    ok(&tb.root(&format!(
        "set -e; rm -rf {d} {o}; mkdir -p {d}; \
         skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo docker://{REG}/{repo_tag} oci:{d}/layout:ref; \
         umoci unpack --image {d}/layout:ref {d}/bundle >/dev/null; \
         find {d}/bundle/rootfs \\( -type b -o -type c \\) -delete; \
         mksquashfs {d}/bundle/rootfs {o} -noappend -quiet -no-progress -xattrs -comp lz4 >/dev/null; \
         chmod 644 {o}; rm -rf {d}",
        d = dir.display(),
        o = out.display()
    )));
    out
}

/// `sqfsdiff` as the user: same entries, contents, owners and permissions.
/// Basic vs extended inode types are how a writer packs, not content.
fn assert_same_tree(tb: &Testbed, reference: &Path, ours: &str) {
    let out = tb.user(&format!(
        "sqfsdiff -a '{}' -b '{ours}'",
        reference.display()
    ));
    let report = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = report
        .lines()
        .filter(|l| !l.ends_with("has an extended type") && !l.ends_with("has a basic type"))
        .collect();
    assert!(
        out.status.code() == Some(0) || (out.status.code() == Some(1) && real.is_empty()),
        "sqfsdiff {} {ours}: {}\n{report}{}",
        reference.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pulled_layers_image_matches_umoci_unpack_of_the_same_image() {
    // Whiteouts, an opaque directory, a hard link, symlinks, a file replaced
    // by a directory across layers, a setuid file (tests/testbed/mklayers.py).
    let env = Env::new("layers");
    ok(&env.sh(&format!(
        "shoal pull -q {REG}/shoal/layers:latest && shoal pull -q {REG}/shoal/layers:zstd"
    )));
    let gz = json(&ok(
        &env.sh(&format!("shoal inspect --json {REG}/shoal/layers:latest"))
    ));
    let zst = json(&ok(
        &env.sh(&format!("shoal inspect --json {REG}/shoal/layers:zstd"))
    ));
    let reference = reference_squashfs(env.tb, "shoal/layers:latest");
    assert_same_tree(env.tb, &reference, gz["squashfs"].as_str().unwrap());
    // The zstd-compressed layers give the same tree.
    assert_same_tree(env.tb, &reference, zst["squashfs"].as_str().unwrap());
    let _ = std::fs::remove_file(&reference);
    // The setuid bit is kept in the image (mounts are nosuid).
    let list = ok(&env.sh(&format!(
        "unsquashfs -lln '{}'",
        gz["squashfs"].as_str().unwrap()
    )));
    assert!(
        list.lines().any(|l| l.starts_with("-rws")),
        "no setuid file in:\n{list}"
    );
}

#[test]
fn malicious_layers_are_refused_and_write_nothing_outside() {
    let env = Env::new("evil");
    let sentinel = Path::new("/tmp/shoal-evil-escaped");
    for (tag, says) in [
        ("latest", "`a`"),
        ("samelayer", "`b/shoal-evil-escaped`"),
        ("dotdot", "climbs out of the image root"),
        ("hardlink", "climbs out of the image root"),
    ] {
        let e = fails(&env.sh(&format!("shoal pull {REG}/shoal/evil:{tag}")));
        assert!(
            e.contains(says) && e.contains("cannot be converted safely"),
            "evil:{tag}: {e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "evil:{tag}: {e}");
        assert!(
            !sentinel.exists(),
            "evil:{tag} wrote {}",
            sentinel.display()
        );
        assert!(
            env.images().is_empty() && env.temps().is_empty(),
            "evil:{tag} left {:?} {:?}",
            env.images(),
            env.temps()
        );
    }
    // An absolute name is taken inside the image root.
    ok(&env.sh(&format!("shoal pull -q {REG}/shoal/evil:absolute")));
    let info = json(&ok(
        &env.sh(&format!("shoal inspect --json {REG}/shoal/evil:absolute"))
    ));
    let inside = ok(&env.sh(&format!(
        "unsquashfs -cat '{}' tmp/shoal-evil-absolute",
        info["squashfs"].as_str().unwrap()
    )));
    assert_eq!(inside.trim(), "inside");
    assert!(!Path::new("/tmp/shoal-evil-absolute").exists());
}

#[test]
fn mirrors_are_tried_first_and_fall_through() {
    let env = Env::new("mirrors");
    let img = format!("{REG}/shoal/busybox");
    let login = format!(
        r#"{{"auths":{{"{AUTH_REG}":{{"auth":"{}"}}}}}}"#,
        base64(AUTH_LOGIN)
    );
    // A dead mirror, then the login-protected registry (which has the same
    // repository), then the registry itself.
    let out = env.sh(&format!(
        "echo '{login}' > auth.json; export REGISTRY_AUTH_FILE=$PWD/auth.json; \
         printf '[registries.\"{REG}\"]\\nmirrors = [\"127.0.0.1:5999\", \"{AUTH_REG}\"]\\n' > shoal.toml; \
         SHOAL_DEBUG_HTTP=1 shoal pull {img}"
    ));
    ok(&out);
    let reqs = requests(&out.stderr);
    assert!(reqs[0].contains("https://127.0.0.1:5999/"), "{reqs:?}");
    let blobs: Vec<&String> = reqs.iter().filter(|r| r.contains("/blobs/")).collect();
    assert!(
        !blobs.is_empty()
            && blobs
                .iter()
                .all(|r| r.contains(&format!("https://{AUTH_REG}/"))),
        "{reqs:?}"
    );
    // An image the mirrors lack comes from the registry itself.
    let out = env.sh(&format!("export REGISTRY_AUTH_FILE=$PWD/auth.json; SHOAL_DEBUG_HTTP=1 shoal pull {REG}/shoal/fetch-multiarch"));
    ok(&out);
    assert!(requests(&out.stderr)
        .iter()
        .any(|r| r.contains(&format!("https://{REG}/v2/shoal/fetch-multiarch/blobs/"))));
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let env = Env::new("progress");
    let img = format!("{REG}/shoal/fetch-big");
    // Not a terminal: no progress on stderr, one summary line on stdout.
    let out = env.sh(&format!("shoal pull {img}"));
    assert_eq!(ok(&out).lines().count(), 1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -q: nothing at all.
    let out = env.sh(&format!("shoal rm {img} >/dev/null && shoal pull -q {img}"));
    assert!(ok(&out).is_empty() && out.stderr.is_empty());
    // On a terminal (script(1) gives it a pty): bars for both phases.
    let out = ok(&env.sh(&format!(
        "shoal rm {img} >/dev/null && TERM=xterm script -qec \"$SHOAL_BIN pull {img}\" /dev/null"
    )));
    assert!(
        out.contains("downloading") && out.contains("converting"),
        "{out}"
    );
    assert!(out.contains("fetch-big:latest: pulled"), "{out}");
}

#[test]
fn bearer_token_registry_gets_a_token_with_the_saved_login() {
    // 127.0.0.1:5445 answers 401 with `Bearer realm="https://127.0.0.1:5446/token"`;
    // the token server (tests/testbed/token_server.py) wants the test login.
    let env = Env::new("bearer");
    let img = "127.0.0.1:5445/shoal/busybox:latest";
    let e = fails(&env.sh(&format!("shoal pull {img}")));
    assert!(
        e.contains("127.0.0.1:5445: authentication failed") && e.contains("no saved login"),
        "{e}"
    );
    let login = format!(
        r#"{{"auths":{{"127.0.0.1:5445":{{"auth":"{}"}}}}}}"#,
        base64(AUTH_LOGIN)
    );
    let out = env.sh(&format!("echo '{login}' > auth.json; REGISTRY_AUTH_FILE=$PWD/auth.json SHOAL_DEBUG_HTTP=1 shoal pull {img}"));
    assert!(ok(&out).contains("pulled"));
    let reqs = requests(&out.stderr);
    // One token per repository, reused for the manifest and every blob.
    assert_eq!(
        reqs.iter().filter(|r| r.contains("(token)")).count(),
        1,
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.contains("https://127.0.0.1:5446/token")),
        "{reqs:?}"
    );
    let info = json(&ok(&env.sh(&format!("shoal inspect --json {img}"))));
    assert_eq!(info["config"]["labels"]["org.shoal.test"], "busybox");
}
