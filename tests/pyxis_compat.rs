//! pyxis users' scripts on the three-node cluster, unchanged, as the
//! unprivileged user: `--container-*` options and `PYXIS_CONTAINER_*`
//! defaults (`[slurm] pyxis_options = true` in the test bed's config),
//! writable and named containers, remap-root, refusals, and nothing left
//! behind.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{fails, ok, slurm, Testbed};

const BUSYBOX_PYXIS: &str = "127.0.0.1:5443#shoal/busybox";
const MPICH: &str = "127.0.0.1:5443/shoal/debian-mpich:12";
const CONTAINERS: &str = "/var/lib/shoal/containers";

/// Submits `script` (a whole batch script, `#SBATCH` lines included) as the
/// user in `dir`, waits, and returns (job id, output).
fn batch(tb: &Testbed, dir: &Path, script: &str) -> (u32, String) {
    let out = ok(&tb.user(&format!(
        "cd {dir} && cat > job.sh <<'EOF'\n{script}\nEOF\n\
         sbatch --parsable --wait -o job.out job.sh; rc=$?; cat job.out; exit $rc",
        dir = dir.display()
    )));
    let id = out.lines().next().and_then(|l| l.trim().parse().ok()).expect("job id");
    (id, out)
}

/// After a job: no process of it, no container state, no writable layer
/// or named container of it on any node.
fn assert_nothing_left(tb: &Testbed, job: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = ok(&tb.root(&format!("grep -lz '^SLURM_JOB_ID={job}$' /proc/[0-9]*/environ 2>/dev/null || true")));
        let state = ok(&tb.root(&format!("ls /run/shoal/share 2>/dev/null | grep '^{job}\\.' || true")));
        let layers = ok(&tb.root(&format!("ls -d {CONTAINERS}/*/job-{job} 2>/dev/null || true")));
        let queued = ok(&tb.root(&format!("squeue -h -j {job} 2>/dev/null || true")));
        if [&procs, &state, &layers, &queued].iter().all(|s| s.trim().is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} left: processes:\n{procs}\nshare state:\n{state}\nlayers:\n{layers}\nqueue:\n{queued}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pyxis_batch_script_runs_unchanged() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-batch");
    let d = dir.display();
    ok(&tb.user(&format!("mkdir -p {d}/data {d}/out && echo input-data > {d}/data/in.txt")));
    let (job, out) = batch(
        tb,
        &dir,
        &format!(
            "#!/bin/bash\n\
             #SBATCH -N3\n\
             #SBATCH --container-image={MPICH}\n\
             #SBATCH --container-mounts={d}/data:/data:ro+rprivate,{d}/out:/results:x-create=dir+rbind\n\
             #SBATCH --container-workdir=/results\n\
             echo \"batch in $(cat /etc/shoal-test-image) at $(pwd)\"\n\
             echo \"read $(cat /data/in.txt)\"\n\
             touch /data/new 2>/dev/null && echo data-writable || echo data-read-only\n\
             echo from-the-batch-script > /results/o.txt\n\
             srun -l sh -c 'echo \"step in $(cat /etc/shoal-test-image) on $(hostname): $(cat /data/in.txt) at $(pwd)\"'"
        ),
    );
    assert!(out.contains("batch in debian-mpich at /results"), "{out}");
    assert!(out.contains("read input-data"), "{out}");
    assert!(out.contains("data-read-only"), "{out}");
    for node in ["n1", "n2", "n3"] {
        // Steps inherit the batch script's image, mounts and workdir.
        assert!(out.contains(&format!("step in debian-mpich on {node}: input-data at /results")), "{node}:\n{out}");
    }
    assert_eq!(ok(&tb.user(&format!("cat {d}/out/o.txt"))).trim(), "from-the-batch-script");
    assert_nothing_left(tb, job);
}

