//! The plugin per Slurm series (`packaging/build-plugin.sh`): each build
//! references only SPANK symbols its Slurm has (full RELRO: one missing
//! symbol fails the whole dlopen), exports `slurm_spank_init_failure_mode`
//! only where Slurm reads it (25.05+), and the chosen test bed's Slurm
//! (`SHOAL_TESTBED_SLURM`) loads its own build.

mod support;

use std::process::Command;

use support::{ok, slurm, slurm_series};

fn nm(args: &[&str], so: &std::path::Path) -> Vec<String> {
    let out = Command::new("nm").args(args).arg(so).output().expect("nm");
    assert!(out.status.success(), "nm {}: {}", so.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

fn headers(series: &str) -> std::path::PathBuf {
    let out = Command::new("bash")
        .arg(support::repo_root().join("slurm-headers/fetch.sh"))
        .arg(series)
        .output()
        .expect("slurm-headers/fetch.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().into()
}

#[test]
fn each_series_build_uses_only_its_slurms_symbols() {
    let target = support::target_dir();
    let mut checked = 0;
    for series in ["22.05", "24.11", "26.05"] {
        let so = target.join(format!("slurm-{series}/libspank_shoal.so"));
        if !so.is_file() {
            assert_ne!(series, slurm_series(), "{} missing: bash packaging/build-plugin.sh {series}", so.display());
            continue;
        }
        checked += 1;
        let spank_h = std::fs::read_to_string(headers(series).join("spank.h")).unwrap();
        for sym in nm(&["-D", "--undefined-only"], &so) {
            if sym.starts_with("spank_") {
                assert!(spank_h.contains(&format!("{sym}(")) || spank_h.contains(&format!("{sym} (")), "{series}: {sym} is not in its spank.h");
            }
        }
        let defined = nm(&["-D", "--defined-only"], &so);
        let has_mode = defined.iter().any(|s| s == "slurm_spank_init_failure_mode");
        assert_eq!(has_mode, series == "26.05", "{series}: slurm_spank_init_failure_mode exported: {has_mode}");
        assert!(defined.iter().any(|s| s == "plugin_version"), "{series}: no plugin_version");
    }
    assert!(checked > 0, "no per-series plugin under {}/slurm-*", target.display());
}

#[test]
fn the_test_beds_slurm_loads_the_plugin_built_for_it() {
    let tb = slurm();
    let series = slurm_series();
    let job = ok(&tb.user("sbatch --parsable -N1 -w n1 --wait -o /dev/null --wrap true")).trim().to_string();
    // slurmstepd logs what the plugin said when it loaded (SlurmdDebug=verbose).
    let log = ok(&tb.root(&format!("grep -h '^\\[.*\\] \\[{job}\\.batch\\] shoal .*loaded' /var/log/slurm/slurmd-n1.log || true")));
    assert!(log.contains(&format!("(Slurm {series}.")), "job {job}: plugin not loaded for Slurm {series}:\n{log}");
    assert!(ok(&tb.user("srun --help")).contains("--image"), "srun of Slurm {series} has no --image");
    let version = ok(&tb.user("srun --version"));
    assert!(version.contains(&format!("slurm-wlm {series}.")) || version.contains(&format!("slurm {series}.")), "{version}");
}

const REG: &str = "127.0.0.1:5443";

/// Tests that change the cluster's slurm.conf take this for writing.
static CLUSTER_CONF: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CLUSTER_CONF.read().unwrap_or_else(|e| e.into_inner())
}

/// A user image of its own (staged nowhere yet), from the node's busybox;
/// returns its name and digest.
fn user_image(tb: &support::Testbed, dir: &std::path::Path, what: &str) -> (String, String) {
    let name = format!("localhost/{what}:{}", std::process::id());
    ok(&tb.user(&format!(
        "cd {} && mkdir -p root/etc root/bin && cp /bin/busybox root/bin/ && for a in sh cat sleep grep; do ln -sf busybox root/bin/$a; done \
         && echo {what}-{} > root/etc/shoal-test-image && shoal import -q root --name {name}",
        dir.display(),
        std::process::id()
    )));
    let inspect: serde_json::Value = serde_json::from_str(&ok(&tb.user(&format!("shoal inspect --json {name}")))).unwrap();
    (name, inspect["digest"].as_str().expect("digest in inspect --json").to_string())
}

/// The extern step (`PrologFlags=Contain`, on the 24.11 and 26.05 test
/// beds) loads the plugin in remote context like a step but has no tasks:
/// the plugin leaves it alone (no image opened, no container). The image is
/// still staged on every node: by the job prolog before any step where
/// Slurm runs it, and by the first step where it does not, which is
/// `PrologFlags=RunInJob` (24.05+; the 24.11 bed): there Slurm 24.11.5
/// calls no SPANK job prolog (README, "Slurm versions").
#[test]
fn the_extern_step_is_left_alone_and_the_image_is_staged_on_every_node() {
    let _g = shared();
    let tb = slurm();
    let series = slurm_series();
    let conf = std::fs::read_to_string(support::node_path("/etc/slurm/slurm.conf")).unwrap();
    let flags = conf.lines().find_map(|l| l.strip_prefix("PrologFlags=")).unwrap_or("").to_string();
    let contain = flags.contains("Contain");
    let run_in_job = flags.contains("RunInJob");
    assert_eq!((contain, run_in_job), (series != "22.05", series == "24.11"), "PrologFlags={flags} on Slurm {series}");
    let dir = tb.user_tempdir("extern");
    let d = dir.display();
    let (img, digest) = user_image(tb, &dir, "extern");
    let job_name = format!("extern-{}", std::process::id());
    // salloc holds the allocation with no step until `go` appears.
    ok(&tb.user(&format!(
        "exec > /dev/null 2>&1 < /dev/null; cd {d} && \
         setsid salloc -N3 -J {job_name} --image={img} sh -c 'while [ ! -e {d}/go ]; do sleep 0.1; done; srun -l cat /etc/shoal-test-image' \
         > alloc.out 2>alloc.err &"
    )));
    let job: u32 = ok(&tb.user(&format!(
        "for i in $(seq 300); do j=$(squeue -h -n {job_name} -t R -o %i); [ -n \"$j\" ] && echo $j && exit 0; sleep 0.1; done; exit 1"
    )))
    .trim()
    .parse()
    .unwrap();
    let _cancel = scopeguard(tb, job);
    let staged = |wait: u32| {
        ok(&tb.root(&format!(
            "for i in $(seq {wait}); do n=$(cat /var/log/slurm/slurmd-n*.log | grep -c 'job {job}: staged .*({digest}) into'); [ $n -ge 3 ] && break; sleep 0.1; done; \
             cat /var/log/slurm/slurmd-n*.log | grep 'job {job}: staged .*({digest}) into' || true"
        )))
    };
    if run_in_job {
        // No SPANK prolog: nothing staged while the allocation has no step
        // (its extern steps are up on every node by now).
        ok(&tb.root(&format!("for i in $(seq 300); do [ $(pgrep -fc '^slurmstepd: \\[{job}\\.extern\\]$') = 3 ] && exit 0; sleep 0.1; done; exit 1")));
        let early = staged(20);
        assert!(early.trim().is_empty(), "Slurm {series} ran the SPANK prolog with RunInJob: update the README:\n{early}");
    } else {
        // Staged by the prolog on n1..n3: no step has run yet.
        let early = staged(300);
        for node in ["n1", "n2", "n3"] {
            assert!(early.contains(&format!("into {node}'s cache")), "job {job}: the prolog did not stage on {node}:\n{early}");
        }
    }
    let steps = ok(&tb.root(&format!("grep -h '\\[{job}\\.[0-9]*\\] ' /var/log/slurm/slurmd-n*.log || true")));
    assert!(steps.trim().is_empty(), "a step of job {job} ran before go:\n{steps}");
    if contain {
        // One extern slurmstepd per node: it holds no file of the image and
        // has no container state.
        let stepds = ok(&tb.root(&format!("pgrep -f '^slurmstepd: \\[{job}\\.extern\\]$' || true")));
        let stepds: Vec<&str> = stepds.split_whitespace().collect();
        assert_eq!(stepds.len(), 3, "job {job}: extern steps: {stepds:?}");
        for pid in &stepds {
            let fds = ok(&tb.root(&format!("ls -l /proc/{pid}/fd | grep -e '{digest_hex}' -e '\\.sqfs' || true", digest_hex = &digest[7..])));
            assert!(fds.trim().is_empty(), "extern stepd {pid} of job {job} holds the image:\n{fds}");
        }
        let state = ok(&tb.root(&format!("ls /run/shoal/share 2>/dev/null | grep '^{job}\\.' || true")));
        assert!(state.trim().is_empty(), "container state for job {job} before any step:\n{state}");
        let said = ok(&tb.root(&format!("grep -h '\\[{job}\\.extern\\] .*shoal: ' /var/log/slurm/slurmd-n*.log || true")));
        assert!(said.lines().all(|l| l.contains(": staged ")), "the extern step of job {job} did more than stage:\n{said}");
    }
    ok(&tb.user(&format!("touch {d}/go; for i in $(seq 600); do squeue -h -j {job} | grep -q . || break; sleep 0.1; done")));
    let out = ok(&tb.user(&format!("cat {d}/alloc.out {d}/alloc.err")));
    assert_eq!(out.matches(&format!("extern-{}", std::process::id())).count(), 3, "{out}");
    let all = staged(300);
    for node in ["n1", "n2", "n3"] {
        assert!(all.contains(&format!("into {node}'s cache")), "job {job}: not staged on {node}:\n{all}");
    }
}

/// Cancels a job when dropped, so a failed assertion leaves none running.
struct Cancel<'a>(&'a support::Testbed, u32);

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        let _ = self.0.root(&format!("scancel {}", self.1));
    }
}

