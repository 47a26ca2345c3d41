//! `shoal abi-check`: the per-library ABI decisions on real ELF files, as
//! the unprivileged user. Libraries are built here with gcc (`-soname`,
//! version scripts), images are trees assembled from the host's own Debian
//! glibc and `ldconfig` and packed with mksquashfs, and one case checks the
//! host's real MPICH.

mod support;

use serde_json::Value;
use support::{fails, ok, testbed, Testbed};

/// Bash helpers shared with the other ELF tests: `mklib`, `base`, `sqfs`.
const HELPERS: &str = include_str!("support/elf-helpers.sh");

struct Case {
    tb: &'static Testbed,
    dir: std::path::PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let tb = testbed();
        let dir = tb.user_tempdir(&format!("abi-{name}"));
        Case { tb, dir }
    }

    /// Runs `script` as the user with the helpers, `$T` and `$SHOAL` set.
    fn user(&self, script: &str) -> std::process::Output {
        self.tb.user(&format!(
            "T={}; SHOAL={}; {HELPERS}\ncd \"$T\"\n{script}",
            self.dir.display(),
            self.tb.shoal().display()
        ))
    }

    /// `shoal --config $T/shoal.toml abi-check ARGS` as the user.
    fn abi_check(&self, args: &str) -> std::process::Output {
        self.user(&format!(
            "\"$SHOAL\" --config \"$T/shoal.toml\" abi-check {args}"
        ))
    }

    fn json(&self, args: &str) -> Value {
        let out = ok(&self.abi_check(&format!("{args} --json")));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}"))
    }
}

/// Rows of the decision table for `name`.
fn rows<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == name)
        .collect()
}

fn steps(v: &Value) -> &Vec<Value> {
    v["plan"]["steps"].as_array().unwrap()
}

fn bind_targets(v: &Value) -> Vec<String> {
    steps(v)
        .iter()
        .filter(|s| s["step"] == "bind")
        .map(|s| s["target"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn major_mismatch_is_refused_naming_both_files() {
    let c = Case::new("major");
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libfoo.so.1.5.0 libfoo.so.1
        mklib host libfoo.so.2.0.0 libfoo.so.2
        sqfs img img.sqfs
        printf '[modules.foo]\nlibraries = ["%s/host/libfoo.so.2"]\n' "$T" > shoal.toml"#,
    ));
    let out = c.abi_check("img.sqfs --module foo");
    let err = fails(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("REFUSE"), "{table}");
    for says in [
        "image library /usr/lib/x86_64-linux-gnu/libfoo.so.1 (libfoo.so.1)",
        "host/libfoo.so.2.0.0 (libfoo.so.2)",
        "different SONAME major",
    ] {
        assert!(err.contains(says), "{says:?} missing in:\n{err}");
    }
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn openmpi_image_with_the_mpich_module_is_refused() {
    let c = Case::new("openmpi");
    // Host: Debian's MPICH layout (libmpich.so.12, known to MPICH's ABI as
    // libmpi.so.12); image: Open MPI's libmpi.so.40.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libmpi.so.40.30.1 libmpi.so.40
        mklib img/usr/lib/$MA libopen-pal.so.40.30.1 libopen-pal.so.40
        mklib host libmpich.so.12.1.0 libmpich.so.12
        sqfs img img.sqfs
        cat > shoal.toml <<EOF
[modules.mpich]
libraries = ["$T/host/libmpich.so.12*"]
aliases = { "libmpi.so.12" = "$T/host/libmpich.so.12" }
EOF"#,
    ));
    let err = fails(&c.abi_check("img.sqfs --module=mpich"));
    for says in [
        "cannot take module mpich",
        "image library /usr/lib/x86_64-linux-gnu/libmpi.so.40 (libmpi.so.40)",
        "host/libmpich.so.12.1.0 (libmpi.so.12, listed by the module for libmpich.so.12)",
        "different SONAME major",
    ] {
        assert!(err.contains(says), "{says:?} missing in:\n{err}");
    }
    // The same module and an MPICH image built from source (libmpi.so.12):
    // the host's libmpich is bound over the image's libmpi.
    ok(&c.user(
        r#"base img2
        mklib img2/usr/lib/$MA libmpi.so.12.0.5 libmpi.so.12
        sqfs img2 img2.sqfs"#,
    ));
    let v = c.json("img2.sqfs --module=mpich");
    let alias = rows(&v, "libmpi.so.12");
    assert_eq!(alias.len(), 1, "{v:#}");
    assert_eq!(alias[0]["action"], "replace");
    assert_eq!(
        alias[0]["image"],
        "/usr/lib/x86_64-linux-gnu/libmpi.so.12.0.5"
    );
    assert!(bind_targets(&v).contains(&"/usr/lib/x86_64-linux-gnu/libmpi.so.12.0.5".to_string()));
}