#[test]
fn writable_and_read_only_containers_and_their_layers_go_at_step_end() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-writable");
    let (job, out) = batch(
        tb,
        &dir,
        &format!(
            "#!/bin/bash\n#SBATCH -N2\n\
             srun -l --container-image={BUSYBOX_PYXIS} --container-writable sh -c 'mkdir -p /opt && echo w > /opt/y && cat /opt/y && ls -d {CONTAINERS}/$SLURMD_NODENAME 2>&1 | head -1'\n\
             srun -N1 --container-image={BUSYBOX_PYXIS} --writable sh -c 'echo again > /etc/z && cat /etc/z'\n\
             srun -N1 --container-image={BUSYBOX_PYXIS} --container-readonly touch /z 2>&1 || echo readonly-refused\n\
             srun -N1 --container-image={BUSYBOX_PYXIS} sh -c 'test -e /opt/y && echo leaked || echo fresh'\n\
             ls {CONTAINERS}/n1/job-$SLURM_JOB_ID/ 2>/dev/null | grep step- || echo no-step-layers"
        ),
    );
    assert_eq!(out.matches(": w").count(), 2, "{out}");
    assert!(out.contains("again"), "{out}");
    assert!(out.contains("Read-only file system") && out.contains("readonly-refused"), "{out}");
    assert!(out.contains("fresh") && !out.contains("leaked"), "{out}");
    // The host's layer directory is not visible inside; after each step its layer is gone.
    assert!(out.contains("no-step-layers"), "{out}");
    assert_nothing_left(tb, job);
}

#[test]
fn named_container_keeps_its_state_across_steps_on_every_node() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-named");
    ok(&tb.user(&format!("mkdir -p {}/sig", dir.display())));
    let (job, out) = batch(
        tb,
        &dir,
        &format!(
            "#!/bin/bash\n#SBATCH -N3\n\
             srun --container-image={BUSYBOX_PYXIS} --container-name=c1 sh -c 'mkdir -p /opt && hostname > /opt/x'\n\
             srun -l --container-name=c1 sh -c 'echo \"sees $(cat /opt/x)\"'\n\
             srun -l --container-image={BUSYBOX_PYXIS} sh -c 'test -e /opt/x && echo unnamed-sees-it || echo unnamed-fresh'\n\
             srun -N1 -w n1 --container-name=c1:create true 2>&1 || echo create-refused\n\
             srun -N1 -w n1 --container-name=c1:exec true 2>&1 || echo exec-refused-not-running\n\
             srun -N1 -w n1 --container-image={BUSYBOX_PYXIS} --container-name=c2:create sh -c 'echo made-c2'\n\
             srun -N1 -w n1 --overlap --container-name=c1 --container-mounts=$PWD/sig:/sig sh -c 'mkdir -p /tmp/live && touch /sig/started && for i in $(seq 300); do test -e /sig/done && break; sleep 0.1; done' &\n\
             for i in $(seq 300); do test -e sig/started && break; sleep 0.1; done\n\
             srun -N1 -w n1 --overlap --container-name=c1:exec sh -c 'test -d /tmp/live && echo exec-joined'\n\
             srun -N1 -w n1 --overlap --container-name=c1 sh -c 'test -d /tmp/live && echo auto-joined'\n\
             srun -N1 -w n1 --overlap --container-name=c1:no_exec sh -c 'test -d /tmp/live && echo no_exec-joined || echo \"no_exec-separate $(cat /opt/x)\"'\n\
             touch sig/done; wait\n\
             ls -d {CONTAINERS}/n2/job-$SLURM_JOB_ID/name-c1 && echo layer-kept-during-job"
        ),
    );
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        assert!(out.contains(&format!("{i}: sees {node}")), "{node}:\n{out}");
    }
    assert!(out.contains("unnamed-fresh") && !out.contains("unnamed-sees-it"), "{out}");
    assert!(out.contains("create-refused") && out.contains("already exists on n1"), "{out}");
    assert!(out.contains("exec-refused-not-running") && out.contains("not running on this node"), "{out}");
    assert!(out.contains("made-c2"), "{out}");
    assert!(out.contains("exec-joined") && out.contains("auto-joined"), "{out}");
    assert!(out.contains("no_exec-separate n1") && !out.contains("no_exec-joined"), "{out}");
    assert!(out.contains("layer-kept-during-job"), "{out}");
    // Job scope: the epilog removes them.
    assert_nothing_left(tb, job);
}

