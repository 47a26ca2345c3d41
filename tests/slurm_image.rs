//! `--image` jobs on the three-node cluster, as the unprivileged user:
//! submission pins the image, every node stages it, every task (and the
//! batch script) runs inside it, and nothing is left behind.

mod support;

use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use support::{fails, ok, slurm, Testbed};

const REG: &str = "127.0.0.1:5443";

fn mpich_image() -> String {
    format!("{REG}/shoal/{}", support::mpich_image_tag())
}

/// Tests that change the cluster-wide Shoal config take this for writing;
/// every other test holds it for reading while its jobs run.
static CLUSTER_CONFIG: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER_CONFIG.read().unwrap_or_else(|e| e.into_inner())
}

/// Submits a batch script as the user in `dir` and waits for it; returns
/// (job id, output).
fn batch(tb: &Testbed, dir: &std::path::Path, opts: &str, script: &str) -> (u32, String) {
    let out = ok(&tb.user(&format!(
        "cd {dir} && cat > job.sh <<'EOF'\n#!/bin/bash\n{script}\nEOF\n\
         sbatch --parsable --wait -o job.out {opts} job.sh; rc=$?; cat job.out; exit $rc",
        dir = dir.display()
    )));
    let id = out.lines().next().and_then(|l| l.trim().parse().ok()).expect("job id");
    (id, out)
}

/// After a job: nothing of it is left on any node: no process of the job
/// (found by SLURM_JOB_ID in its environment) and no container state; with
/// `exclusive` (no other image job running) also no FUSE server, no loop
/// device on a cached image and no image mount in the host's mount table.
fn assert_nothing_left(tb: &Testbed, job: u32, exclusive: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = ok(&tb.root(&format!("for f in $(grep -lz '^SLURM_JOB_ID={job}$' /proc/[0-9]*/environ 2>/dev/null); do d=${{f%/environ}}; echo \"${{d#/proc/}} $(tr '\\0' ' ' < $d/cmdline)\"; done")));
        let state = ok(&tb.root(&format!("ls /run/shoal/share 2>/dev/null | grep '^{job}\\.' || true")));
        let queued = ok(&tb.root(&format!("squeue -h -j {job} 2>/dev/null || true")));
        let (fuse, loops, mounts) = if exclusive {
            (
                ok(&tb.root("pgrep -a squashfuse_ll || true")),
                ok(&tb.root("cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep /var/cache/shoal || true")),
                ok(&tb.root("grep -E 'squashfs|fuse.squashfuse|/run/shoal' /proc/self/mountinfo || true")),
            )
        } else {
            Default::default()
        };
        let left = [&procs, &state, &queued, &fuse, &loops, &mounts];
        if left.iter().all(|s| s.trim().is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} left: processes:\n{procs}\ncontainer state:\n{state}\nqueue:\n{queued}\nFUSE servers:\n{fuse}\nloop devices:\n{loops}\nmounts:\n{mounts}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `scancel`s a job when dropped, so a failed assertion leaves no job running.
struct CancelOnDrop<'a>(&'a Testbed, u32);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.root(&format!("scancel {}", self.1));
    }
}

#[test]
fn batch_script_and_steps_run_inside_the_image_on_all_nodes() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("image-batch");
    let (job, out) = batch(
        tb,
        &dir,
        &format!("-N3 --image={}", mpich_image()),
        "echo \"batch: $(cat /etc/shoal-test-image) on $(hostname)\"\n\
         srun -l sh -c 'echo \"step: $(cat /etc/shoal-test-image) on $(hostname) as $(id -u)\"'\n\
         srun --no-image -N1 sh -c 'test -e /etc/shoal-test-image && echo host-has-marker || echo on-host'",
    );
    assert!(out.contains("batch: debian-mpich on n1"), "{out}");
    let uid = ok(&tb.user("id -u")).trim().to_string();
    for node in ["n1", "n2", "n3"] {
        assert!(out.contains(&format!("step: debian-mpich on {node} as {uid}")), "{node} missing:\n{out}");
    }
    assert!(out.contains("on-host"), "--no-image step did not run on the host:\n{out}");
    assert_nothing_left(tb, job, false);
}