#[test]
fn host_minor_older_is_flagged_when_relaxed_and_refused_when_strict() {
    let c = Case::new("minor");
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libbar.so.1.3.0 libbar.so.1
        mklib host libbar.so.1.1.0 libbar.so.1
        sqfs img img.sqfs
        printf '[modules.bar]\nlibraries = ["%s/host/libbar.so.1"]\n' "$T" > shoal.toml
        printf '[injection]\nabi = "strict"\n' > strict.toml
        cat shoal.toml >> strict.toml"#,
    ));
    let relaxed = ok(&c.abi_check("img.sqfs --module bar"));
    assert!(relaxed.contains("replace (warning)"), "{relaxed}");
    assert!(
        relaxed.contains("host minor 1 is older than image minor 3"),
        "{relaxed}"
    );
    let v = c.json("img.sqfs --module bar");
    assert_eq!(rows(&v, "libbar.so.1")[0]["warning"], true);
    assert_eq!(rows(&v, "libbar.so.1")[0]["host_version"], "1.1.0");
    assert_eq!(rows(&v, "libbar.so.1")[0]["image_version"], "1.3.0");

    let err = fails(&c.user(r#""$SHOAL" --config strict.toml abi-check img.sqfs --module bar"#));
    assert!(
        err.contains("strict ABI mode needs equal minors; host has 1, image has 3"),
        "{err}"
    );
    assert!(
        err.contains("libbar.so.1.1.0")
            && err.contains("/usr/lib/x86_64-linux-gnu/libbar.so.1.3.0"),
        "{err}"
    );
}

#[test]
fn newer_host_minor_is_bound_over_every_copy_the_loader_can_reach() {
    let c = Case::new("replace");
    // One copy in the multiarch directory (reached through the /lib link of
    // merged /usr), another in /opt/app/lib named by ld.so.conf.d, a third
    // in a directory only the image's ld.so.cache names, a fourth in a
    // program's RUNPATH: all are covered, at their real files.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libbar.so.1.3.0 libbar.so.1
        mklib img/opt/app/lib libbar.so.1.2.0 libbar.so.1
        echo /opt/app/lib > img/etc/ld.so.conf.d/app.conf
        # A third copy only the image's ld.so.cache knows about.
        mklib img/opt/cached/lib libbar.so.1.1.0 libbar.so.1
        echo /opt/cached/lib > img/etc/ld.so.conf.d/cached.conf
        unshare -r /usr/sbin/chroot img /sbin/ldconfig
        rm img/etc/ld.so.conf.d/cached.conf
        # A fourth only a program's RUNPATH names ($ORIGIN-relative).
        mklib img/opt/rpath/lib libbar.so.1.0.1 libbar.so.1
        echo 'int f_libbar_so_1_0_1(void); int main(void){return f_libbar_so_1_0_1() - 1;}' > app.c
        gcc -o img/usr/bin/app app.c img/opt/rpath/lib/libbar.so.1.0.1 -Wl,-rpath,'$ORIGIN/../../opt/rpath/lib'
        mklib host libbar.so.1.4.2 libbar.so.1
        sqfs img img.sqfs
        printf '[modules.bar]\nlibraries = ["%s/host/libbar.so.1*"]\n' "$T" > shoal.toml"#,
    ));
    let v = c.json("img.sqfs --module bar");
    let r = rows(&v, "libbar.so.1");
    assert_eq!(r.len(), 3, "{v:#}");
    assert!(
        bind_targets(&v).contains(&"/opt/cached/lib/libbar.so.1.1.0".into()),
        "the copy known only to ld.so.cache: {v:#}"
    );
    assert!(
        r.iter()
            .all(|r| r["action"] == "replace" && r["warning"] == false),
        "{v:#}"
    );
    let targets = bind_targets(&v);
    assert!(
        targets.contains(&"/usr/lib/x86_64-linux-gnu/libbar.so.1.3.0".into()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"/opt/app/lib/libbar.so.1.2.0".into()),
        "{targets:?}"
    );
    let bind = steps(&v).iter().find(|s| s["step"] == "bind").unwrap();
    assert!(
        bind["source"]
            .as_str()
            .unwrap()
            .ends_with("/host/libbar.so.1.4.2"),
        "{bind}"
    );
    assert_eq!(
        (&bind["read_only"], &bind["nosuid"], &bind["nodev"]),
        (&true.into(), &true.into(), &true.into())
    );
    // Nothing is added, so no tmpfs, loader cache or ldconfig run.
    assert!(steps(&v).iter().all(|s| s["step"] == "bind"), "{v:#}");
    assert!(!bind_targets(&v).iter().any(|t| t.starts_with("/opt/rpath")));
    let with_program = c.json("img.sqfs --module bar --program /bin/app");
    assert_eq!(
        rows(&with_program, "libbar.so.1").len(),
        4,
        "{with_program:#}"
    );
    assert!(bind_targets(&with_program).contains(&"/opt/rpath/lib/libbar.so.1.0.1".into()));
    // Strict mode: 4 vs 3 is refused too.
    ok(&c.user(r#"sed -i '1i [injection]\nabi = "strict"' shoal.toml"#));
    let err = fails(&c.abi_check("img.sqfs --module bar"));
    assert!(err.contains("host has 4, image has 3"), "{err}");
    // The same tree, unpacked, gives the same answer.
    assert!(fails(&c.abi_check("img --module bar")).contains("host has 4, image has 3"));
}

#[test]
fn image_library_with_a_newer_symbol_version_is_not_replaced() {
    let c = Case::new("verdef");
    // File names say the host is newer; the version definitions say the
    // image's library has BAR_1.2, which the host's lacks.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libbar.so.1.2.0 libbar.so.1 'BAR_1.0 { global: a; local: *; }; BAR_1.2 { global: b; } BAR_1.0;' 'int a(void){return 1;} int b(void){return 2;}'
        mklib host libbar.so.1.5.0 libbar.so.1 'BAR_1.0 { global: a; local: *; };' 'int a(void){return 1;}'
        sqfs img img.sqfs
        printf '[modules.bar]\nlibraries = ["%s/host/libbar.so.1"]\n' "$T" > shoal.toml"#,
    ));
    let err = fails(&c.abi_check("img.sqfs --module bar"));
    assert!(
        err.contains("defines symbol version BAR_1.2 that host"),
        "{err}"
    );
    assert!(
        err.contains("/usr/lib/x86_64-linux-gnu/libbar.so.1.2.0"),
        "{err}"
    );
}