#[test]
fn remap_root_is_uid_0_inside_and_the_user_outside() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-remap");
    let d = dir.display();
    let uid = ok(&tb.user("id -u")).trim().to_string();
    let out = ok(&tb.user(&format!(
        "srun -N1 --container-image={BUSYBOX_PYXIS} --container-remap-root --container-mounts={d}:/out \
         sh -c 'id -u; id -g; touch /out/made-inside; mkdir /out/dir-inside'"
    )));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "0"], "{out}");
    let owners = ok(&tb.root(&format!("stat -c %u {d}/made-inside {d}/dir-inside")));
    assert_eq!(owners.lines().collect::<Vec<_>>(), [uid.as_str(), uid.as_str()], "owned outside by");
    // No privilege: root inside cannot write a directory of the host's
    // root that the user cannot.
    let rootdir = format!("/tmp/i15-rootdir-{}", std::process::id());
    ok(&tb.root(&format!("rm -rf {rootdir} && mkdir -m 0755 {rootdir}")));
    let out = tb.user(&format!(
        "srun -N1 --container-image={BUSYBOX_PYXIS} --container-remap-root --container-mounts={rootdir}:/r sh -c 'id -u; touch /r/x'"
    ));
    let err = fails(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!Path::new(&format!("{rootdir}/x")).exists());
    ok(&tb.root(&format!("rm -rf {rootdir}")));
    let out = ok(&tb.user(&format!("srun -N1 --container-image={BUSYBOX_PYXIS} --no-container-remap-root id -u")));
    assert_eq!(out.trim(), uid);
}

#[test]
fn pyxis_environment_defaults_apply_and_options_win() {
    let tb = slurm();
    let out = ok(&tb.user(&format!(
        "PYXIS_CONTAINER_IMAGE={BUSYBOX_PYXIS} PYXIS_CONTAINER_WORKDIR=/etc srun -N1 sh -c 'pwd; cat /etc/shoal-test-image'"
    )));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["/etc", "shoal test image: busybox"], "{out}");
    let out = ok(&tb.user(&format!(
        "PYXIS_CONTAINER_IMAGE={BUSYBOX_PYXIS} PYXIS_CONTAINER_WORKDIR=/etc srun -N1 --container-workdir=/tmp pwd"
    )));
    assert_eq!(out.trim(), "/tmp");
    let out = ok(&tb.user(&format!(
        "PYXIS_CONTAINER_IMAGE={BUSYBOX_PYXIS} PYXIS_CONTAINER_WRITABLE=1 srun -N1 sh -c 'echo ok > /w && cat /w'"
    )));
    assert_eq!(out.trim(), "ok");
    let err = fails(&tb.user(&format!("PYXIS_CONTAINER_IMAGE={BUSYBOX_PYXIS} PYXIS_CONTAINER_WRITABLE=maybe srun -N1 true")));
    assert!(err.contains("$PYXIS_CONTAINER_WRITABLE=\"maybe\""), "{err}");
    // --container-env: the job's value wins over the image's PATH.
    let out = ok(&tb.user(&format!("PATH=/bin:/usr/bin srun -N1 --container-image={BUSYBOX_PYXIS} --container-env=PATH sh -c 'echo $PATH'")));
    assert_eq!(out.trim(), "/bin:/usr/bin");
    // --no-container-mount-home: the home directory is not there.
    let out = ok(&tb.user(&format!(
        "srun -N1 --container-image={BUSYBOX_PYXIS} --no-container-mount-home sh -c 'ls $HOME/tests >/dev/null 2>&1 && echo home-bound || echo no-home'"
    )));
    assert_eq!(out.trim(), "no-home");
}

