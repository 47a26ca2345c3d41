//! `srun --mpi=pmix` in an image, as the unprivileged user: Slurm's PMIx
//! server runs in slurmstepd on the host, and Open MPI (with Debian's own
//! PMIx client) inside the image reaches it through the directories the
//! plugin binds in (`spank-plugin/src/pmix.rs`). On Slurm 22.05 the image is
//! shoal/debian-openmpi:12 (Open MPI 4.1, PMIx 4.2), on 24.11 the Debian 13
//! one (Open MPI 5.0, PMIx 5: a batch script's srun is the node's and needs
//! glibc 2.38). Where Slurm has no mpi/pmix (sid's 26.05, built without
//! PMIx) every test says so and returns: PMI2 is tested there by
//! inject_slurm and the main job.
//!
//! Open MPI's transports are pinned so the test does not depend on the
//! machine's network cards: `pml=ob1` with `btl=self,vader,tcp` (shared
//! memory between the two ranks of a node, which share one container; TCP
//! between nodes), `btl_tcp_if_include=lo` (the three test nodes are one
//! machine, and Open MPI leaves the loopback out by default), and no
//! single-copy (CMA needs ptrace rights between ranks, which a hardened
//! kernel may refuse). On this test bed Open MPI's defaults worked as well.

mod support;

use std::collections::BTreeMap;

use support::{fails, ok, slurm, slurm_series, Testbed};

/// The Open MPI image for this test bed and the version its library
/// reports, or None (said on stderr) where this Slurm has no mpi/pmix.
fn pmix_image(test: &str) -> Option<(&'static Testbed, &'static str, &'static str)> {
    let tb = slurm();
    let list = ok(&tb.user("srun --mpi=list 2>&1"));
    if !list.lines().any(|l| l.split_whitespace().any(|w| w == "pmix" || w.starts_with("pmix_v"))) {
        support::skip(test, &format!("this Slurm has no mpi/pmix plugin (srun --mpi=list: {})", list.split_whitespace().collect::<Vec<_>>().join(" ")));
        return None;
    }
    Some(if slurm_series() == "22.05" {
        (tb, "127.0.0.1:5443/shoal/debian-openmpi:12", "(Open MPI v4.1")
    } else {
        (tb, "127.0.0.1:5443/shoal/debian-openmpi:13", "(Open MPI v5.0")
    })
}

const OMPI_ENV: &str = "export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo \
                        OMPI_MCA_btl_vader_single_copy_mechanism=none";

#[test]
fn openmpi_hello_runs_through_pmix_across_three_nodes_in_the_image() {
    let Some((tb, image, version)) = pmix_image("openmpi_hello_runs_through_pmix_across_three_nodes_in_the_image") else { return };
    let out = ok(&tb.user(&format!(
        "{OMPI_ENV}; srun -N3 -n6 --mpi=pmix --image={image} \
         bash -c 'echo \"marker $(cat /etc/shoal-test-image) rank $PMIX_RANK\"; exec /usr/local/bin/hello_mpi.py'"
    )));
    // hello from rank R of S on NODE sum 15 (Open MPI v4.1.x)
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut ranks = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("hello from rank")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        ranks.push(w[3].parse::<u32>().unwrap());
        assert_eq!(w[5], "6", "{line}");
        // The allreduce of all ranks: the ranks really talked over MPI.
        assert_eq!(w[9], "15", "{line}");
        assert!(line.contains(version), "{line}");
        *per_node.entry(w[7].to_string()).or_default() += 1;
    }
    ranks.sort();
    assert_eq!(ranks, [0, 1, 2, 3, 4, 5], "{out}");
    assert_eq!(per_node, BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)]), "{out}");
    // Every task ran inside the image (the host has no such file).
    assert!(!std::path::Path::new("/etc/shoal-test-image").exists());
    assert_eq!(out.matches("marker debian-openmpi rank ").count(), 6, "{out}");
}