#[test]
fn missing_glibc_symbol_version_is_refused_naming_it() {
    let c = Case::new("glibc");
    // The host library calls closefrom, GLIBC_2.34. The old image's C
    // library is a stand-in that defines GLIBC_2.2.5 .. GLIBC_2.17 only.
    ok(&c.user(
        r#"mkdir -p old/usr/lib/$MA old/etc
        ln -s usr/lib old/lib
        mklib old/usr/lib/$MA libc.so.6 libc.so.6 'GLIBC_2.2.5 { global: g225; local: *; }; GLIBC_2.3 { global: g23; } GLIBC_2.2.5; GLIBC_2.17 { global: g217; } GLIBC_2.3;' 'int g225, g23, g217;' -nostdlib
        mklib host libnew.so.1.0.0 libnew.so.1 '' '#include <unistd.h>
void close_all(void) { closefrom(3); }'
        sqfs old old.sqfs
        base cur && sqfs cur cur.sqfs
        printf '[modules.new]\nlibraries = ["%s/host/libnew.so.1.0.0"]\n' "$T" > shoal.toml
        objdump -T host/libnew.so.1.0.0 | grep -q 'GLIBC_2.34.*closefrom'"#,
    ));
    let out = c.abi_check("old.sqfs --module new");
    let err = fails(&out);
    for says in [
        "host/libnew.so.1.0.0 (libnew.so.1) needs GLIBC_2.34 from libc.so.6",
        "the image's /usr/lib/x86_64-linux-gnu/libc.so.6 defines only up to GLIBC_2.17",
        "glibc is older",
    ] {
        assert!(err.contains(says), "{says:?} missing in:\n{err}");
    }
    assert_eq!(err.matches("GLIBC_2.34").count(), 1, "said once: {err}");
    // glibc itself is the image's, refused or not.
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("libc.so.6") && l.contains("use image")));
    // The same library and an image with the host's own glibc: accepted,
    // and glibc itself is never injected.
    let v = c.json("cur.sqfs --module new");
    let libc = rows(&v, "libc.so.6");
    assert_eq!(libc[0]["action"], "use_image", "{v:#}");
    assert_eq!(libc[0]["kind"], "runtime");
    assert!(
        bind_targets(&v).iter().all(|t| !t.contains("libc.so")),
        "{v:#}"
    );
}

