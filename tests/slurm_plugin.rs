//! The SPANK plugin loaded into real Slurm: srun, sbatch, salloc and
//! slurmstepd on the three-node test cluster, driven as the unprivileged user.

mod support;

use support::{fails, ok, slurm as testbed};

#[test]
fn batch_job_runs_on_all_three_nodes_with_the_plugin_loaded() {
    let tb = testbed();
    let dir = tb.user_tempdir("batch");
    let out = ok(&tb.user(&format!(
        "cd {} && sbatch --parsable --wait -N3 -o job.out --wrap='srun -l hostname' && cat job.out",
        dir.display()
    )));
    let job_id: u32 = out.lines().next().unwrap().trim().parse().expect("job id");
    for node in ["n1", "n2", "n3"] {
        assert!(out.lines().any(|l| l.ends_with(&format!(": {node}"))), "{node} missing in:\n{out}");
        // slurmstepd of step 0 on that node loaded the plugin and logged it.
        let log = std::fs::read_to_string(support::node_path(&format!("/var/log/slurm/slurmd-{node}.log"))).unwrap();
        let line = format!("[{job_id}.0] shoal ");
        assert!(
            log.lines().any(|l| l.contains(&line) && l.contains("loaded in remote (slurmstepd) context")),
            "no `{line}... loaded` line in slurmd-{node}.log"
        );
    }
}

#[test]
fn help_of_sbatch_srun_and_salloc_lists_image() {
    let tb = testbed();
    for cmd in ["sbatch", "srun", "salloc"] {
        let help = ok(&tb.user(&format!("{cmd} --help")));
        let at = help.find("--image=REF").unwrap_or_else(|| panic!("{cmd} --help lacks --image:\n{help}"));
        assert!(help[at..].contains("container"), "{cmd} --help: no usage text for --image");
    }
}

#[test]
fn malformed_image_is_refused_at_the_prompt() {
    let tb = testbed();
    for (bad, says) in [
        ("::bad::", r#"shoal: --image="::bad::": invalid image reference"#),
        ("", r#"shoal: --image="": empty image reference"#),
        ("Debian:12", r#"shoal: --image="Debian:12": invalid image reference"#),
    ] {
        for cmd in [
            format!("sbatch --image='{bad}' --wrap=true"),
            format!("srun -N1 --image='{bad}' true"),
            format!("salloc -N1 --image='{bad}' true"),
        ] {
            let out = tb.user(&cmd);
            let err = fails(&out);
            assert!(err.contains(says), "{cmd}: expected {says:?} in:\n{err}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("Submitted"),
                "{cmd} submitted a job"
            );
        }
    }
}

/// A slurm.conf for the user's commands whose PlugStackConfig loads the
/// plugin with `args`, leaving the shared cluster's own config untouched.
fn client_conf_with_plugin_args(dir: &std::path::Path, args: &str) -> String {
    let tb = testbed();
    let conf = std::fs::read_to_string(support::node_path("/etc/slurm/slurm.conf")).unwrap();
    let conf = conf.replace(
        "PlugStackConfig=/etc/slurm/plugstack.conf",
        &format!("PlugStackConfig={}/plugstack.conf", dir.display()),
    );
    let script = format!(
        "cd {dir} && cat > slurm.conf <<'EOF'\n{conf}EOF\n\
         echo 'required /usr/local/lib/shoal/libspank_shoal.so {args}' > plugstack.conf",
        dir = dir.display()
    );
    ok(&tb.user(&script));
    format!("SLURM_CONF={}/slurm.conf", dir.display())
}

#[test]
fn unknown_plugstack_argument_fails_the_step_naming_it() {
    let tb = testbed();
    let dir = tb.user_tempdir("plugstack");
    let env = client_conf_with_plugin_args(&dir, "config=/etc/shoal/shoal.toml verbose=yes");
    let err = fails(&tb.user(&format!("{env} srun -N1 hostname")));
    assert!(
        err.contains("shoal: unknown plugstack.conf argument `verbose=yes`; supported: config=PATH"),
        "{err}"
    );
}

#[test]
fn invalid_site_config_fails_naming_file_line_and_key() {
    let tb = testbed();
    let dir = tb.user_tempdir("config");
    ok(&tb.user(&format!(
        "printf '[store]\\nsite_dir = 42\\n' > {}/bad.toml",
        dir.display()
    )));
    let env = client_conf_with_plugin_args(&dir, &format!("config={}/bad.toml", dir.display()));
    let err = fails(&tb.user(&format!("{env} srun -N1 hostname")));
    let want = format!("shoal: invalid Shoal config {}/bad.toml line 2 (key `store.site_dir`)", dir.display());
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
}

#[test]
fn bad_mount_module_and_conflicting_image_are_refused_at_the_prompt() {
    let tb = testbed();
    for (cmd, says) in [
        ("srun -N1 --mount=/tmp:relative true", r#"shoal: --mount="/tmp:relative": invalid mount "/tmp:relative": the target must be an absolute path"#),
        ("sbatch --volume='/a:/b;/c:/d:perNodeCache' --wrap=true", r#"shoal: --mount="/c:/d:perNodeCache": invalid mount "/c:/d:perNodeCache": unknown flag"#),
        ("srun -N1 --mount=/tmp:/etc/x true", r#"shoal: --mount="/tmp:/etc/x": mount "/tmp:/etc/x" refused by site policy"#),
        ("srun -N1 --module=nosuchmodule true", "shoal: --module=nosuchmodule"),
        (
            "srun -N1 --image=127.0.0.1:5443/a:1 --image=127.0.0.1:5443/b:1 true",
            "shoal: --image given twice with different values",
        ),
        ("SHOAL_IMAGE='::x' srun -N1 true", r#"shoal: $SHOAL_IMAGE: --image="::x""#),
    ] {
        let err = fails(&tb.user(cmd));
        assert!(err.contains(says), "{cmd}: expected {says:?} in:\n{err}");
    }
}

/// Issue 12: a task's plan (`--image-show-plan`, the plugin's own: Slurm's
/// binds, privileged mode, root's mounts for the user) and the mounts its
/// container has come from one lowering: every flag the printed plan gives
/// a mount is on that mount in the task's own mountinfo.
#[test]
fn the_plan_a_task_shows_is_the_plan_its_container_is_made_with() {
    let tb = testbed();
    let img = format!("{}/shoal/busybox:latest", tb.registry);
    let out = tb.user(&format!("srun -N1 -n1 --image={img} --image-show-plan --mount=/tmp:/data:ro cat /proc/self/mountinfo"));
    let mountinfo = ok(&out);
    let plan = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(plan.contains("mode     privileged") && plan.contains("/data"), "no plan on the task's stderr:\n{plan}");
    support::dry_run::assert_matches_mountinfo(&plan, &mountinfo);
    // Without the option, no plan.
    let quiet = tb.user(&format!("srun -N1 -n1 --image={img} true"));
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("mode     privileged"));
}
