//! Unit tests of index composition: parsing what authors write, entries
//! from manifests and configs, ordering, and the bytes written (read back
//! through the selection itself).

use super::*;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::image::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::image::registry::FetchedManifest;
use crate::reference::Digest;
use crate::select::capabilities::NodeCapabilities;
use crate::select::cpu::tests::{arch_of, fixture};
use crate::select::capabilities::Mpi;
use crate::select::index::{select, ANN_CUDA, ANN_GPU, ANN_MPI, ANN_MPI_VERSION, ANN_TARGET, ANN_WEIGHT};
use crate::select::JobRequest;

fn d(c: char) -> Digest {
    format!("sha256:{}", c.to_string().repeat(64))
        .parse()
        .unwrap()
}

fn manifest(c: char) -> FetchedManifest {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        d(c)
    )
    .into_bytes();
    FetchedManifest {
        digest: crate::image::registry::sha256_digest(&body),
        body,
        content_type: Some(OCI_MANIFEST.into()),
    }
}

const AMD64: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
const ARM64: &[u8] = br#"{"architecture":"arm64","os":"linux","variant":"v8"}"#;

fn entry(spec: &str, config: &[u8], c: char) -> Result<Resolved, ComposeError> {
    let spec = parse_entry(spec).unwrap();
    let source = registry_ref(&spec.image, "entry").unwrap();
    resolve(&spec, source, &manifest(c), OCI_MANIFEST.into(), config)
}

fn ok(spec: &str, config: &[u8], c: char) -> Resolved {
    entry(spec, config, c).unwrap()
}

fn err(spec: &str, config: &[u8]) -> String {
    entry(spec, config, 'a').unwrap_err().to_string()
}

#[test]
fn entry_options_cover_every_field_selection_reads() {
    let e = parse_entry(
        "reg.example.org/t/app:v4,variant=v4,target=skylake_avx512,gpu=yes,cuda=12.2,\
         weight=5,mpi=mpich,mpi-version=4.1,features=avx512f+avx512bw,annotation=org.example.k=v=w",
    )
    .unwrap();
    assert_eq!(e.image, "reg.example.org/t/app:v4");
    assert_eq!(e.variant.as_deref(), Some("v4"));
    assert_eq!(e.target.as_deref(), Some("skylake_avx512"));
    assert_eq!((e.gpu, e.cuda.as_deref()), (Some(true), Some("12.2")));
    assert_eq!(e.weight, Some(5));
    assert_eq!(
        (e.mpi.as_deref(), e.mpi_version.as_deref()),
        (Some("mpich"), Some("4.1"))
    );
    assert_eq!(e.features, ["avx512f", "avx512bw"]);
    assert_eq!(e.annotations["org.example.k"], "v=w");
    // The same from a spec file.
    let spec = read_spec(
        r#"
index = "reg.example.org/t/app:2"
annotations = { "org.opencontainers.image.source" = "https://example.org/app" }
[[entry]]
image = "reg.example.org/t/app:v4"
variant = "v4"
target = "skylake_avx512"
gpu = true
cuda = "12.2"
weight = 5
mpi = "mpich"
mpi-version = "4.1"
features = ["avx512f", "avx512bw"]
annotations = { "org.example.k" = "v=w" }
"#,
        "spec.toml",
    )
    .unwrap();
    assert_eq!(spec.entries, vec![e]);
    assert_eq!(spec.index.as_deref(), Some("reg.example.org/t/app:2"));
}

#[test]
fn bad_entry_options_name_the_input_and_the_keys() {
    for (input, want) in [
        ("", "no image"),
        ("r/a:1,varient=v3", "unknown key \"varient\""),
        ("r/a:1,gpu=maybe", "want yes or no"),
        ("r/a:1,weight=high", "want an integer"),
        ("r/a:1,v3", "is not KEY=VALUE"),
    ] {
        let e = parse_entry(input).unwrap_err();
        assert!(e.contains(want), "{input}: {e}");
    }
    let e = read_spec("[[entry]]\nimage = \"r/a:1\"\ngpus = true\n", "s.toml").unwrap_err();
    assert!(e.starts_with("s.toml:") && e.contains("gpus"), "{e}");
}