fn scopeguard(tb: &support::Testbed, job: u32) -> Cancel<'_> {
    Cancel(tb, job)
}

/// Option callbacks run twice in slurmstepd up to 23.11 (launch message,
/// then environment), once from 24.05; `#SBATCH` lines and the command line
/// may give one option again. Repeated and multi-valued `--image` and
/// `--mount` give the same container on every series: each mount once, and
/// every `--mount` given (Slurm hands slurmstepd only an option's last
/// value; the plugin carries the list itself, options::export_mounts).
#[test]
fn repeated_and_multi_valued_options_give_one_mount_each() {
    let _g = shared();
    let tb = slurm();
    let dir = tb.user_tempdir("options-twice");
    let d = dir.display();
    // An image with a C library: the batch script's srun is the node's.
    let img = format!("{REG}/shoal/{}", support::mpich_image_tag());
    ok(&tb.user(&format!("cd {d} && mkdir a b && echo in-a > a/f && echo in-b > b/f")));
    let probe = "echo \"$(hostname) a=$(grep -c \" /mnt/a \" /proc/self/mountinfo) b=$(grep -c \" /mnt/b \" /proc/self/mountinfo) $(cat /mnt/a/f) $(cat /mnt/b/f) $(cat /etc/shoal-test-image)\"";
    ok(&tb.user(&format!("cd {d} && cat > probe.sh <<'EOF'\n{probe}\nEOF")));
    let opts = format!("--image={img} --image={img} --mount={d}/a:/mnt/a --mount='{d}/b:/mnt/b;{d}/a:/mnt/a' --mount={d}/b:/mnt/b");
    let want = |out: &str, nodes: &[&str]| {
        for node in nodes {
            assert!(
                out.contains(&format!("{node} a=1 b=1 in-a in-b debian-mpich")),
                "{node}: each mount once, in the image:\n{out}"
            );
        }
    };
    let out = ok(&tb.user(&format!("cd {d} && srun -N3 {opts} sh probe.sh")));
    want(&out, &["n1", "n2", "n3"]);
    // The batch script and its step: the options from #SBATCH lines and
    // the command line both.
    let out = ok(&tb.user(&format!(
        "cd {d} && printf '#!/bin/sh\\n#SBATCH --image={img}\\n#SBATCH --mount={d}/a:/mnt/a\\nsh probe.sh\\nsrun -N2 sh probe.sh\\n' > job.sh && \
         sbatch --wait -N2 -o job.out {opts} job.sh >/dev/null; rc=$?; cat job.out; exit $rc"
    )));
    assert_eq!(out.lines().filter(|l| l.contains(" a=1 b=1 ")).count(), 3, "batch script and two tasks:\n{out}");
    want(&out, &["n1", "n2"]);
}