#[test]
fn what_shoal_does_not_do_is_refused_at_the_prompt() {
    let tb = slurm();
    for (args, says) in [
        ("--container-mounts=/tmp:/x:rshared", "mount propagation is always private"),
        ("--container-mounts=tmpfs:/x", "`tmpfs` sources"),
        ("--container-mounts=/tmp:/x:bogus", "flag \"bogus\" is not supported by Shoal"),
        ("--container-mounts=/tmp:/etc/x", "refused by site policy"),
        ("--container-image=bob@127.0.0.1:5443#shoal/busybox", "login user"),
        ("--container-name=x:bogus", "unknown flag \"bogus\""),
        ("--container-readonly --writable", "were given; give one"),
    ] {
        let image = if args.contains("--container-image") { String::new() } else { format!("--container-image={BUSYBOX_PYXIS}") };
        for cmd in [format!("srun -N1 {image} {args} true"), format!("sbatch {image} {args} --wrap=true")] {
            let out = tb.user(&cmd);
            let err = fails(&out);
            assert!(err.contains(says), "{cmd}: expected {says:?} in:\n{err}");
            assert!(!String::from_utf8_lossy(&out.stdout).contains("Submitted"), "{cmd} submitted a job");
        }
    }
    // A name with no container yet and no image to make it from.
    let err = fails(&tb.user("srun -N1 --container-name=never-made true"));
    assert!(err.contains("does not exist on node n") && err.contains(" yet: give the image"), "{err}");
}

#[test]
fn help_lists_the_pyxis_options() {
    let tb = slurm();
    let help = ok(&tb.user("srun --help"));
    for opt in ["--container-image=", "--container-mounts=", "--container-name=", "--container-remap-root", "--container-writable"] {
        assert!(help.contains(opt), "srun --help lacks {opt}");
    }
}

/// Waits until `path` exists (a step's save finishes in slurmstepd's exit,
/// which srun does not wait for).
fn wait_for_file(tb: &Testbed, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok(&tb.root(&format!("test -f {path} && echo yes || true"))).contains("yes") {
        assert!(Instant::now() < deadline, "{path} was not written");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn container_save_then_a_new_job_runs_the_saved_image() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-save");
    let d = dir.display();
    let uid = ok(&tb.user("id -u")).trim().to_string();
    // Two nodes: only the first saves. Changes: a new file with a user
    // xattr, a deleted file, a directory removed and made again (opaque in
    // the layer).
    let out = ok(&tb.user(&format!(
        "srun -N2 --container-image={MPICH} --container-save={d}/saved.sqsh sh -c '\
         test -d /usr/share/zoneinfo/Africa && echo had-zones; \
         mkdir -p /opt && echo kept-$SLURM_NODEID > /opt/saved; rm /etc/debian_version; \
         python3 -c \"import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())\" /opt/saved user.t15 xattr-kept; \
         rm -rf /usr/share/zoneinfo; mkdir /usr/share/zoneinfo; echo only > /usr/share/zoneinfo/only'"
    )));
    assert!(out.matches("had-zones").count() == 2, "{out}");
    wait_for_file(tb, &format!("{d}/saved.sqsh"));
    let owner = ok(&tb.root(&format!("stat -c %u {d}/saved.sqsh")));
    assert_eq!(owner.trim(), uid, "the saved file is the user's");
    // Nothing else was left beside it (the temporary file is renamed).
    assert_eq!(ok(&tb.user(&format!("ls -A {d}"))).trim(), "saved.sqsh");
    let out = ok(&tb.user(&format!(
        "srun -N1 -w n3 --container-image={d}/saved.sqsh sh -c '\
         cat /opt/saved; test -e /etc/debian_version && echo deleted-is-back || echo deleted-is-gone; \
         ls /usr/share/zoneinfo; cat /etc/shoal-test-image; \
         python3 -c \"import os; print(os.getxattr(\\\"/opt/saved\\\", \\\"user.t15\\\").decode())\"'"
    )));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["kept-0", "deleted-is-gone", "only", "debian-mpich", "xattr-kept"],
        "{out}"
    );

    // As the user: a PATH in a directory only root may write is refused
    // before the step runs, on the user's terminal; root writes nothing.
    let rootdir = format!("/tmp/i15-save-rootdir-{}", std::process::id());
    ok(&tb.root(&format!("rm -rf {rootdir} && mkdir -m 0755 {rootdir}")));
    let out = tb.user(&format!("srun -N1 --container-image={BUSYBOX_PYXIS} --container-save={rootdir}/x.sqsh echo step-ran"));
    let err = fails(&out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("step-ran"), "{err}");
    assert!(err.contains(&format!("--container-save={rootdir}/x.sqsh")) && err.contains("the step was not run"), "{err}");
    assert_eq!(ok(&tb.root(&format!("ls -A {rootdir}"))).trim(), "", "root wrote for the user");
    ok(&tb.root(&format!("rm -rf {rootdir}")));

    // A save that fails only at the step's end (here: the step made a
    // directory where the file goes) is reported on the step's stderr.
    let out = tb.user(&format!(
        "srun -N1 --container-image={BUSYBOX_PYXIS} --container-mounts={d}:{d} --container-save={d}/late.sqsh \
         sh -c 'mkdir -p {d}/late.sqsh/in-the-way && echo step-ran'"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&out.stdout).contains("step-ran"), "{err}");
    assert!(err.contains(&format!("--container-save={d}/late.sqsh")) && err.contains("nothing was written"), "{err}");
    assert_eq!(ok(&tb.user(&format!("ls -A {d}"))).trim(), "late.sqsh\nsaved.sqsh", "the temporary file was removed");
}