#[test]
fn dependency_is_brought_in_and_the_plan_works_with_the_images_loader() {
    let c = Case::new("dep");
    // Host libtop.so.1 needs libdep.so.3 (next to it). The image has an
    // older libtop, a libdep of another major (left alone), and a program
    // linked against libtop.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libdep.so.2.0.0 libdep.so.2
        mklib img/usr/lib/$MA libtop.so.1.0.0 libtop.so.1 '' 'int top(void){return 1;}'
        printf '#include <stdio.h>\nint top(void);\nint main(void){printf("top=%%d\\n", top());return 0;}\n' > app.c
        gcc -o img/usr/bin/app app.c -Limg/usr/lib/$MA -l:libtop.so.1
        mklib host libdep.so.3.1.0 libdep.so.3 '' 'int dep(void){return 42;}'
        mklib host libtop.so.1.2.0 libtop.so.1 '' 'int dep(void); int top(void){return dep();}' host/libdep.so.3.1.0
        sqfs img img.sqfs
        printf '[modules.top]\nlibraries = ["%s/host/libtop.so.1"]\n' "$T" > shoal.toml"#,
    ));
    let table = ok(&c.abi_check("img.sqfs --module top"));
    assert!(table.contains("libdep.so.3 (for libtop.so.1)"), "{table}");
    let v = c.json("img.sqfs --module top");
    assert_eq!(rows(&v, "libtop.so.1")[0]["action"], "replace");
    let dep = rows(&v, "libdep.so.3");
    assert_eq!(dep[0]["action"], "add", "{v:#}");
    assert_eq!(dep[0]["needed_by"], "libtop.so.1");
    assert!(dep[0]["reason"]
        .as_str()
        .unwrap()
        .contains("other major (/usr/lib/x86_64-linux-gnu/libdep.so.2) stays"));
    let kinds: Vec<&str> = steps(&v)
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "tmpfs",
            "bind",
            "bind",
            "write_file",
            "run_in_container",
            "bind_within"
        ],
        "{v:#}"
    );
    assert!(bind_targets(&v).contains(&"/.shoal/lib/libdep.so.3".into()));

    // Carry the plan out on a copy of the tree (a copy stands in for each
    // bind; the launcher mounts instead) and run the image's program with
    // the image's own loader, ldconfig and generated cache.
    let mut script = String::from("rm -rf run && cp -a img run\n");
    for s in steps(&v) {
        let line = match s["step"].as_str().unwrap() {
            "tmpfs" => format!("mkdir -p run{}", s["target"].as_str().unwrap()),
            "bind" => format!(
                "mkdir -p \"$(dirname run{t})\" && rm -f run{t} && cp {} run{t}",
                s["source"].as_str().unwrap(),
                t = s["target"].as_str().unwrap()
            ),
            "write_file" => format!(
                "mkdir -p \"$(dirname run{p})\" && printf '%s' '{}' > run{p}",
                s["contents"].as_str().unwrap(),
                p = s["path"].as_str().unwrap()
            ),
            "run_in_container" => {
                let argv: Vec<&str> = s["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                format!("unshare -r /usr/sbin/chroot run {}", argv.join(" "))
            }
            "bind_within" => format!(
                "cp run{} run{}",
                s["source"].as_str().unwrap(),
                s["target"].as_str().unwrap()
            ),
            other => panic!("unknown step {other}"),
        };
        script.push_str(&line);
        script.push('\n');
    }
    script.push_str("/sbin/ldconfig -p -C run/etc/ld.so.cache | grep libdep.so.3\nunshare -r /usr/sbin/chroot run /usr/bin/app\n");
    let out = ok(&c.user(&script));
    assert!(
        out.contains("libdep.so.3 (libc6,x86-64) => /.shoal/lib/libdep.so.3"),
        "{out}"
    );
    assert!(
        out.contains("top=42"),
        "the host's libtop and libdep did not load:\n{out}"
    );
}