/// A TaskProlog (task-prolog.sh exports SHOAL_TESTBED_TASK_PROLOG=ran) runs
/// for every task of an image step and for an image batch script, inside
/// the image (a shell script: the image needs /bin/sh). The test beds
/// configure one, except 24.11's: 24.05.5-24.11.6 have Slurm ticket 22853
/// (trixie's 24.11.5), under which an image task's TaskProlog can fail
/// (README, "Slurm versions"), and sites there leave it unset. There this
/// test configures it for a while and records what 24.11.5 does
/// ([`task_prolog_on_24_11`]).
#[test]
fn a_task_prolog_runs_in_image_tasks() {
    let _w = CLUSTER_CONF.write().unwrap_or_else(|e| e.into_inner());
    let tb = slurm();
    let series = slurm_series();
    let line = "TaskProlog=/etc/slurm/task-prolog.sh";
    let conf = std::fs::read_to_string(support::node_path("/etc/slurm/slurm.conf")).unwrap();
    let configured = conf.lines().any(|l| l.starts_with("TaskProlog="));
    let probe = "echo \"$(hostname) $(cat /etc/shoal-test-image) prolog=$SHOAL_TESTBED_TASK_PROLOG\"";
    let dir = tb.user_tempdir("task-prolog");
    let d = dir.display();
    ok(&tb.user(&format!("cd {d} && cat > probe.sh <<'EOF'\n#!/bin/sh\n{probe}\nEOF")));
    let mpich = format!("{REG}/shoal/{}", support::mpich_image_tag());
    if series == "24.11" {
        assert!(!configured, "the 24.11 test bed sets a TaskProlog (Slurm ticket 22853)");
        return task_prolog_on_24_11(tb, &dir, &mpich);
    }
    assert!(conf.lines().any(|l| l == line), "the Slurm {series} test bed has no {line}");
    for (img, marker) in [(mpich.clone(), "debian-mpich"), (format!("{REG}/shoal/busybox:latest"), "shoal test image: busybox")] {
        let out = ok(&tb.user(&format!("cd {d} && srun -N3 --image={img} sh probe.sh")));
        for node in ["n1", "n2", "n3"] {
            assert!(out.contains(&format!("{node} {marker} prolog=ran")), "Slurm {series}, {img}, {node}:\n{out}");
        }
    }
    let out = ok(&tb.user(&format!("cd {d} && sbatch --wait -N1 -o batch.out --image={mpich} probe.sh >/dev/null; rc=$?; cat batch.out; exit $rc")));
    assert!(out.contains("n1 debian-mpich prolog=ran"), "Slurm {series}, batch script:\n{out}");
}