/// The test bed's busybox with an entrypoint that announces itself, sets a
/// variable and execs its arguments (pushed once as `t15/entry:1`).
fn entry_image(tb: &Testbed) -> &'static str {
    static PUSHED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    PUSHED.get_or_init(|| {
        ok(&tb.root(
            r#"set -euo pipefail
W=$(mktemp -d /tmp/t15-entry.XXXXXX); trap 'rm -rf "$W"' EXIT
CERTS=/var/lib/shoal-testbed/tls/skopeo
skopeo copy -q --src-cert-dir "$CERTS" docker://127.0.0.1:5443/shoal/busybox:latest "oci:$W/oci:base"
umoci unpack --image "$W/oci:base" "$W/b" >/dev/null
printf '#!/bin/sh\necho "entrypoint ran, $# args"\nexport ENTRY_SET=yes\nexec "$@"\n' > "$W/b/rootfs/entry.sh"
chmod 755 "$W/b/rootfs/entry.sh"
umoci repack --image "$W/oci:entry" "$W/b"
umoci config --image "$W/oci:entry" --config.entrypoint /entry.sh
skopeo copy -q --dest-cert-dir "$CERTS" "oci:$W/oci:entry" docker://127.0.0.1:5443/t15/entry:1
"#,
        ));
        ok(&tb.user("shoal pull -q 127.0.0.1:5443/t15/entry:1"));
    });
    "127.0.0.1:5443#t15/entry:1"
}

