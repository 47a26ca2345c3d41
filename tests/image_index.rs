//! Image indexes with fine-grained entries (CPU level, archspec target,
//! GPU) on the real registry and the three-node cluster: `shoal pull`
//! keeps the index, `shoal run` and `srun --image` run the entry the
//! selection rules give each node, `--image-select=uniform` one entry for
//! all, and nothing fitting is an error that lists every entry.
//!
//! The hand-written index (`i14/hpc-index:1`, pushed byte for byte) holds,
//! in order: `[0]` linux/amd64 (generic), `[1]` linux/amd64/v3, `[2]`
//! linux/amd64/v4, `[3]` linux/amd64/v3 with `gpu.available: yes` and CUDA
//! 12.2, `[4]` linux/amd64/v4 with `io.archspec.cpu.target: zen4`, `[5]`
//! linux/arm64/v8, `[6]` an attestation (unknown/unknown). Each image's
//! `/etc/variant` names its entry. The same images are also pushed one tag
//! each (`t14/hpc-parts:VARIANT`), and `shoal index create` builds
//! `t14/hpc-index:1` from them (the attestation aside), which the run tests
//! use: the feature for image authors, end to end.
//!
//! What this machine should get follows from the rules and its CPU
//! ([`expected_here`]): an AMD CPU with every feature archspec lists for
//! Zen 4 (a VM may hide some: rdseed, pku) the zen4 build, another CPU with
//! the x86-64-v4 flags (AVX-512 F/BW/CD/DQ/VL) the v4 build, else v3 if it
//! has the v3 flags, else the generic one; no
//! entry needs a GPU this machine lacks (the test bed's GPUs are fakes
//! outside the PCI bus, so none is detected).

mod support;

use std::sync::{Mutex, MutexGuard, OnceLock};

use support::{fails, ok, slurm, Testbed};

const REG: &str = "127.0.0.1:5443";
const CONF: &str = "/etc/shoal/shoal.toml";

fn image() -> String {
    format!("{REG}/i14/hpc-index:1")
}