#[test]
fn mpich_hello_world_runs_across_three_nodes_in_the_image() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("image-mpi");
    let (job, out) = batch(
        tb,
        &dir,
        &format!("-N3 --ntasks-per-node=2 --image={}", mpich_image()),
        "srun --mpi=pmi2 /usr/local/bin/hello_mpi",
    );
    let mut ranks: Vec<u32> = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for line in out.lines().filter(|l| l.starts_with("hello from rank")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        ranks.push(w[3].parse().unwrap());
        assert_eq!(w[5], "6", "{line}");
        nodes.insert(w[7].to_string());
    }
    ranks.sort();
    assert_eq!(ranks, [0, 1, 2, 3, 4, 5], "{out}");
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["n1", "n2", "n3"], "{out}");
    assert_nothing_left(tb, job, false);
}

#[test]
fn salloc_then_srun_with_image_and_salloc_with_image() {
    let _g = shared();
    let tb = slurm();
    let img = mpich_image();
    let out = ok(&tb.user(&format!("salloc -N2 srun -l --image={img} cat /etc/shoal-test-image")));
    assert_eq!(out.matches("debian-mpich").count(), 2, "{out}");
    let out = ok(&tb.user(&format!("salloc -N2 --image={img} srun -l cat /etc/shoal-test-image")));
    assert_eq!(out.matches("debian-mpich").count(), 2, "{out}");
    // The image named only by the environment default.
    let out = ok(&tb.user(&format!("SHOAL_IMAGE={img} srun -N2 -l cat /etc/shoal-test-image")));
    assert_eq!(out.matches("debian-mpich").count(), 2, "{out}");
}

#[test]
fn a_moved_tag_does_not_change_a_running_job() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("image-pin");
    let tag = format!("{REG}/shoal/moving:{}", std::process::id());
    let copy = |from: &str| {
        ok(&tb.root(&format!(
            "skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo --dest-cert-dir /var/lib/shoal-testbed/tls/skopeo \
             docker://{REG}/shoal/busybox:{from} docker://{tag}"
        )));
        ok(&tb.user(&format!("SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem shoal pull -q {tag}")));
    };
    copy("latest");
    // salloc pins the image at submission; its command (on the submit host)
    // waits for the tag to move before starting a step in the image.
    let d = dir.display();
    let name = format!("pin-{}", std::process::id());
    ok(&tb.user(&format!(
        // The shell lets go of the test's pipes before salloc goes to the background.
        "exec > /dev/null 2>&1 < /dev/null; cd {d} && \
         setsid salloc -N1 -J {name} --image={tag} sh -c 'while [ ! -e {d}/go ]; do sleep 0.1; done; srun cat /etc/shoal-test-image' \
         > moved.out 2>moved.err &"
    )));
    ok(&tb.user(&format!("for i in $(seq 300); do squeue -h -n {name} -t R | grep -q . && break; sleep 0.1; done")));
    copy("v2");
    ok(&tb.user(&format!("touch {d}/go; for i in $(seq 600); do squeue -h -n {name} | grep -q . || break; sleep 0.1; done")));
    let out = ok(&tb.user(&format!("cat {d}/moved.out")));
    let err = ok(&tb.user(&format!("cat {d}/moved.err")));
    assert_eq!(out.trim(), "shoal test image: busybox", "the job followed the moved tag\n{err}");
    // A new submission sees the tag's new image.
    let out = ok(&tb.user(&format!("srun -N1 --image={tag} cat /etc/shoal-test-image")));
    assert_eq!(out.trim(), "shoal test image: busybox v2");
}

/// Lines in all slurmd logs saying `key` was copied into a node cache.
fn copies_logged(tb: &Testbed, digest: &str) -> usize {
    let out = ok(&tb.root(&format!("cat /var/log/slurm/slurmd-n*.log | grep -c 'staged .*({digest}) into' || true")));
    out.trim().parse().unwrap_or(0)
}