#[test]
fn only_the_steps_own_pmix_directories_are_bound_in() {
    let Some((tb, image, _)) = pmix_image("only_the_steps_own_pmix_directories_are_bound_in") else { return };
    let uid = ok(&tb.user("id -u")).trim().to_string();
    let inside = r#"echo job $SLURM_JOB_ID.$SLURM_STEP_ID
echo srv $PMIX_SERVER_TMPDIR
grep pmix /proc/self/mountinfo | cut -d" " -f5,6 | sed "s/^/mnt /"
echo spool $(ls /var/spool/slurmd/n2)
test -r $PMIX_DSTORE_21_BASE_PATH && echo dstore-readable"#;
    let dir = tb.user_tempdir("pmix-binds");
    let out = ok(&tb.user(&format!(
        "cd {d} && cat > inside.sh <<'EOF'\n{inside}\nEOF\nsrun -N1 -n1 -w n2 --mpi=pmix --image={image} bash inside.sh",
        d = dir.display()
    )));
    let id = out.lines().find_map(|l| l.strip_prefix("job ")).expect("job line").trim().to_string();
    let server = format!("/var/spool/slurmd/n2/pmix.{id}");
    let client = format!("/var/spool/slurmd/n2/tmp/spmix_appdir_{uid}_{id}");
    assert!(out.contains(&format!("srv {server}/")), "{out}");
    let mounts: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("mnt "))
        .map(|l| l.split_once(' ').expect("path and options"))
        .collect();
    assert_eq!(mounts.iter().map(|m| m.0).collect::<Vec<_>>(), [server.as_str(), client.as_str()], "{out}");
    for (path, opts) in &mounts {
        let opts: Vec<&str> = opts.split(',').collect();
        for want in ["rw", "nosuid", "nodev"] {
            assert!(opts.contains(&want), "{path} lacks {want}: {opts:?}");
        }
    }
    // Of slurmd's spool only the step's own directory shows (and `tmp`, the
    // skeleton on the way to the client dir): no credentials, no other job.
    let spool = out.lines().find_map(|l| l.strip_prefix("spool ")).expect("spool line");
    assert_eq!(spool.split_whitespace().collect::<Vec<_>>(), [format!("pmix.{id}").as_str(), "tmp"], "{out}");
    assert!(out.contains("dstore-readable"), "{out}");
}

#[test]
fn a_moved_pmix_directory_is_refused_with_the_variable_named() {
    let Some((tb, image, _)) = pmix_image("a_moved_pmix_directory_is_refused_with_the_variable_named") else { return };
    let dir = tb.user_tempdir("pmix-moved");
    let err = fails(&tb.user(&format!(
        "SLURM_PMIX_TMPDIR={} srun -N1 -n1 --mpi=pmix --image={image} true",
        dir.display()
    )));
    assert!(err.contains("$SLURM_PMIX_TMPDIR is set"), "{err}");
    assert!(err.contains("unset it for --mpi=pmix in an image"), "{err}");
}

#[test]
fn srun_mpi_pmix_from_a_batch_script_inside_the_image() {
    let Some((tb, image, _)) = pmix_image("srun_mpi_pmix_from_a_batch_script_inside_the_image") else { return };
    let dir = tb.user_tempdir("pmix-batch");
    // srun runs inside the batch script's container: its mpi/pmix plugin
    // loads the host's PMIx library (`slurm.launch_host_paths`), while the
    // tasks it starts get containers of their own with the image's PMIx.
    let out = ok(&tb.user(&format!(
        "cd {d} && cat > job.sh <<'EOF'\n#!/bin/bash\n{OMPI_ENV}\n\
         echo \"batch in $(cat /etc/shoal-test-image)\"\n\
         srun --mpi=pmix bash -c 'echo \"task pmix $(grep -c /pmix2 /proc/self/mountinfo)\"; exec /usr/local/bin/hello_mpi.py'\nEOF\n\
         sbatch --wait -o job.out -N3 --ntasks-per-node=2 --image={image} job.sh; rc=$?; cat job.out; exit $rc",
        d = dir.display()
    )));
    assert!(out.contains("batch in debian-openmpi"), "{out}");
    let mut ranks: Vec<u32> = out
        .lines()
        .filter(|l| l.starts_with("hello from rank") && l.contains(" of 6 on ") && l.contains(" sum 15 "))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, [0, 1, 2, 3, 4, 5], "{out}");
    // The host's PMIx is not in the tasks' containers.
    assert_eq!(out.matches("task pmix 0").count(), 6, "{out}");
}