#[test]
fn the_image_entrypoint_runs_before_the_command_when_asked() {
    let tb = slurm();
    let image = entry_image(tb);
    // The command's words reach it intact through the entrypoint.
    let cmd = r#"sh -c 'echo "cmd [$ENTRY_SET] [$1]"' zero 'a b'"#;
    let out = ok(&tb.user(&format!("srun -N2 -l --container-image={image} --container-entrypoint {cmd}")));
    for rank in ["0", "1"] {
        assert!(out.contains(&format!("{rank}: entrypoint ran, 5 args")), "{out}");
        assert!(out.contains(&format!("{rank}: cmd [yes] [a b]")), "{out}");
    }
    for flag in ["", "--no-container-entrypoint"] {
        let out = ok(&tb.user(&format!("srun -N1 --container-image={image} {flag} {cmd}")));
        assert_eq!(out.trim(), "cmd [] [a b]", "{flag}: {out}");
    }
    // The pyxis variable, and a batch script run through it.
    let out = ok(&tb.user(&format!("PYXIS_CONTAINER_ENTRYPOINT=1 srun -N1 --container-image={image} {cmd}")));
    assert!(out.contains("entrypoint ran") && out.contains("cmd [yes] [a b]"), "{out}");
    let dir = tb.user_tempdir("pyxis-entry");
    let (_, out) = batch(
        tb,
        &dir,
        // (`#` would start a comment in an #SBATCH line: the `/` form.)
        &format!("#!/bin/sh\n#SBATCH --container-image={}\n#SBATCH --container-entrypoint\n#SBATCH --container-entrypoint-log\necho \"batch [$ENTRY_SET]\"", image.replace('#', "/")),
    );
    assert!(out.contains("entrypoint ran") && out.contains("batch [yes]"), "{out}");
}

/// The test bed's busybox with run settings a save must keep: an
/// entrypoint, a variable, a working directory, and a file with a user
/// xattr (pushed once as `t15/save:1` and pulled by the user).
fn settings_image(tb: &Testbed) -> &'static str {
    static PUSHED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    PUSHED.get_or_init(|| {
        ok(&tb.root(
            r#"set -euo pipefail
W=$(mktemp -d /tmp/t15-save.XXXXXX); trap 'rm -rf "$W"' EXIT
CERTS=/var/lib/shoal-testbed/tls/skopeo
skopeo copy -q --src-cert-dir "$CERTS" docker://127.0.0.1:5443/shoal/busybox:latest "oci:$W/oci:base"
umoci unpack --image "$W/oci:base" "$W/b" >/dev/null
printf '#!/bin/sh\necho "entrypoint ran, $# args"\nexec "$@"\n' > "$W/b/rootfs/entry.sh"
chmod 755 "$W/b/rootfs/entry.sh"
mkdir -p "$W/b/rootfs/srv/t15" && chmod 1777 "$W/b/rootfs/srv/t15"
echo tagged > "$W/b/rootfs/srv/t15/tagged"
python3 -c 'import os, sys; os.setxattr(sys.argv[1], "user.t15", b"from-image")' "$W/b/rootfs/srv/t15/tagged"
umoci repack --image "$W/oci:save" "$W/b"
umoci config --image "$W/oci:save" --config.entrypoint /entry.sh --config.env T15_ENV=from-image --config.workingdir /srv/t15
skopeo copy -q --dest-cert-dir "$CERTS" "oci:$W/oci:save" docker://127.0.0.1:5443/t15/save:1
"#,
        ));
        ok(&tb.user("shoal pull -q 127.0.0.1:5443/t15/save:1"));
    });
    "127.0.0.1:5443/t15/save:1"
}

/// The xattrs of `member` in the squashfs file `sqfs` (read as the user
/// through sqfs2tar's PAX records), as `NAME=VALUE` lines.
fn xattrs_in(tb: &Testbed, sqfs: &str, member: &str) -> String {
    ok(&tb.user(&format!(
        "sqfs2tar {sqfs} | python3 -c 'import sys, tarfile\n\
         for m in tarfile.open(fileobj=sys.stdin.buffer, mode=\"r|\"):\n    \
             if m.name.strip(\"/\") == sys.argv[1]:\n        \
                 [print(k[len(\"SCHILY.xattr.\"):] + \"=\" + v) for k, v in sorted(m.pax_headers.items()) if k.startswith(\"SCHILY.xattr.\")]' {member}"
    )))
}