#[test]
fn concurrent_jobs_with_one_image_stage_it_once_per_node() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("image-twice");
    // A user image of its own, so no other test has it staged.
    let name = format!("localhost/twice:{}", std::process::id());
    ok(&tb.user(&format!(
        "cd {} && mkdir -p root/etc root/bin && cp /bin/busybox root/bin/ && ln -s busybox root/bin/sh && ln -s busybox root/bin/cat \
         && echo twice-{} > root/etc/shoal-test-image && shoal import -q root --name {name}",
        dir.display(),
        std::process::id()
    )));
    let inspect: serde_json::Value = serde_json::from_str(&ok(&tb.user(&format!("shoal inspect --json {name}")))).unwrap();
    let digest = inspect["digest"].as_str().expect("digest in inspect --json").to_string();
    let before = copies_logged(tb, &digest);
    let d = dir.display();
    // Two allocations at once, each with a step on n1..n3 (the image has
    // no C library for the host's srun, so steps start from outside it).
    ok(&tb.user(&format!(
        "cd {d} && for i in 1 2; do salloc -N3 --image={name} srun cat /etc/shoal-test-image > twice-$i.out 2>&1 & done; wait"
    )));
    for i in 1..=2 {
        let out = ok(&tb.user(&format!("cat {d}/twice-{i}.out")));
        assert_eq!(out.matches(&format!("twice-{}", std::process::id())).count(), 3, "job {i}:\n{out}");
    }
    assert_eq!(copies_logged(tb, &digest) - before, 3, "expected exactly one copy on each of n1, n2, n3");
}

#[test]
fn tasks_of_a_node_share_one_container_and_scancel_leaves_nothing() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("image-cancel");
    let d = dir.display();
    ok(&tb.user(&format!("cd {d} && printf 'touch {d}/started.$SLURM_PROCID\\nexec sleep 300\\n' > task.sh")));
    let job: u32 = ok(&tb.user(&format!(
        "cd {d} && sbatch --parsable -N3 --ntasks-per-node=2 -o cancel.out --image={} --wrap='srun sh {d}/task.sh'",
        mpich_image()
    )))
    .trim()
    .parse()
    .unwrap();
    let _cancel = CancelOnDrop(tb, job);
    let started = ok(&tb.user(&format!(
        "for i in $(seq 600); do [ $(ls {d}/started.* 2>/dev/null | wc -l) = 6 ] && break; sleep 0.1; done; ls {d}/started.* | wc -l"
    )));
    assert_eq!(started.trim(), "6", "tasks did not start: {}", ok(&tb.user(&format!("cat {d}/cancel.out"))));
    // The six tasks: node name and mount namespace of each.
    let tasks = ok(&tb.root(&format!(
        "for f in $(grep -lz '^SLURM_JOB_ID={job}$' /proc/[0-9]*/environ); do d=${{f%/environ}}; \
         [ \"$(cat $d/comm)\" = sleep ] || continue; \
         echo $(tr '\\0' '\\n' < $f | sed -n 's/^SLURMD_NODENAME=//p') $(readlink $d/ns/mnt); done | sort"
    )));
    let host_ns = ok(&tb.root("readlink /proc/self/ns/mnt")).trim().to_string();
    let mut per_node: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let mut count = 0;
    for line in tasks.lines() {
        let (node, ns) = line.split_once(' ').unwrap();
        assert_ne!(ns, host_ns, "a task runs in the host's mount namespace");
        per_node.entry(node.to_string()).or_default().insert(ns.to_string());
        count += 1;
    }
    assert_eq!(count, 6, "{tasks}");
    assert_eq!(per_node.keys().cloned().collect::<Vec<_>>(), ["n1", "n2", "n3"], "{tasks}");
    assert!(per_node.values().all(|ns| ns.len() == 1), "tasks of a node are in different containers:\n{tasks}");
    let all: std::collections::BTreeSet<_> = per_node.values().flatten().collect();
    assert_eq!(all.len(), 3, "nodes share a container:\n{tasks}");
    ok(&tb.user(&format!("scancel {job}")));
    assert_nothing_left(tb, job, true);
}