/// Tests here change the cluster-wide config: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the index with umoci (one image per entry, over the test bed's
/// busybox) and pushes it with skopeo, keeping its digest; returns the
/// index digest. Once per test binary; the user's pull follows.
fn index_digest(tb: &Testbed) -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let script = format!(
            r#"set -euo pipefail
W=$(mktemp -d /tmp/i14-index.XXXXXX); trap 'rm -rf "$W"' EXIT
CERTS=/var/lib/shoal-testbed/tls/skopeo
skopeo copy -q --src-cert-dir "$CERTS" docker://{REG}/shoal/busybox:latest "oci:$W/oci:base"
for v in generic v3 v4 gpu zen4 arm64 ompi mpich; do
    umoci unpack --image "$W/oci:base" "$W/b-$v" >/dev/null
    echo "variant $v" > "$W/b-$v/rootfs/etc/variant"
    if [ $v = ompi ] || [ $v = mpich ]; then
        # A glibc and its (static) ldconfig, the node's, for the host
        # libraries of the `mpich` module.
        G=/lib/x86_64-linux-gnu
        mkdir -p "$W/b-$v/rootfs$G" "$W/b-$v/rootfs/lib64" "$W/b-$v/rootfs/sbin"
        cp $G/libc.so.6 $G/libm.so.6 $G/ld-linux-x86-64.so.2 "$W/b-$v/rootfs$G/"
        ln -s $G/ld-linux-x86-64.so.2 "$W/b-$v/rootfs/lib64/"
        cp /sbin/ldconfig "$W/b-$v/rootfs/sbin/"
        echo $G > "$W/b-$v/rootfs/etc/ld.so.conf"
    fi
    umoci repack --image "$W/oci:$v" "$W/b-$v"
    [ $v != arm64 ] || umoci config --image "$W/oci:$v" --architecture arm64
    # One plain image per tag, for `shoal index create` (built_index).
    skopeo copy -q --dest-cert-dir "$CERTS" "oci:$W/oci:$v" docker://{REG}/t14/hpc-parts:$v
done
python3 - "$W/oci" <<'PY'
import hashlib, json, os, sys
lay = sys.argv[1]
idx = json.load(open(os.path.join(lay, "index.json")))
tags = {{m["annotations"]["org.opencontainers.image.ref.name"]: m for m in idx["manifests"]}}
M = "application/vnd.oci.image.manifest.v1+json"
def e(tag, platform, annotations=None):
    d = {{"mediaType": M, "digest": tags[tag]["digest"], "size": tags[tag]["size"], "platform": platform}}
    if annotations: d["annotations"] = annotations
    return d
amd = lambda v=None: dict({{"architecture": "amd64", "os": "linux"}}, **({{"variant": v}} if v else {{}}))
entries = [
    e("generic", amd()),
    e("v3", amd("v3")),
    e("v4", amd("v4")),
    e("gpu", amd("v3"), {{"org.supercontainers.hardware.gpu.available": "yes", "org.supercontainers.hardware.gpu.cuda.version": "12.2"}}),
    e("zen4", amd("v4"), {{"io.archspec.cpu.target": "zen4"}}),
    e("arm64", {{"architecture": "arm64", "os": "linux", "variant": "v8"}}),
    e("generic", {{"architecture": "unknown", "os": "unknown"}}, {{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": tags["generic"]["digest"]}}),
]
# Written once, as it will be served: never re-serialized after this.
body = json.dumps({{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}}, indent=1).encode()
h = hashlib.sha256(body).hexdigest()
open(os.path.join(lay, "blobs/sha256", h), "wb").write(body)
idx["manifests"].append({{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + h, "size": len(body), "annotations": {{"org.opencontainers.image.ref.name": "hpc"}}}})
json.dump(idx, open(os.path.join(lay, "index.json"), "w"))
print("sha256:" + h)
PY
skopeo copy -q --all --preserve-digests --dest-cert-dir "$CERTS" "oci:$W/oci:hpc" docker://{image}
"#,
            image = image()
        );
        let digest = ok(&tb.root(&script)).trim().lines().last().unwrap().to_string();
        // The registry serves exactly those bytes.
        let served = ok(&tb.root(&format!(
            "curl -sf --cacert /var/lib/shoal-testbed/tls/cert.pem -H 'Accept: application/vnd.oci.image.index.v1+json' \
             https://{REG}/v2/i14/hpc-index/manifests/1 | sha256sum | cut -d' ' -f1"
        )));
        assert_eq!(format!("sha256:{}", served.trim()), digest, "the registry re-serialized the index");
        ok(&tb.user(&format!("shoal pull -q {}", image())));
        digest
    })
}

/// What `shoal index create` did in [`built_index`].
struct Built {
    /// The index digest it printed.
    digest: String,
    /// Its stdout (one line per entry, then the summary) and stderr.
    out: String,
    err: String,
    /// What `--dry-run` printed, and the sha256 of those bytes.
    dry: Vec<u8>,
    dry_sha: String,
}

/// `shoal index create` (as the user) builds `t14/hpc-index:1` from the
/// one-image tags `t14/hpc-parts:*` with the platform and annotations of the
/// hand-written index, generic build given second (it is moved first);
/// the user pulls it.
fn built_index(tb: &Testbed) -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        index_digest(tb);
        let part = |v: &str| format!("{REG}/t14/hpc-parts:{v}");
        let entries = format!(
            "--entry {},variant=v4 --entry {} --entry {},variant=v3 \\
             --entry {},variant=v3,gpu=yes,cuda=12.2 --entry {},target=zen4 --entry {},variant=v8",
            part("v4"),
            part("generic"),
            part("v3"),
            part("gpu"),
            part("zen4"),
            part("arm64")
        );
        let dir = tb.user_tempdir("index-create");
        let d = dir.display();
        ok(&tb.user(&format!(
            "cd {d} && shoal index create --dry-run {built} {entries} > dry.json 2>/dev/null && \\
             sha256sum < dry.json | cut -d' ' -f1 > dry.sha && \\
             shoal index create {built} {entries} > out 2> err",
            built = built_image()
        )));
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let text = |f: &str| String::from_utf8(read(f)).unwrap();
        let out = text("out");
        let digest = out
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("pushed image index "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no digest in:\n{out}"))
            .to_string();
        ok(&tb.user(&format!("shoal pull -q {}", built_image())));
        Built {
            digest,
            out,
            err: text("err"),
            dry: read("dry.json"),
            dry_sha: text("dry.sha").trim().to_string(),
        }
    })
}