#[test]
fn shoal_run_save_keeps_the_run_settings_and_xattrs() {
    let tb = slurm();
    let image = settings_image(tb);
    let dir = tb.user_tempdir("shoal-run-save");
    let d = dir.display();
    // From a cwd not visible inside (/), the command runs where the image
    // says, with its variable. (As the user, unmapped: the image's
    // directories are nobody's, so the change is a new directory.)
    let out = tb.user(&format!(
        "cd / && shoal run --save {d}/run.sqsh {image} sh -c 'echo \"[$T15_ENV] $(pwd)\"; mkdir /opt && echo made > /opt/made'"
    ));
    let stdout = ok(&out);
    assert_eq!(stdout.trim(), "[from-image] /srv/t15");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("saved the container to {d}/run.sqsh")), "{out:?}");
    assert_eq!(ok(&tb.user(&format!("ls -A {d}"))).trim(), "run.sqsh", "only the saved file is left");
    // The saved file runs again with the image's Env, Entrypoint and
    // WorkingDir, by `shoal run` and by the plugin (whose tasks, as
    // pyxis's, start in Slurm's working directory, whatever the image's).
    let cmd = r#"sh -c 'echo "[$T15_ENV] $(pwd)"; cat /opt/made /srv/t15/tagged'"#;
    let out = ok(&tb.user(&format!("cd / && shoal run --entrypoint {d}/run.sqsh {cmd}")));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["entrypoint ran, 3 args", "[from-image] /srv/t15", "made", "tagged"], "{out}");
    let out = ok(&tb.user(&format!("cd / && srun -N1 --container-image={d}/run.sqsh --container-entrypoint {cmd}")));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["entrypoint ran, 3 args", "[from-image] /", "made", "tagged"], "{out}");
    // The image's xattrs were saved with it.
    assert_eq!(xattrs_in(tb, &format!("{d}/run.sqsh"), "srv/t15/tagged").trim(), "user.t15=from-image");
    // A PATH the user cannot write is refused before the command runs.
    let out = tb.user(&format!("shoal run --save /t15-cannot.sqsh {image} echo command-ran"));
    let err = fails(&out);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("command-ran"), "{err}");
    assert!(err.contains("--save=/t15-cannot.sqsh") && err.contains("nothing was run"), "{err}");
}