#[test]
fn scancel_during_staging_leaves_no_partial_image() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    // Evict the big image from every node cache (no job uses it now).
    ok(&tb.root("for f in /var/cache/shoal/n*/images/*.sqfs; do [ $(stat -c %s \"$f\") -gt 50000000 ] && rm -f \"$f\"; done; true"));
    let job: u32 = ok(&tb.user(&format!("sbatch --parsable -N3 -o /dev/null --image={} --wrap='srun true'", mpich_image())))
        .trim()
        .parse()
        .unwrap();
    let _cancel = CancelOnDrop(tb, job);
    std::thread::sleep(Duration::from_millis(300));
    ok(&tb.user(&format!("scancel {job}")));
    assert_nothing_left(tb, job, true);
    // Whatever the timing: no temporary copies, and any staged file is whole.
    let tmp = ok(&tb.root("ls /var/cache/shoal/n*/tmp/ 2>/dev/null | grep -v ':$' | grep . || true"));
    assert!(tmp.trim().is_empty(), "partial copies left: {tmp}");
    let mut sums = String::new();
    for node in ["n1", "n2", "n3"] {
        for entry in std::fs::read_dir(support::node_path(&format!("/var/cache/shoal/{node}/images"))).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = format!("/var/lib/shoal-testbed/site-store/images/sha256/{}/meta.json", name.trim_end_matches(".sqfs"));
            let Ok(meta) = std::fs::read_to_string(&meta) else { continue };
            let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
            let have = ok(&tb.root(&format!("sha256sum {} | cut -c1-64", entry.path().display())));
            if have.trim() != meta["squashfs_sha256"].as_str().unwrap() {
                sums.push_str(&format!("{}: {}\n", entry.path().display(), have.trim()));
            }
        }
    }
    assert!(sums.trim().is_empty(), "damaged staged images: {sums}");
}

#[test]
fn missing_image_fails_at_the_prompt_with_the_pull_command() {
    let tb = slurm();
    let img = format!("{REG}/shoal/never-pulled:1");
    for cmd in [format!("srun -N1 --image={img} true"), format!("sbatch --image={img} --wrap=true")] {
        let err = fails(&tb.user(&cmd));
        assert!(err.contains(&format!("pull it first with `shoal pull {img}`")), "{cmd}:\n{err}");
    }
}

/// A job prolog that cannot stage never drains the node, on any series: a
/// failing SPANK prolog drains it and requeues the job on 22.05, 24.11 and
/// 26.05 alike (`slurm_spank_init_failure_mode` covers `slurm_spank_init`
/// only), so the prolog logs and succeeds and the job fails at its task,
/// which says why. Where Slurm runs no SPANK prolog (`RunInJob` on
/// 24.11.5) the task alone does.
#[test]
fn an_image_larger_than_the_node_cache_fails_the_job_not_the_node() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("image-small-cache");
    let conf = support::node_path("/etc/shoal/shoal.toml");
    let conf = &conf;
    let saved = std::fs::read_to_string(conf).unwrap();
    let small = saved.replace("cache_size = \"4G\"", "cache_size = \"1M\"");
    assert_ne!(small, saved, "test bed config lacks cache_size = \"4G\"");
    std::fs::write(conf, &small).unwrap();
    // Evict it so it must be copied.
    ok(&tb.root("for f in /var/cache/shoal/n1/images/*.sqfs; do [ $(stat -c %s \"$f\") -gt 50000000 ] && rm -f \"$f\"; done; true"));
    let result = tb.user(&format!(
        "cd {} && sbatch --parsable --wait -N1 -w n1 -o small.out --image={} --wrap='srun true'; rc=$?; cat small.out 2>/dev/null; exit $rc",
        dir.display(),
        mpich_image()
    ));
    std::fs::write(conf, &saved).unwrap();
    let out = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(!result.status.success(), "job succeeded:\n{out}");
    let job: u32 = out.lines().next().and_then(|l| l.trim().parse().ok()).expect("job id");
    let prolog = ok(&tb.root(&format!("grep -h 'job {job}: staging in the prolog failed' /var/log/slurm/slurmd-n1.log || true")));
    assert!(
        !support::spank_prolog_runs() || (prolog.contains("does not fit in the node cache limit") && prolog.contains("node.cache_size")),
        "job {job}: no prolog error in slurmd-n1.log:\n{prolog}"
    );
    assert!(out.contains("does not fit in the node cache limit") && out.contains("node.cache_size"), "the task did not say why:\n{out}");
    if support::spank_prolog_runs() {
        assert!(prolog.contains("(the job will report it)"), "{prolog}");
    }
    // Not drained, whatever the series (a failing prolog drains by default).
    let state = ok(&tb.root("for i in $(seq 100); do s=$(sinfo -h -n n1 -o %T); [ \"$s\" = idle ] && break; sleep 0.2; done; sinfo -h -n n1 -o '%T %E'"));
    assert_eq!(state.trim(), "idle none", "n1 was not left idle");
}

