//! Unit tests of `index` (moved out of it to keep the file to one job).

use super::super::capabilities::{Gpu, Mpi};
use super::super::cpu::tests::{arch_of, fixture};
use super::*;

fn d(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// One index entry: platform `os/arch[/variant]`, features, annotations.
fn entry(n: u8, platform: &str, features: &[&str], ann: &[(&str, &str)]) -> String {
    let p: Vec<&str> = platform.split('/').collect();
    let variant = p
        .get(2)
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    let feats = if features.is_empty() {
        String::new()
    } else {
        format!(
            r#","features":[{}]"#,
            features
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let anns = if ann.is_empty() {
        String::new()
    } else {
        format!(
            r#","annotations":{{{}}}"#,
            ann.iter()
                .map(|(k, v)| format!("\"{k}\":\"{v}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":100,"platform":{{"os":"{}","architecture":"{}"{variant}{feats}}}{anns}}}"#,
        d(n),
        p[0],
        p[1]
    )
}

fn index(entries: &[String]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn node(cpu: &str) -> NodeCapabilities {
    NodeCapabilities::from_texts(cpu, arch_of(cpu), fixture(cpu), vec![])
}

fn gpu_node(cpu: &str, driver: &str) -> NodeCapabilities {
    let mut n = node(cpu);
    n.gpus = vec![Gpu {
        vendor: "nvidia".into(),
        address: "0000:3b:00.0".into(),
        driver: Some(driver.into()),
        cuda: super::super::capabilities::cuda_of_driver(driver),
    }];
    n
}

/// The index of the issue: generic, v3, v4, GPU-only, another vendor's
/// target, arm64, and an attestation.
fn hpc_index() -> Vec<u8> {
    index(&[
        entry(1, "linux/amd64", &[], &[]),
        entry(2, "linux/amd64/v3", &[], &[]),
        entry(3, "linux/amd64/v4", &[], &[]),
        entry(
            4,
            "linux/amd64/v3",
            &[],
            &[(ANN_GPU, "yes"), (ANN_CUDA, "12.2")],
        ),
        entry(5, "linux/amd64/v4", &[], &[(ANN_TARGET, "zen4")]),
        entry(6, "linux/arm64", &[], &[]),
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}"#,
            d(7)
        ),
    ])
}

fn chosen(idx: &[u8], n: &NodeCapabilities, job: &JobRequest) -> String {
    select(idx, n, job)
        .unwrap()
        .digest()
        .map(str::to_string)
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn each_real_cpu_gets_its_entry_of_the_hpc_index() {
    let idx = hpc_index();
    let job = JobRequest::default();
    for (cpu, want) in [
        ("haswell", 2),
        ("skylake_avx512", 3),
        ("icelake", 3),
        ("sapphirerapids", 3),
        ("zen2", 2),
        ("zen3", 2),
        // Zen 4's own build: the explicit target is deeper than v4.
        ("zen4", 5),
        ("neoverse_n1", 6),
        ("neoverse_v1", 6),
        ("a64fx", 6),
    ] {
        assert_eq!(
            chosen(&idx, &node(cpu), &job),
            d(want),
            "{cpu}:\n{}",
            select(&idx, &node(cpu), &job).unwrap().render()
        );
    }
}

#[test]
fn verdicts_say_why() {
    let dec = select(&hpc_index(), &node("icelake"), &JobRequest::default()).unwrap();
    let reason = |i: usize| match &dec.entries[i].verdict {
        Verdict::Refused { reason } => reason.clone(),
        Verdict::Accepted { score } => format!("accepted {score}"),
    };
    assert!(
        reason(0).starts_with("accepted weight 0 cpu-depth 0"),
        "{}",
        reason(0)
    );
    assert!(
        reason(1).starts_with("accepted weight 0 cpu-depth 2"),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).starts_with("accepted weight 0 cpu-depth 3"),
        "{}",
        reason(2)
    );
    assert_eq!(reason(3), "needs a GPU, the node has none");
    assert_eq!(
        reason(4),
        "built for zen4, which the node's icelake is not (nor descends from)"
    );
    assert_eq!(reason(5), "for linux/arm64, the node is linux/amd64");
    assert_eq!(reason(6), "not an image (attestation or other artifact)");
    assert_eq!(dec.chosen, Some(2));
}

#[test]
fn gpu_entries_need_a_gpu_and_a_new_enough_driver() {
    let idx = hpc_index();
    let job = JobRequest::default();
    // Haswell + GPU: the GPU build (v3) beats the generic v3 on GPU fit.
    assert_eq!(chosen(&idx, &gpu_node("haswell", "535.104.05"), &job), d(4));
    // An older driver (CUDA 11.4) refuses the CUDA 12.2 build.
    let dec = select(&idx, &gpu_node("haswell", "470.57.02"), &job).unwrap();
    assert_eq!(dec.digest().unwrap(), d(2));
    assert!(
        matches!(&dec.entries[3].verdict, Verdict::Refused { reason } if reason.contains("CUDA up to 11.4"))
    );
    // Ice Lake + GPU: v4 is deeper than the GPU build's v3; depth first.
    assert_eq!(chosen(&idx, &gpu_node("icelake", "535.104.05"), &job), d(3));
    // A GPU without a known driver cannot vouch for a CUDA version.
    let mut n = node("haswell");
    n.gpus = vec![Gpu {
        vendor: "amd".into(),
        address: String::new(),
        driver: None,
        cuda: None,
    }];
    assert_eq!(chosen(&idx, &n, &job), d(2));
}

#[test]
fn variants_and_features() {
    let idx = index(&[
        entry(1, "linux/amd64/v2", &[], &[]),
        entry(2, "linux/amd64/v3", &["avx512f"], &[]),
        entry(3, "linux/amd64/v3", &["avx2", "fma"], &[]),
        entry(4, "linux/amd64/v9", &[], &[]),
    ]);
    let job = JobRequest::default();
    // Haswell has no avx512f: entry 2 refused; entry 3 has more features than 1.
    let dec = select(&idx, &node("haswell"), &job).unwrap();
    assert_eq!(dec.digest().unwrap(), d(3));
    assert!(
        matches!(&dec.entries[1].verdict, Verdict::Refused { reason } if reason.contains("avx512f"))
    );
    assert!(
        matches!(&dec.entries[3].verdict, Verdict::Refused { reason } if reason.contains("not a amd64 level"))
    );
    // Skylake-AVX512 has it: entry 2 and 3 tie on depth, 3 has more features.
    assert_eq!(chosen(&idx, &node("skylake_avx512"), &job), d(3));
    // Arm levels: v8.4 refused on A64FX (v8.2), accepted on V1.
    let arm = index(&[
        entry(1, "linux/arm64/v8", &[], &[]),
        entry(2, "linux/arm64/v8.4", &["sve"], &[]),
    ]);
    assert_eq!(chosen(&arm, &node("a64fx"), &job), d(1));
    assert_eq!(chosen(&arm, &node("neoverse_v1"), &job), d(2));
    assert!(chosen(&arm, &node("neoverse_n1"), &job).starts_with(&d(1)));
}

#[test]
fn explicit_targets_follow_ancestry() {
    let idx = index(&[
        entry(1, "linux/amd64", &[], &[(ANN_TARGET, "skylake_avx512")]),
        entry(2, "linux/amd64", &[], &[(ANN_TARGET, "haswell")]),
        entry(3, "linux/amd64", &[], &[(ANN_TARGET, "pentium9")]),
        entry(4, "linux/arm64", &[], &[(ANN_TARGET, "a64fx")]),
        entry(5, "linux/arm64", &[], &[(ANN_TARGET, "armv8.2a")]),
    ]);
    let job = JobRequest::default();
    // Sapphire Rapids descends from Skylake-AVX512 and Haswell; the deeper wins.
    assert_eq!(chosen(&idx, &node("sapphirerapids"), &job), d(1));
    assert_eq!(chosen(&idx, &node("haswell"), &job), d(2));
    // Zen 4 descends from neither Intel target.
    let err = chosen(&idx, &node("zen4"), &job);
    assert!(
        err.contains("no entry of the image index fits node zen4"),
        "{err}"
    );
    assert!(err.contains("built for skylake_avx512"), "{err}");
    assert!(
        err.contains("\"pentium9\" is not an archspec target"),
        "{err}"
    );
    assert_eq!(chosen(&idx, &node("a64fx"), &job), d(4));
    assert_eq!(chosen(&idx, &node("neoverse_n1"), &job), d(5));
}

#[test]
fn weight_comes_first_and_ties_go_to_the_first() {
    let idx = index(&[
        entry(1, "linux/amd64", &[], &[]),
        entry(2, "linux/amd64/v4", &[], &[]),
        entry(3, "linux/amd64", &[], &[(ANN_WEIGHT, "10")]),
        entry(4, "linux/amd64", &[], &[(ANN_WEIGHT, "10")]),
        entry(5, "linux/amd64", &[], &[(ANN_WEIGHT, "ten")]),
    ]);
    let dec = select(&idx, &node("icelake"), &JobRequest::default()).unwrap();
    assert_eq!(dec.digest().unwrap(), d(3));
    assert!(
        matches!(&dec.entries[4].verdict, Verdict::Refused { reason } if reason.contains("not an integer"))
    );
    let tie = index(&[
        entry(1, "linux/amd64/v3", &[], &[]),
        entry(2, "linux/amd64/v3", &[], &[]),
    ]);
    assert_eq!(chosen(&tie, &node("icelake"), &JobRequest::default()), d(1));
}

#[test]
fn mpi_matters_only_when_the_job_has_an_mpi_module() {
    let idx = index(&[
        entry(
            1,
            "linux/amd64/v3",
            &[],
            &[(ANN_MPI, "openmpi"), (ANN_MPI_VERSION, "4.1.4")],
        ),
        entry(
            2,
            "linux/amd64/v3",
            &[],
            &[(ANN_MPI, "intel-mpi"), (ANN_MPI_VERSION, "2021.10")],
        ),
        entry(
            3,
            "linux/amd64/v3",
            &[],
            &[(ANN_MPI, "mpich"), (ANN_MPI_VERSION, "4.1.2")],
        ),
    ]);
    let n = node("icelake");
    // No MPI module: annotations neither help nor hurt: first listed.
    assert_eq!(chosen(&idx, &n, &JobRequest::default()), d(1));
    let mpich = JobRequest {
        mpi: Some(Mpi {
            implementation: "mpich".into(),
            version: Some("4.0.2".into()),
            abi: "mpich".into(),
        }),
    };
    let dec = select(&idx, &n, &mpich).unwrap();
    assert_eq!(dec.digest().unwrap(), d(3), "{}", dec.render());
    assert!(
        matches!(&dec.entries[0].verdict, Verdict::Refused { reason } if reason.contains("openmpi ABI"))
    );
    assert!(matches!(&dec.entries[1].verdict, Verdict::Accepted { score } if score.mpi_fit == 1));
    let ompi = JobRequest {
        mpi: Some(Mpi {
            implementation: "openmpi".into(),
            version: Some("4.1.5".into()),
            abi: "openmpi".into(),
        }),
    };
    assert_eq!(chosen(&idx, &n, &ompi), d(1));
}

#[test]
fn uniform_takes_what_every_node_accepts() {
    let idx = hpc_index();
    let job = JobRequest::default();
    let nodes = [node("icelake"), node("haswell"), node("zen4")];
    let dec = select_uniform(&idx, &nodes, &job).unwrap();
    // v4 is refused by Haswell; the zen4 build by Ice Lake: v3 for all.
    assert_eq!(dec.digest().unwrap(), d(2), "{}", dec.render());
    assert!(
        matches!(&dec.entries[2].verdict, Verdict::Refused { reason } if reason.starts_with("haswell: variant v4"))
    );
    let mixed = [node("icelake"), node("neoverse_n1")];
    let err = select_uniform(&idx, &mixed, &job)
        .unwrap()
        .digest()
        .unwrap_err()
        .to_string();
    assert!(err.contains("fits node icelake, neoverse_n1"), "{err}");
}

#[test]
fn refusal_lists_every_entry() {
    let idx = index(&[
        entry(1, "linux/arm64", &[], &[]),
        entry(2, "linux/amd64/v4", &[], &[]),
    ]);
    let err = chosen(&idx, &node("zen2"), &JobRequest::default());
    assert!(err.contains("[0] sha256:010101010101 linux/arm64: refused: for linux/arm64, the node is linux/amd64"), "{err}");
    assert!(err.contains("[1] sha256:020202020202 linux/amd64/v4: refused: variant v4 is above the node's level v3"), "{err}");
}

#[test]
fn garbage_is_not_an_index() {
    assert!(matches!(entries(b"nope"), Err(SelectError::NotAnIndex(_))));
    assert!(matches!(
        entries(br#"{"schemaVersion":2}"#),
        Err(SelectError::NotAnIndex(_))
    ));
    let nested = index(&[format!(
        r#"{{"mediaType":"{OCI_INDEX}","digest":"{}","size":1}}"#,
        d(1)
    )]);
    let err = chosen(&nested, &node("zen2"), &JobRequest::default());
    assert!(err.contains("not an image manifest"), "{err}");
    assert!(is_index(&hpc_index(), None));
    assert!(!is_index(
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#).as_bytes(),
        None
    ));
}