#[test]
fn unrelated_library_sharing_the_name_does_not_abort() {
    let c = Case::new("unrelated");
    // The image has a libbaz.so.1 that is really another library (SONAME
    // libqux.so.1) and a linker script called libbaz.so.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libbaz.so.1 libqux.so.1
        echo 'INPUT(libqux.so.1)' > img/usr/lib/$MA/libbaz.so
        mklib host libbaz.so.1.0.0 libbaz.so.1
        sqfs img img.sqfs
        printf '[modules.baz]\nlibraries = ["%s/host/libbaz.so.1"]\n' "$T" > shoal.toml"#,
    ));
    let v = c.json("img.sqfs --module baz");
    let r = rows(&v, "libbaz.so.1");
    assert_eq!(r[0]["action"], "add", "{v:#}");
    let reason = r[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("ignored, same name but unrelated"),
        "{reason}"
    );
    assert!(
        reason.contains("/usr/lib/x86_64-linux-gnu/libbaz.so.1 (its SONAME is libqux.so.1)"),
        "{reason}"
    );
    assert!(
        reason.contains("/usr/lib/x86_64-linux-gnu/libbaz.so (not an ELF file)"),
        "{reason}"
    );
}

#[test]
fn gpu_module_binds_only_the_jobs_devices_and_renumbers_them() {
    let c = Case::new("gpu");
    // A fake driver: the right SONAMEs behind NVIDIA-style file names.
    ok(&c.user(
        r#"base img
        mklib drv libcuda.so.535.104.05 libcuda.so.1
        mklib drv libnvidia-ml.so.535.104.05 libnvidia-ml.so.1
        mkdir dev
        sqfs img img.sqfs
        cat > shoal.toml <<EOF
[modules.gpu]
libraries = ["$T/drv/libcuda.so.1", "$T/drv/libnvidia-ml.so.1"]
devices = ["$T/dev/nvidiactl", "$T/dev/nvidia-uvm"]
gpu_devices = ["$T/dev/nvidia[0-9]*"]
env = { NVIDIA_DRIVER_CAPABILITIES = "compute,utility" }
EOF"#,
    ));
    // Device nodes only root can make (harmless: they are /dev/null's numbers).
    let dev = c.dir.join("dev");
    ok(&c.tb.root(&format!(
        "cd {} && for n in nvidia0 nvidia1 nvidia2 nvidia3 nvidiactl nvidia-uvm; do mknod $n c 1 3; done",
        dev.display()
    )));
    let v: Value = serde_json::from_str(&ok(&c.user(
        r#"CUDA_VISIBLE_DEVICES=3,1 "$SHOAL" --config shoal.toml abi-check img.sqfs --module gpu --json"#,
    )))
    .unwrap();
    for lib in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        let r = rows(&v, lib);
        assert_eq!(r[0]["action"], "add", "{v:#}");
        assert_eq!(
            r[0]["host_version"],
            "1 (".to_string() + &lib.replace(".so.1", ".so.535.104.05") + ")"
        );
        assert!(bind_targets(&v).contains(&format!("/.shoal/lib/{lib}")));
    }
    let devices: Vec<String> = steps(&v)
        .iter()
        .filter(|s| s["kind"] == "device")
        .map(|s| {
            assert_eq!(
                (&s["nodev"], &s["nosuid"]),
                (&false.into(), &true.into()),
                "{s}"
            );
            s["target"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(devices, ["nvidiactl", "nvidia-uvm", "nvidia1", "nvidia3"]);
    let env = v["plan"]["env"].as_array().unwrap();
    // The job's numbering is kept: the container's /dev is the host's, so
    // CUDA numbers GPUs as on bare metal.
    assert!(
        !env.iter().any(|e| e["name"] == "CUDA_VISIBLE_DEVICES"),
        "{env:?}"
    );
    assert!(env.contains(&serde_json::json!({"op": "set", "name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"})));
    // The table output says the same to a person.
    let text = ok(&c.user(
        r#"CUDA_VISIBLE_DEVICES=3,1 "$SHOAL" --config shoal.toml abi-check img.sqfs --module gpu"#,
    ));
    assert!(!text.contains("CUDA_VISIBLE_DEVICES"), "{text}");
    assert!(
        !text.contains("/dev/nvidia0") && !text.contains("nvidia2 "),
        "{text}"
    );
    // A GPU the node does not have is an error that names it.
    let err = fails(&c.user(
        r#"CUDA_VISIBLE_DEVICES=7 "$SHOAL" --config shoal.toml abi-check img.sqfs --module gpu"#,
    ));
    assert!(
        err.contains("GPU 7 has no device node on this node (have: 0,1,2,3)"),
        "{err}"
    );
}

#[test]
fn host_mpich_against_a_debian_image_with_the_testbed_module() {
    let c = Case::new("mpich");
    // The test bed's own site config (its `mpich` module names the host's
    // real Debian MPICH; the block is commented out until the installed
    // plugin knows `[modules]`, so it is uncommented here) against a Debian
    // tree that carries the same MPICH package files but none of its
    // dependencies.
    let conf = support::repo_root().join("tests/testbed/shoal.toml");
    ok(&c.user(&format!(
        r#"sed -E '/^# --- mpich module \(begin\)/,/^# --- mpich module \(end\)/s/^# (\[|[a-z_]+ = )/\1/' {} > shoal.toml
        grep -q '^\[modules.mpich\]' shoal.toml
        base img
        cp -a /usr/lib/$MA/libmpich.so.12* img/usr/lib/$MA/
        sqfs img img.sqfs"#,
        conf.display()
    )));
    let v = c.json("img.sqfs --module=mpich");
    let mpich = rows(&v, "libmpich.so.12");
    assert_eq!(mpich[0]["action"], "replace", "{v:#}");
    assert_eq!(
        mpich[0]["host"],
        "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2"
    );
    assert_eq!(
        mpich[0]["image"],
        "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2"
    );
    // Its real dependencies come from the host; glibc stays the image's.
    for dep in ["libhwloc.so.15", "libucp.so.0"] {
        assert_eq!(rows(&v, dep)[0]["action"], "add", "{dep}: {v:#}");
    }
    assert_eq!(rows(&v, "libc.so.6")[0]["action"], "use_image");
    // A module program keeps its listed name behind Debian's alternatives
    // link, and goes first on PATH.
    ok(&c.user(r#"printf '[modules.tools]\nbinaries = ["/usr/bin/mpiexec"]\n' >> shoal.toml"#));
    let v = c.json("img.sqfs --module=tools");
    let prog = rows(&v, "mpiexec");
    assert_eq!(prog[0]["kind"], "program", "{v:#}");
    assert_eq!(prog[0]["host"], "/usr/bin/mpiexec.hydra");
    assert!(
        bind_targets(&v).contains(&"/.shoal/bin/mpiexec".into()),
        "{v:#}"
    );
    let path = serde_json::json!({"op": "prepend", "name": "PATH", "entries": ["/.shoal/bin"]});
    assert!(
        v["plan"]["env"].as_array().unwrap().contains(&path),
        "{v:#}"
    );
    // The site's default modules are used when none is named.
    ok(&c.user("sed -i '1i [injection]\\ndefault_modules = [\"mpich\"]' shoal.toml"));
    let table = ok(&c.abi_check("img.sqfs"));
    assert!(table.contains("libmpich.so.12"), "{table}");
    // Unknown modules name the configured ones; `none` checks nothing.
    let err = fails(&c.abi_check("img.sqfs --module=openmpi"));
    assert!(
        err.contains("--module=openmpi: no such module") && err.contains("configured: ") && err.contains("mpich"),
        "{err}"
    );
    assert!(ok(&c.abi_check("img.sqfs --module=none")).contains("no module selected"));
    ok(&c.user(r#""$SHOAL" --config shoal.toml config check"#));
}