/// Teardown needs no process started from `slurm_spank_exit` (Slurm 25.05+
/// runs it later in slurmstepd's exit and may SIGKILL such children): when
/// a step ends normally, its containers, FUSE servers, mounts and state are
/// gone on every node, on every series.
#[test]
fn a_step_that_ends_leaves_nothing_on_its_nodes() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("image-end");
    let (job, out) = batch(tb, &dir, &format!("-N3 --image={}", mpich_image()), "srun -l cat /etc/shoal-test-image");
    assert_eq!(out.matches("debian-mpich").count(), 3, "{out}");
    assert_nothing_left(tb, job, true);
    let errors = ok(&tb.root(&format!("grep -h '\\[{job}\\.[a-z0-9]*\\] .*shoal: ' /var/log/slurm/slurmd-n*.log | grep -v -e 'task in image' -e ': staged ' || true")));
    assert!(errors.trim().is_empty(), "job {job}: the plugin reported:\n{errors}");
}

#[test]
fn tasks_get_their_own_slurm_variables_exit_codes_and_the_submit_directory() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("image-task");
    let d = dir.display();
    let out = ok(&tb.user(&format!(
        "cd {d} && srun -N3 -n6 --image={} sh -c 'echo $SLURM_PROCID $SLURM_LOCALID $SLURMD_NODENAME $(pwd)' | sort",
        mpich_image()
    )));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for (rank, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], rank.to_string(), "{out}");
        assert!(f[1] == "0" || f[1] == "1", "{out}");
        assert!(["n1", "n2", "n3"].contains(&f[2]), "{out}");
        assert_eq!(f[3], d.to_string(), "cwd is not the submit directory: {out}");
    }
    let status = tb.user(&format!("cd {d} && srun -N1 --image={} sh -c 'exit 3'", mpich_image()));
    assert_eq!(status.status.code(), Some(3), "srun's exit code");
}

#[test]
fn auto_pull_fetches_a_missing_image_at_submission() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let img = format!("{REG}/shoal/busybox:v2");
    let _ = tb.user(&format!("shoal rm {img}"));
    let conf = support::node_path("/etc/shoal/shoal.toml");
    let conf = &conf;
    let saved = std::fs::read_to_string(conf).unwrap();
    std::fs::write(conf, format!("{saved}\n[image]\nauto_pull = true\n")).unwrap();
    let out = tb.user(&format!("SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem srun -N2 -l --image={img} cat /etc/shoal-test-image"));
    std::fs::write(conf, &saved).unwrap();
    let text = ok(&out);
    assert_eq!(text.matches("busybox v2").count(), 2, "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pulling it (image.auto_pull)"));
    assert!(ok(&tb.user("shoal images")).contains(&img));
}