fn built_image() -> String {
    format!("{REG}/t14/hpc-index:1")
}

/// The entry (its `/etc/variant` name) the rules give this machine's CPU.
fn expected_here() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("flags")
                .and_then(|r| r.split_once(':'))
                .map(|(_, f)| f)
        })
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let has = |fs: &[&str]| fs.iter().all(|f| flags.contains(f));
    let v4 = has(&["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]);
    let v3 = has(&[
        "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
    ]);
    // Every feature of archspec's zen4 (and so of its ancestors), as
    // Linux names them (`pni` for SSE3).
    let zen4 = archspec::cpu::Microarchitecture::known_targets()
        .get("zen4")
        .is_some_and(|t| t.all_features().iter().all(|f| flags.contains(&f.as_str()) || (f == "sse3" && flags.contains(&"pni"))));
    if v4 && zen4 && cpuinfo.contains("AuthenticAMD") {
        "zen4"
    } else if v4 {
        "v4"
    } else if v3 {
        "v3"
    } else {
        "generic"
    }
}

/// Puts `[nodes.*]` tables into the cluster's config while alive.
struct NodeOverrides(String);

impl NodeOverrides {
    fn set(tables: &str) -> NodeOverrides {
        let saved = std::fs::read_to_string(CONF).unwrap();
        std::fs::write(
            CONF,
            format!("{saved}\n# --- i14 test overrides ---\n{tables}\n"),
        )
        .unwrap();
        NodeOverrides(saved)
    }
}

impl Drop for NodeOverrides {
    fn drop(&mut self) {
        std::fs::write(CONF, &self.0).unwrap();
    }
}

/// n1 a generic x86-64-v3 CPU, n2 a Haswell with an NVIDIA GPU (driver
/// for CUDA 12.2), n3 a Zen 4.
const PER_NODE: &str = r#"
[nodes.n1]
cpu_target = "x86_64_v3"
gpus = []
[nodes.n2]
cpu_target = "haswell"
gpus = [{ vendor = "nvidia", driver = "535.104.05" }]
[nodes.n3]
cpu_target = "zen4"
gpus = []
"#;

fn by_node(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(n, rest)| (n.to_string(), rest.trim().to_string()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn pull_keeps_the_index_and_select_explains_this_node() {
    let _s = serial();
    let tb = slurm();
    let digest = index_digest(tb);
    // Kept byte for byte in the user's store.
    let kept = ok(&tb.user(&format!(
        "sha256sum ~/.local/share/shoal/indexes/sha256/{}",
        &digest[7..]
    )));
    assert!(kept.starts_with(&digest[7..]), "{kept}");
    // Every amd64 entry was converted; arm64 and the attestation not.
    let images = ok(&tb.user("shoal images"));
    for key in [
        "#0 linux/amd64",
        "#1 linux/amd64/v3",
        "#2 linux/amd64/v4",
        "#3 linux/amd64/v3",
        "#4 linux/amd64/v4",
    ] {
        assert!(images.contains(key), "{key} in:\n{images}");
    }
    assert!(!images.contains("#5") && !images.contains("#6"), "{images}");
    let want = expected_here();
    let sel: serde_json::Value =
        serde_json::from_str(&ok(&tb.user(&format!("shoal select --json {}", image())))).unwrap();
    let pos = ["generic", "v3", "v4", "gpu", "zen4"]
        .iter()
        .position(|v| *v == want)
        .unwrap();
    assert_eq!(
        sel["chosen"], sel["entries"][pos]["entry"]["digest"],
        "{sel:#}"
    );
    assert_eq!(sel["index"].as_str(), Some(digest));
    assert_eq!(
        sel["entries"][5]["reason"],
        "for linux/arm64, the node is linux/amd64"
    );
    assert_eq!(
        sel["entries"][6]["reason"],
        "not an image (attestation or other artifact)"
    );
    let text = ok(&tb.user(&format!("shoal select {}", image())));
    assert!(
        text.contains("chosen:") && text.contains("refused: needs a GPU, the node has none"),
        "{text}"
    );
    // Other nodes, from capabilities files: a Zen 4 and a Neoverse N1.
    let dir = tb.user_tempdir("select-nodes");
    let d = dir.display();
    ok(&tb.user(&format!(
        "cd {d} && shoal select --capabilities > here.json && \
         python3 -c \"import json;c=json.load(open('here.json'));c['cpu']['architecture']='arm64';json.dump(c,open('arm.json','w'))\""
    )));
    let arm = ok(&tb.user(&format!(
        "cd {d} && shoal select --node far=arm.json {}",
        image()
    )));
    assert!(
        arm.contains("[5]") && arm.contains("chosen:     [5] linux/arm64/v8"),
        "{arm}"
    );
    // `shoal doctor` shows what selection sees.
    let doctor = tb.user("shoal doctor");
    assert!(
        String::from_utf8_lossy(&doctor.stdout).contains("node capabilities (for image indexes)")
    );
}

#[test]
fn shoal_index_pushes_the_bytes_it_wrote_with_the_generic_build_first() {
    let _s = serial();
    let tb = slurm();
    let b = built_index(tb);
    // `--dry-run` printed the very bytes pushed, and the registry serves them.
    assert_eq!(b.digest, format!("sha256:{}", b.dry_sha), "{}", b.out);
    let served = ok(&tb.root(&format!(
        "curl -sf --cacert /var/lib/shoal-testbed/tls/cert.pem -H 'Accept: application/vnd.oci.image.index.v1+json' \
         https://{REG}/v2/t14/hpc-index/manifests/1 | sha256sum | cut -d' ' -f1"
    )));
    assert_eq!(format!("sha256:{}", served.trim()), b.digest);
    // The generic build, given second, went first, and said so.
    assert!(
        b.err.contains(&format!(
            "warning: moved {REG}/t14/hpc-parts:generic (linux/amd64) before {REG}/t14/hpc-parts:v4 (linux/amd64/v4)"
        )),
        "{}",
        b.err
    );
    let doc: serde_json::Value = serde_json::from_slice(&b.dry).unwrap();
    assert_eq!(doc["mediaType"], "application/vnd.oci.image.index.v1+json");
    let m = doc["manifests"].as_array().unwrap();
    let platforms: Vec<String> = m
        .iter()
        .map(|e| {
            let p = &e["platform"];
            format!(
                "{}/{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                p["variant"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            "linux/amd64/-",
            "linux/amd64/v4",
            "linux/amd64/v3",
            "linux/amd64/v3",
            "linux/amd64/v4",
            "linux/arm64/v8"
        ]
    );
    assert_eq!(
        m[3]["annotations"]["org.supercontainers.hardware.gpu.available"],
        "yes"
    );
    assert_eq!(
        m[3]["annotations"]["org.supercontainers.hardware.gpu.cuda.version"],
        "12.2"
    );
    // zen4 got its generic level as the variant.
    assert_eq!(m[4]["annotations"]["io.archspec.cpu.target"], "zen4");
    // Entries of another repository of the same registry are mounted, never
    // streamed (or were there from an earlier run).
    let entry_lines: Vec<&str> = b.out.lines().filter(|l| l.starts_with("  [")).collect();
    assert_eq!(entry_lines.len(), 6, "{}", b.out);
    for l in &entry_lines {
        assert!(
            l.ends_with("already in the repository") || l.contains("blobs mounted, 0 streamed"),
            "{l}"
        );
    }
    // The pulled index is the pushed one, and this node's choice is the rules'.
    let sel: serde_json::Value = serde_json::from_str(&ok(
        &tb.user(&format!("shoal select --json {}", built_image()))
    ))
    .unwrap();
    assert_eq!(sel["index"].as_str(), Some(b.digest.as_str()));
    let pos = ["generic", "v4", "v3", "gpu", "zen4"]
        .iter()
        .position(|v| *v == expected_here())
        .unwrap();
    assert_eq!(
        sel["chosen"], sel["entries"][pos]["entry"]["digest"],
        "{sel:#}"
    );
    // Bad input: an index as an entry, a target of another architecture.
    let e = fails(&tb.user(&format!(
        "shoal index create {REG}/t14/bad:1 --entry {}",
        built_image()
    )));
    assert!(
        e.contains("is an image index") && e.contains("name one of its images by digest"),
        "{e}"
    );
    let e = fails(&tb.user(&format!(
        "shoal index create {REG}/t14/bad:1 --entry {REG}/t14/hpc-parts:v4,target=neoverse_v1"
    )));
    assert!(
        e.contains("target neoverse_v1 is for aarch64 CPUs, the image is linux/amd64"),
        "{e}"
    );
}

#[test]
fn shoal_run_runs_the_entry_the_rules_give_this_cpu() {
    let _s = serial();
    let tb = slurm();
    built_index(tb);
    let out = ok(&tb.user(&format!("shoal run {} cat /etc/variant", built_image())));
    assert_eq!(out.trim(), format!("variant {}", expected_here()));
}

#[test]
fn srun_on_three_nodes_runs_this_machines_entry_everywhere() {
    let _s = serial();
    let tb = slurm();
    built_index(tb);
    let out = ok(&tb.user(&format!(
        "srun -N3 --image={} sh -c 'echo $(hostname) $(cat /etc/variant)'",
        built_image()
    )));
    let want = format!("variant {}", expected_here());
    assert_eq!(
        by_node(&out),
        ["n1", "n2", "n3"].map(|n| (n.to_string(), want.clone())),
        "{out}"
    );
}

#[test]
fn each_node_runs_its_own_variant_and_uniform_runs_one() {
    let _s = serial();
    let tb = slurm();
    built_index(tb);
    let _o = NodeOverrides::set(PER_NODE);
    let cmd = "sh -c 'echo $(hostname) $(cat /etc/variant)'";
    let out = ok(&tb.user(&format!("srun -N3 --image={} {cmd}", built_image())));
    let got = by_node(&out);
    let want = [
        ("n1", "variant v3"),
        ("n2", "variant gpu"),
        ("n3", "variant zen4"),
    ];
    assert_eq!(
        got,
        want.map(|(n, v)| (n.to_string(), v.to_string())),
        "{out}"
    );
    // The batch script's node chooses for the batch step too.
    let dir = tb.user_tempdir("index-batch");
    let d = dir.display();
    let out = ok(&tb.user(&format!(
        "cd {d} && sbatch --wait -N1 -w n3 -o b.out --image={} --wrap='cat /etc/variant'; rc=$?; cat b.out; exit $rc",
        built_image()
    )));
    assert!(out.contains("variant zen4"), "{out}");
    // Uniform: the best entry all three accept is the plain v3 build.
    let out = ok(&tb.user(&format!(
        "srun -N3 --image={} --image-select=uniform {cmd}",
        built_image()
    )));
    assert_eq!(
        by_node(&out),
        ["n1", "n2", "n3"].map(|n| (n.to_string(), "variant v3".to_string())),
        "{out}"
    );
    // The same through salloc, its steps inheriting the pin and the mode.
    let out = ok(&tb.user(&format!(
        "salloc -N3 --image={} --image-select=uniform srun -N3 {cmd}",
        built_image()
    )));
    let lines: Vec<_> = by_node(&out)
        .into_iter()
        .filter(|(n, _)| n.starts_with('n'))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.iter().all(|(_, v)| v == "variant v3"), "{out}");
}

#[test]
fn nothing_fitting_is_refused_with_every_entry_and_why() {
    let _s = serial();
    let tb = slurm();
    index_digest(tb);
    // A node whose architecture the site declares as ppc64le.
    let _o = NodeOverrides::set("[nodes.n1]\narchitecture = \"ppc64le\"\n");
    let r = tb.user(&format!(
        "srun -N1 -w n1 --image={} cat /etc/variant",
        image()
    ));
    let e = format!("{}{}", String::from_utf8_lossy(&r.stdout), fails(&r));
    assert!(
        e.contains("no entry of the image index fits node n1"),
        "{e}"
    );
    for (i, why) in [
        (0, "for linux/amd64, the node is linux/ppc64le"),
        (2, "for linux/amd64, the node is linux/ppc64le"),
        (5, "for linux/arm64, the node is linux/ppc64le"),
        (6, "not an image (attestation or other artifact)"),
    ] {
        assert!(
            e.contains(&format!("[{i}] ")) && e.contains(why),
            "[{i}] {why} in:\n{e}"
        );
    }
    assert!(!e.contains("variant "), "nothing may run: {e}");
    // Uniform over n1 and n2: the same listing, each reason naming its node.
    let r = tb.user(&format!(
        "srun -N2 -w n1,n2 --image={} --image-select=uniform cat /etc/variant",
        image()
    ));
    let e = format!("{}{}", String::from_utf8_lossy(&r.stdout), fails(&r));
    assert!(
        e.contains("fits node n1, n2") && e.contains("n1: for linux/amd64"),
        "{e}"
    );
}

/// An MPI-annotated index built with `shoal index create`: an Open MPI build
/// weighted above an MPICH one (and a generic build first). A job without an
/// MPI module runs the weighted one (the annotation neither helps nor
/// hurts); a job with the `mpich` module (the host's MPICH, ABI family
/// MPICH from its SONAME) refuses the Open MPI build and runs the MPICH one.
#[test]
fn a_jobs_mpi_module_picks_the_entry_of_its_abi_family() {
    let _s = serial();
    let tb = slurm();
    index_digest(tb);
    let img = format!("{REG}/t14/mpi-index:1");
    ok(&tb.user(&format!(
        "shoal index create -q {img} --entry {REG}/t14/hpc-parts:generic \
         --entry {REG}/t14/hpc-parts:ompi,mpi=openmpi,mpi-version=4.1,weight=1 \
         --entry {REG}/t14/hpc-parts:mpich,mpi=mpich,mpi-version=4.0 && shoal pull -q {img}"
    )));
    let out = ok(&tb.user(&format!("srun -N1 -w n1 --image={img} cat /etc/variant")));
    assert_eq!(out.trim(), "variant ompi");
    let r = tb.user(&format!(
        "srun -N1 -w n1 --module=mpich --image={img} cat /etc/variant"
    ));
    let out = ok(&r);
    assert_eq!(
        out.trim(),
        "variant mpich",
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let sel = ok(&tb.user(&format!("shoal select --module=mpich {img}")));
    assert!(
        sel.contains("refused: MPI openmpi (openmpi ABI), the job's MPI module is"),
        "{sel}"
    );
}

/// `shoal index create` into another registry, one with Bearer-token auth
/// (127.0.0.1:5445, the test login): the entries' blobs are streamed from
/// the first registry, the index pushed with a token for push, and the
/// result pulls and runs.
#[test]
fn shoal_index_copies_entries_into_another_registry_with_a_token_login() {
    let _s = serial();
    let tb = slurm();
    index_digest(tb);
    let dir = tb.user_tempdir("index-token");
    let d = dir.display();
    let img = "127.0.0.1:5445/t14/copied:1";
    let create = format!(
        "SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem shoal index create {img} \
         --entry {REG}/t14/hpc-parts:generic --entry {REG}/t14/hpc-parts:v3,variant=v3"
    );
    let e = fails(&tb.user(&format!("cd {d} && {create}")));
    assert!(
        e.contains("127.0.0.1:5445: authentication failed (no saved login found)"),
        "{e}"
    );
    let out = ok(&tb.user(&format!(
        "cd {d} && printf '{{\"auths\":{{\"127.0.0.1:5445\":{{\"auth\":\"%s\"}}}}}}' \
         \"$(printf %s shoaltest:shoal-test-password | base64)\" > auth.json && \
         export REGISTRY_AUTH_FILE=$PWD/auth.json SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem && \
         {create} && shoal pull -q {img} && \
         shoal select --json {img} > sel.json && shoal run {img} cat /etc/variant"
    )));
    let lines: Vec<&str> = out.lines().collect();
    for l in lines.iter().filter(|l| l.starts_with("  [")) {
        // Streamed across registries (or there from an earlier run).
        assert!(
            l.ends_with("already in the repository") || l.contains("0 blobs mounted"),
            "{l}"
        );
    }
    let digest = lines
        .iter()
        .find_map(|l| l.strip_prefix("pushed image index "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"));
    let sel: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("sel.json")).unwrap()).unwrap();
    assert_eq!(sel["index"].as_str(), Some(digest));
    let want = if expected_here() == "generic" {
        "generic"
    } else {
        "v3"
    };
    assert_eq!(
        lines.last().copied(),
        Some(format!("variant {want}").as_str()),
        "{out}"
    );
}