#[test]
fn platform_comes_from_the_image_config_and_the_author_overrides_it() {
    let e = ok("r/a:1", AMD64, 'a');
    assert_eq!(e.platform.to_string(), "linux/amd64");
    assert!(e.annotations.is_empty());
    assert_eq!(e.size, manifest('a').body.len() as u64);
    assert_eq!(
        ok("r/a:1", ARM64, 'a').platform.to_string(),
        "linux/arm64/v8"
    );
    assert_eq!(
        ok("r/a:1,variant=v3", AMD64, 'a').platform.to_string(),
        "linux/amd64/v3"
    );
    assert_eq!(
        ok("r/a:1,platform=linux/arm64/v8.2", AMD64, 'a')
            .platform
            .to_string(),
        "linux/arm64/v8.2"
    );
    // A target brings its generic level as the variant.
    let e = ok("r/a:1,target=skylake_avx512", AMD64, 'a');
    assert_eq!(e.platform.variant.as_deref(), Some("v4"));
    assert_eq!(e.annotations[ANN_TARGET], "skylake_avx512");
    assert_eq!(
        ok("r/a:1,target=haswell", AMD64, 'a')
            .platform
            .variant
            .as_deref(),
        Some("v3")
    );
    // A lower variant with a target is kept (it is what the author built for).
    assert_eq!(
        ok("r/a:1,target=zen4,variant=v3", AMD64, 'a')
            .platform
            .variant
            .as_deref(),
        Some("v3")
    );
    let e = ok(
        "r/a:1,gpu=yes,cuda=12.2,mpi=openmpi,mpi-version=4.1,weight=-2",
        AMD64,
        'a',
    );
    assert_eq!(e.annotations[ANN_GPU], "yes");
    assert_eq!(e.annotations[ANN_CUDA], "12.2");
    assert_eq!(e.annotations[ANN_MPI], "openmpi");
    assert_eq!(e.annotations[ANN_MPI_VERSION], "4.1");
    assert_eq!(e.annotations[ANN_WEIGHT], "-2");
}

#[test]
fn values_selection_would_refuse_everywhere_are_errors() {
    for (spec, config, want) in [
        (
            "r/a:1,variant=v5",
            AMD64,
            "variant \"v5\" is not an amd64 level",
        ),
        (
            "r/a:1,target=skylake",
            ARM64,
            "target skylake is for x86_64 CPUs, the image is linux/arm64",
        ),
        ("r/a:1,target=pentium9", AMD64, "not an archspec target"),
        (
            "r/a:1,target=haswell,variant=v4",
            AMD64,
            "variant v4 is above target haswell, whose level is v3",
        ),
        ("r/a:1,mpi=lam", AMD64, "mpi=lam: not an MPI"),
        ("r/a:1,cuda=twelve", AMD64, "want a version like 12.2"),
        (
            "r/a:1,annotation=org.supercontainers.compatibility.weight=x",
            AMD64,
            "is not an integer",
        ),
        ("r/a:1,platform=linux", AMD64, "want OS/ARCH[/VARIANT]"),
        (
            "r/a:1,annotation=io.archspec.cpu.target=zen9",
            AMD64,
            "not an archspec target",
        ),
        (
            "r/a:1,annotation=org.supercontainers.hardware.gpu.available=Y",
            AMD64,
            "want yes or no",
        ),
        ("r/a:1", br#"{"rootfs":{}}"#, "names no os and architecture"),
    ] {
        let e = err(spec, config);
        assert!(
            e.contains(want) && e.starts_with("entry r/a:1"),
            "{spec}: {e}"
        );
    }
}

#[test]
fn an_index_or_an_artifact_is_not_an_entry() {
    let idx = FetchedManifest {
        digest: d('c'),
        body: format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#)
            .into_bytes(),
        content_type: None,
    };
    let e = image_config_digest("r/a:1", &idx).unwrap_err().to_string();
    assert!(
        e.contains("is an image index") && e.contains("r/a:1@sha256:"),
        "{e}"
    );
    let art = FetchedManifest {
        digest: d('c'),
        body: br#"{"schemaVersion":2,"config":{"digest":"x","size":1}}"#.to_vec(),
        content_type: Some("application/vnd.example+json".into()),
    };
    let e = image_config_digest("r/a:1", &art).unwrap_err().to_string();
    assert!(e.contains("not an image manifest"), "{e}");
    let (mt, cfg) = image_config_digest("r/a:1", &manifest('a')).unwrap();
    assert_eq!((mt.as_str(), cfg), (OCI_MANIFEST, d('a')));
}

/// generic, v3, v4, GPU-only, another vendor's target, arm64: the set of
/// the issue.
fn hpc(order_of: &[&str]) -> Vec<Resolved> {
    order_of
        .iter()
        .map(|k| match *k {
            "generic" => ok("reg.io/t/p:generic", AMD64, '1'),
            "v3" => ok("reg.io/t/p:v3,variant=v3", AMD64, '2'),
            "v4" => ok("reg.io/t/p:v4,variant=v4", AMD64, '3'),
            "gpu" => ok("reg.io/t/p:gpu,variant=v3,gpu=yes,cuda=12.2", AMD64, '4'),
            "zen4" => ok("reg.io/t/p:zen4,target=zen4", AMD64, '5'),
            "arm64" => ok("reg.io/t/p:arm64", ARM64, '6'),
            other => panic!("{other}"),
        })
        .collect()
}

fn tags(v: &[Resolved]) -> Vec<&str> {
    v.iter().map(|e| e.source.tag().unwrap()).collect()
}

#[test]
fn the_generic_build_goes_first_with_a_warning() {
    // In order already: nothing moves, nothing is said.
    let (v, w) = order(hpc(&["generic", "v3", "v4", "gpu", "zen4", "arm64"]));
    assert_eq!(tags(&v), ["generic", "v3", "v4", "gpu", "zen4", "arm64"]);
    assert!(w.is_empty(), "{w:?}");
    // The generic build last: moved before the first amd64 entry; the rest
    // keep their order, arm64 is its own platform.
    let (v, w) = order(hpc(&["arm64", "v4", "zen4", "v3", "generic", "gpu"]));
    assert_eq!(tags(&v), ["arm64", "generic", "v4", "zen4", "v3", "gpu"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "moved reg.io/t/p:generic (linux/amd64) before reg.io/t/p:v4 (linux/amd64/v4)"
        ),
        "{w:?}"
    );
    // No plain build at all: the least demanding goes first, and a warning
    // asks for a generic one.
    let (v, w) = order(hpc(&["v4", "gpu", "v3"]));
    assert_eq!(tags(&v), ["v3", "v4", "gpu"]);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[1].contains("no linux/amd64 entry without CPU, GPU or MPI requirements"),
        "{w:?}"
    );
}