#[test]
fn remap_root_in_a_writable_container_writes_the_image_s_tree() {
    let tb = slurm();
    let dir = tb.user_tempdir("pyxis-remap-dpkg");
    let d = dir.display();
    let uid = ok(&tb.user("id -u")).trim().to_string();
    // As uid 0 inside: create, chown to 0, replace by rename and remove
    // anywhere in the image's tree, and install a package with dpkg: the
    // image is served by Shoal's image server with every file the user's,
    // which is root inside (issue 15); and with apt-get, which would drop
    // to its `_apt` user (unmapped here) unless told not to.
    let out = ok(&tb.user(&format!(
        "srun -N1 --container-image={MPICH} --container-writable --container-remap-root --container-mounts={d}:/out sh -ec '\
         id -u; \
         echo new > /usr/local/bin/t15-tool; chown 0:0 /usr/local/bin/t15-tool; stat -c %u:%g /usr/local/bin/t15-tool; \
         mkdir -p /var/lib/t15; echo x > /var/lib/t15/f; echo var-lib-ok; \
         echo replaced > /etc/.t15-new; mv /etc/.t15-new /etc/debian_version; cat /etc/debian_version; \
         rm /usr/bin/tac; test ! -e /usr/bin/tac && echo removed-root-file; \
         stat -c %u:%g /usr/bin/env /var/lib/dpkg/status; \
         mkdir -p /tmp/p/DEBIAN /tmp/p/usr/share/t15; \
         printf \"Package: t15-test\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nDescription: t\\n\" > /tmp/p/DEBIAN/control; \
         echo hi > /tmp/p/usr/share/t15/hi; \
         dpkg-deb --root-owner-group --build /tmp/p /tmp/t15.deb >/dev/null; \
         dpkg -i /tmp/t15.deb >/dev/null 2>/tmp/err || {{ echo dpkg-failed; cat /tmp/err; }}; \
         dpkg-query -W -f=\"\\${{Status}}\\n\" t15-test; cat /usr/share/t15/hi; \
         sed -i s/t15-test/t15-apt/ /tmp/p/DEBIAN/control; mv /tmp/p/usr/share/t15 /tmp/p/usr/share/t15-apt; dpkg-deb --root-owner-group --build /tmp/p /tmp/t15-apt.deb >/dev/null; \
         apt-get install -y -q /tmp/t15-apt.deb >/tmp/aerr 2>&1 || {{ echo apt-failed; cat /tmp/aerr; }}; \
         dpkg-query -W -f=\"\\${{Status}}\\n\" t15-apt; touch /out/made-inside'"
    )));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0", "0:0", "var-lib-ok", "replaced", "removed-root-file", "0:0", "0:0", "install ok installed", "hi", "install ok installed"],
        "{out}"
    );
    assert_eq!(ok(&tb.root(&format!("stat -c %u {d}/made-inside"))).trim(), uid, "a file made inside is the user's outside");
    // The step's image server (Shoal's, as the user) went with the step.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ok(&tb.root(&format!("pgrep -u {uid} -a 'shoal-fuse|squashfuse' || true")));
        if left.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "image servers left: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn global_scope_named_containers_outlive_the_job() {
    let tb = slurm();
    // The site's scope, for this test only: the test bed's config with
    // `container_scope = "global"`, given to the plugin and the epilog by
    // the same path (SHOAL_CONFIG is not read by slurmstepd).
    let conf = "/etc/shoal/shoal.toml";
    let saved = format!("/tmp/t15-shoal.toml.{}", std::process::id());
    ok(&tb.root(&format!(
        "cp -p {conf} {saved} && grep -q '^container_scope' {conf} && sed -i 's/^container_scope.*/container_scope = \"global\"/' {conf} \
         || sed -i 's/^\\[slurm\\]$/[slurm]\\ncontainer_scope = \"global\"/' {conf}; grep -n container_scope {conf}"
    )));
    let name = format!("g{}", std::process::id());
    let uid = ok(&tb.user("id -u")).trim().to_string();
    let run = || -> (String, String, String) {
        let first = tb.user(&format!(
            "srun -N1 -w n2 --container-image={BUSYBOX_PYXIS} --container-name={name} sh -c 'mkdir -p /opt && echo from-job-$SLURM_JOB_ID > /opt/g'"
        ));
        let second = tb.user(&format!("srun -N1 -w n2 --container-name={name} sh -c 'cat /opt/g; echo job-$SLURM_JOB_ID'"));
        let other_node = tb.user(&format!("srun -N1 -w n3 --container-name={name} cat /opt/g"));
        (ok(&first), ok(&second), String::from_utf8_lossy(&other_node.stderr).into_owned())
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    let layer = ok(&tb.root(&format!("ls -d {CONTAINERS}/n2/user-{uid}/name-{name} 2>&1 || true")));
    ok(&tb.root(&format!("cp -p {saved} {conf} && rm -f {saved} && rm -rf {CONTAINERS}/n2/user-{uid}/name-{name} && (rmdir {CONTAINERS}/n2/user-{uid} 2>/dev/null || true)")));
    let (_, second, other_node) = result.unwrap();
    // A later job (each srun is a job of its own) sees the first one's file.
    let lines: Vec<&str> = second.lines().collect();
    assert!(lines.len() == 2 && lines[0].starts_with("from-job-") && lines[0] != format!("from-{}", lines[1]), "{second}");
    assert!(other_node.contains("does not exist on node n3"), "{other_node}");
    assert!(layer.contains(&format!("user-{uid}/name-{name}")) && !layer.contains("No such"), "{layer}");
}