/// Brings the 24.11 bed back to its own slurm.conf (no TaskProlog).
struct Unconfigure<'a>(&'a support::Testbed);

impl Drop for Unconfigure<'_> {
    fn drop(&mut self) {
        let _ = self.0.host_root(&format!("bash {}/tests/testbed/up.sh >/dev/null", support::repo_root().display()));
    }
}

/// Slurm 24.11.5 with a TaskProlog (ticket 22853): the 24.11 bed restarted
/// with one (`SHOAL_TESTBED_TASK_PROLOG=1`). Tasks outside an image always
/// run it; each image step either runs it in every task or fails, and
/// then slurmd's log shows the ticket's exec failure; no node is drained.
/// What it did is printed (the README says what was seen).
fn task_prolog_on_24_11(tb: &support::Testbed, dir: &std::path::Path, image: &str) {
    let d = dir.display();
    let _restore = Unconfigure(tb);
    ok(&tb.host_root(&format!("SHOAL_TESTBED_TASK_PROLOG=1 bash {}/tests/testbed/up.sh >/dev/null", support::repo_root().display())));
    let conf = std::fs::read_to_string(support::node_path("/etc/slurm/slurm.conf")).unwrap();
    assert!(conf.lines().any(|l| l == "TaskProlog=/etc/slurm/task-prolog.sh"), "SHOAL_TESTBED_TASK_PROLOG=1 set no TaskProlog");
    let out = ok(&tb.user(&format!("cd {d} && srun -N3 sh probe.sh")));
    assert_eq!(out.matches(" prolog=ran").count(), 3, "a TaskProlog outside an image:\n{out}");
    let signature = "TaskProlog failed status=127";
    let count = || ok(&tb.root(&format!("cat /var/log/slurm/slurmd-n*.log | grep -c '{signature}' || true"))).trim().parse::<usize>().unwrap();
    let (mut ran, mut failed) = (0, 0);
    const TRIES: usize = 3;
    for _ in 0..TRIES {
        let before = count();
        let r = tb.user(&format!("cd {d} && srun -N3 --image={image} sh probe.sh"));
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.status.success() && out.matches("debian-mpich prolog=ran").count() == 3 {
            ran += 1;
            continue;
        }
        let after = count();
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(!r.status.success() && after > before, "an image step failed without ticket 22853's {signature:?} in slurmd's log:\n{out}\n{err}");
        failed += 1;
    }
    let execv = ok(&tb.root("cat /var/log/slurm/slurmd-n*.log | grep -o 'execv([^)]*): No such file or directory' | sort | uniq -c || true"));
    let state = ok(&tb.root("sinfo -h -N -o '%N %T' | sort -u"));
    assert!(state.lines().all(|l| !l.contains("drain")), "a node drained:\n{state}");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "Slurm 24.11.5 with a TaskProlog: {ran} of {TRIES} image steps (3 tasks each) ran it in every task, {failed} failed \
         with {signature:?} (ticket 22853); slurmd's execv failures so far: {}",
        execv.split_whitespace().collect::<Vec<_>>().join(" ")
    );
}