fn node(cpu: &str) -> NodeCapabilities {
    NodeCapabilities::from_texts(cpu, arch_of(cpu), fixture(cpu), vec![])
}

#[test]
fn the_written_index_is_what_selection_reads() {
    let (v, _) = order(hpc(&["generic", "v3", "v4", "gpu", "zen4", "arm64"]));
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.source".to_string(),
        "x".to_string(),
    );
    let bytes = render(&v, &ann);
    assert_eq!(render(&v, &ann), bytes, "deterministic");
    assert!(bytes.ends_with(b"}\n"));
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["mediaType"], OCI_INDEX);
    assert_eq!(doc["schemaVersion"], 2);
    assert_eq!(doc["annotations"]["org.opencontainers.image.source"], "x");
    assert!(
        doc["manifests"][0].get("annotations").is_none(),
        "no empty annotations"
    );
    let read = crate::select::index::entries(&bytes).unwrap();
    assert_eq!(read.len(), 6);
    for (r, e) in read.iter().zip(&v) {
        assert_eq!(r.digest, e.digest.as_str());
        assert_eq!(r.size, e.size);
        assert_eq!(r.media_type, OCI_MANIFEST);
        assert_eq!(r.variant, e.platform.variant);
        assert_eq!(r.annotations, e.annotations);
    }
    // What each CPU runs from it.
    let job = JobRequest::default();
    let pick = |cpu: &str| {
        let dec = select(&bytes, &node(cpu), &job).unwrap();
        v[dec.chosen.unwrap()].source.tag().unwrap().to_string()
    };
    assert_eq!(pick("skylake_avx512"), "v4");
    assert_eq!(pick("haswell"), "v3");
    assert_eq!(pick("zen4"), "zen4");
    assert_eq!(pick("zen2"), "v3");
    assert_eq!(pick("neoverse_v1"), "arm64");
    // Features are written where selection reads them.
    let f = ok(
        "reg.io/t/p:f,variant=v4,features=avx512f+avx512_fp16",
        AMD64,
        '7',
    );
    let bytes = render(&[f], &BTreeMap::new());
    let read = crate::select::index::entries(&bytes).unwrap();
    assert_eq!(read[0].features, ["avx512f", "avx512_fp16"]);
    let dec = select(&bytes, &node("skylake_avx512"), &job).unwrap();
    assert!(dec.chosen.is_none(), "skylake has no avx512_fp16");
    assert!(select(&bytes, &node("sapphirerapids"), &job)
        .unwrap()
        .chosen
        .is_some());
}

#[test]
fn mpi_entries_follow_the_jobs_module() {
    let v = vec![
        ok("reg.io/t/p:generic", AMD64, '1'),
        ok("reg.io/t/p:ompi,mpi=openmpi,weight=1", AMD64, '2'),
        ok("reg.io/t/p:mpich,mpi=mpich,mpi-version=4.0", AMD64, '3'),
    ];
    let (v, w) = order(v);
    assert!(w.is_empty(), "{w:?}");
    let bytes = render(&v, &BTreeMap::new());
    let pick = |job: JobRequest| {
        let dec = select(&bytes, &node("haswell"), &job).unwrap();
        v[dec.chosen.unwrap()].source.tag().unwrap().to_string()
    };
    assert_eq!(
        pick(JobRequest::default()),
        "ompi",
        "no MPI module: the weight decides"
    );
    let mpich = Mpi {
        implementation: "mpich".into(),
        version: Some("4.0.2".into()),
        abi: "mpich".into(),
    };
    assert_eq!(pick(JobRequest { mpi: Some(mpich) }), "mpich");
}