#[test]
fn an_error_in_user_init_reaches_the_user() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("image-userinit");
    let d = dir.display();
    let name = format!("localhost/vanishing:{}", std::process::id());
    ok(&tb.user(&format!(
        "cd {d} && mkdir -p root/etc root/bin && cp /bin/busybox root/bin/ && ln -s busybox root/bin/cat && shoal import -q root --name {name}"
    )));
    // The image is pinned at salloc time, then removed before the step:
    // slurmstepd's user_init cannot open it, and the task must say so.
    let out = tb.user(&format!("cd {d} && salloc -N1 --image={name} sh -c 'shoal rm {name} >/dev/null; srun true'"));
    let err = fails(&out);
    assert!(err.contains(&format!("shoal: image {name}")) && err.contains("No such file"), "{err}");
}

#[test]
fn scancel_after_a_slurmd_restart_leaves_nothing_behind() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("image-restart");
    let d = dir.display();
    ok(&tb.user(&format!("cd {d} && printf 'touch {d}/started.$SLURM_PROCID\\nexec sleep 300\\n' > task.sh")));
    let job: u32 = ok(&tb.user(&format!(
        "cd {d} && sbatch --parsable -N3 -o restart.out --image={} --wrap='srun sh {d}/task.sh'",
        mpich_image()
    )))
    .trim()
    .parse()
    .unwrap();
    let _cancel = CancelOnDrop(tb, job);
    ok(&tb.user(&format!("for i in $(seq 600); do [ $(ls {d}/started.* 2>/dev/null | wc -l) = 3 ] && break; sleep 0.1; done")));
    // slurmd of n2 dies and comes back while the step runs (slurmstepd
    // carries on without it), then the job is cancelled.
    let n2 = support::slurmd_pattern("n2");
    ok(&tb.root(&format!("pkill -f '{n2}'; while pgrep -f '{n2}' >/dev/null; do sleep 0.1; done")));
    ok(&tb.host_root(&format!("bash {}/tests/testbed/up.sh >/dev/null", support::repo_root().display())));
    ok(&tb.user(&format!("scancel {job}")));
    assert_nothing_left(tb, job, true);
}

/// The cluster's Shoal config with `[node] staging` set, restored when
/// dropped (up.sh restores it too should a run be killed).
struct Staging(std::path::PathBuf, String);

impl Staging {
    fn set(mode: &str) -> Staging {
        let conf = support::node_path("/etc/shoal/shoal.toml");
        let saved = std::fs::read_to_string(&conf).unwrap();
        let text = saved.replacen("[node]\n", &format!("[node]\nstaging = \"{mode}\"\n"), 1);
        assert_ne!(text, saved, "no [node] table in {}", conf.display());
        std::fs::write(&conf, text).unwrap();
        Staging(conf, saved)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, &self.1);
    }
}

/// Issue 17: `node.staging = "in-place"` serves a store image where it lies
/// through Shoal's image server, each read checked against the hash tree
/// recorded when the image was stored: no node copies it, a byte changed
/// since fails the read that meets it (EIO) and only that, a changed tree
/// fails the task with its reason. For a site image (its tree's root from
/// the site store) and a user image (from the pin).
#[test]
fn in_place_staging_serves_the_store_file_checked_and_copies_nothing() {
    let _w = CLUSTER_CONFIG.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let dir = tb.user_tempdir("in-place");
    let d = dir.display();
    let tag = std::process::id();
    // A root filesystem of its own (a digest no other test has): busybox
    // with a marker and 4 MiB of incompressible bytes, whose middle lies
    // in data blocks far from the tables.
    let busybox = ok(&tb.root(&format!("/usr/local/bin/shoal inspect {REG}/shoal/busybox:latest | sed -n 's/^squashfs: *\\([^ ]*\\) .*/\\1/p'")));
    ok(&tb.user(&format!(
        "cd {d} && unsquashfs -q -n -d root '{}' >/dev/null && echo in-place-{tag} > root/etc/marker && head -c 4M /dev/urandom > root/big.bin && md5sum < root/big.bin > big.md5",
        busybox.trim()
    )));
    let sum = ok(&tb.user(&format!("cat {d}/big.md5")));
    let sum = sum.split_whitespace().next().unwrap();
    let site = format!("localhost/t17/in-place-site:{tag}");
    let user = format!("localhost/t17/in-place-user:{tag}");
    ok(&tb.root(&format!("/usr/local/bin/shoal import --site -q --name {site} {d}/root")));
    ok(&tb.user(&format!("'{}' import -q --name {user} {d}/root", tb.shoal().display())));
    let path_in = "sed -n 's/^squashfs: *\\([^ ]*\\) .*/\\1/p'";
    let site_sqfs = std::path::PathBuf::from(ok(&tb.root(&format!("/usr/local/bin/shoal inspect {site} | {path_in}"))).trim());
    let user_sqfs = std::path::PathBuf::from(ok(&tb.user(&format!("'{}' inspect {user} | {path_in}", tb.shoal().display()))).trim());
    for sqfs in [&site_sqfs, &user_sqfs] {
        let tree = sqfs.with_file_name("image.verity");
        assert!(ok(&tb.root(&format!("stat -c %s '{}'", tree.display()))).trim().parse::<u64>().unwrap() > 64, "no tree beside {}", sqfs.display());
    }
    let _staging = Staging::set("in-place");
    let probe = "sh -c 'echo $(hostname) $(cat /etc/marker) $(md5sum < /big.bin)'";
    for image in [&site, &user] {
        let out = ok(&tb.user(&format!("cd {d} && srun -N3 --image={image} {probe} | sort")));
        let want: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| format!("{n} in-place-{tag} {sum} -")).collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "{image}");
    }
    // Nothing copied into any node cache, nothing logged as staged.
    for sqfs in [&site_sqfs, &user_sqfs] {
        let hex = sqfs.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let copies = ok(&tb.root(&format!("ls /var/cache/shoal/n*/images/ | grep -c {hex} || true")));
        assert_eq!(copies.trim(), "0", "{} was copied", sqfs.display());
        assert_eq!(copies_logged(tb, &hex), 0);
    }
    // One byte of big.bin changed in the site store's file: reading it
    // fails with EIO, and the marker (other blocks) still reads after.
    // (Random bytes are stored as they are: found in the file by content.)
    let big = std::fs::read(dir.join("root/big.bin")).unwrap();
    let needle = &big[2 << 20..(2 << 20) + 64];
    let file = std::fs::read(support::node_path(&site_sqfs.display().to_string())).unwrap();
    let at = file.windows(64).position(|w| w == needle).expect("big.bin's bytes in the squashfs file");
    ok(&tb.root(&format!(
        "f='{}'; printf '\\x5a' | dd of=\"$f\" bs=1 seek={at} conv=notrunc status=none",
        site_sqfs.display(),
    )));
    let out = tb.user(&format!("cd {d} && srun -N1 -w n2 --image={site} sh -c 'md5sum < /big.bin; r=$?; cat /etc/marker; exit $r'"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a changed image read without an error:\n{text}");
    // The server outlives the error: the marker is read after it.
    assert!(text.contains(&format!("in-place-{tag}")) && text.contains("Input/output error"), "{text}");
    // The user's tree changed: the task fails before it starts, saying so.
    let tree = user_sqfs.with_file_name("image.verity");
    ok(&tb.root(&format!("printf '\\x00' | dd of='{}' bs=1 seek=40 conv=notrunc status=none", tree.display())));
    let e = fails(&tb.user(&format!("cd {d} && srun -N1 --image={user} true")));
    assert!(e.contains("does not hash to the root recorded"), "{e}");
    drop(_staging);
    ok(&tb.root(&format!("/usr/local/bin/shoal rm --site {site} >/dev/null")));
    ok(&tb.user(&format!("'{}' rm {user} >/dev/null", tb.shoal().display())));
}
