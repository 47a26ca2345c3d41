//! Host-library injection carried out by `shoal run --module`, as the
//! unprivileged user: the host's MPICH is the library a Debian image loads
//! (proved by device and inode in /proc/self/maps), libraries the image
//! lacks are found through the cache its own `ldconfig` writes, a fake GPU
//! driver gets only the job's device nodes bound, and an Open MPI image is refused in
//! one line before anything runs.

mod support;

use support::{fails, ok, testbed, Testbed};

/// Bash helpers shared with the other ELF tests: `mklib`, `base`, `sqfs`.
const HELPERS: &str = include_str!("support/elf-helpers.sh");

/// The test bed's site config, whose `[modules.mpich]` names the host's
/// Debian MPICH.
fn testbed_config() -> String {
    support::repo_root().join("tests/testbed/shoal.toml").display().to_string()
}

struct Case {
    tb: &'static Testbed,
    dir: std::path::PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let tb = testbed();
        let dir = tb.user_tempdir(&format!("inject-{name}"));
        Case { tb, dir }
    }

    /// `script` as the user with the helpers, `$T`, `$SHOAL` and `$CONF` set.
    fn user(&self, script: &str) -> std::process::Output {
        self.tb.user(&format!(
            "T={}; SHOAL={}; CONF={}; {HELPERS}\ncd \"$T\"\n{script}",
            self.dir.display(),
            self.tb.shoal().display(),
            testbed_config()
        ))
    }
}

/// `(major, minor, inode)` of the first /proc/self/maps line naming `file`.
fn mapped(maps: &str, file: &str) -> (u32, u32, u64) {
    let line = maps
        .lines()
        .find(|l| l.ends_with(file))
        .unwrap_or_else(|| panic!("{file} not mapped:\n{maps}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let (major, minor) = f[3].split_once(':').unwrap();
    (
        u32::from_str_radix(major, 16).unwrap(),
        u32::from_str_radix(minor, 16).unwrap(),
        f[4].parse().unwrap(),
    )
}

/// `(major, minor, inode)` of a host file.
fn host_file(tb: &Testbed, path: &str) -> (u32, u32, u64) {
    let out = ok(&tb.user(&format!("stat -L -c '%Hd %Ld %i' {path}")));
    let f: Vec<&str> = out.split_whitespace().collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
}

const HOST_MPICH: &str = "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2";

#[test]
fn host_mpich_is_the_library_the_debian_mpich_image_loads() {
    let c = Case::new("debian");
    // The shared Debian MPICH image, pulled into the user's own store
    // (a no-op when it is there already).
    let img = ok(&c.user(
        r#"SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem "$SHOAL" --config "$CONF" pull 127.0.0.1:5443/shoal/debian-mpich:12 >&2
        id=$("$SHOAL" --config "$CONF" inspect 127.0.0.1:5443/shoal/debian-mpich:12 | sed -n 's/^image id: *sha256://p')
        f=$HOME/.local/share/shoal/images/sha256/$id/image.sqfs
        test -f "$f" && echo "$f""#,
    ));
    let img = img.trim();
    let probe = r#"python3 -c "import ctypes; ctypes.CDLL('libmpich.so.12'); print(open('/proc/self/maps').read()); print(open('/proc/self/mountinfo').read())""#;

    let out = ok(&c.user(&format!(r#""$SHOAL" --config "$CONF" run --module mpich {img} -- {probe}"#)));
    let host = host_file(c.tb, HOST_MPICH);
    assert_eq!(mapped(&out, "libmpich.so.12.2.2"), host, "the host's file is mapped:\n{out}");
    let mount = out
        .lines()
        .find(|l| l.contains(" /usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2 "))
        .unwrap_or_else(|| panic!("no bind over libmpich:\n{out}"));
    let opts = mount.split_whitespace().nth(5).unwrap();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|o| o == flag), "{flag} missing: {mount}");
    }

    // Without the module the image's own copy (on the image's mount) is loaded.
    let out = ok(&c.user(&format!(r#""$SHOAL" --config "$CONF" run --module none {img} -- {probe}"#)));
    let own = mapped(&out, "libmpich.so.12.2.2");
    assert_ne!((own.0, own.1), (host.0, host.1), "the image's copy lives on another filesystem:\n{out}");

    // The site's default modules apply when none is named; `none` turns them off.
    ok(&c.user(r#"{ printf '[injection]\ndefault_modules = ["mpich"]\n'; cat "$CONF"; } > shoal.toml"#));
    let dry = ok(&c.user(&format!(r#""$SHOAL" --config shoal.toml run --dry-run {img} -- true"#)));
    assert!(dry.contains("libmpich.so.12") && dry.contains("replace"), "decision table:\n{dry}");
    assert!(
        dry.contains(&format!("{HOST_MPICH} <- bind {HOST_MPICH} [ro,nosuid,nodev] (inject: host libmpich.so.12 replaces the image's (mpich))")),
        "{dry}"
    );
    let dry = ok(&c.user(&format!(r#""$SHOAL" --config shoal.toml run --dry-run --module=none {img} -- true"#)));
    assert!(!dry.contains("inject:"), "{dry}");
}

/// `img.sqfs`: MPICH's library but none of its dependencies, and `maps`,
/// a program linked against it that prints its own /proc/self/maps.
fn mpich_app_image(c: &Case) {
    ok(&c.user(
        r#"base img
        cp -a /usr/lib/$MA/libmpich.so.12* img/usr/lib/$MA/
        printf '#include <mpi.h>\n#include <stdio.h>\nint main(void){char v[MPI_MAX_LIBRARY_VERSION_STRING];int n;MPI_Get_library_version(v,&n);FILE*f=fopen("/proc/self/maps","r");int ch;while((ch=fgetc(f))!=EOF)putchar(ch);return 0;}\n' > maps.c
        gcc -I/usr/include/x86_64-linux-gnu/mpich -o img/usr/bin/maps maps.c -lmpich
        sqfs img img.sqfs
        sha256sum img.sqfs > img.sum"#,
    ));
}

#[test]
fn libraries_the_image_lacks_come_through_its_own_ldconfig_cache() {
    let c = Case::new("added");
    mpich_app_image(&c);
    let dry = ok(&c.user(r#""$SHOAL" --config "$CONF" run --dry-run --module mpich img.sqfs -- maps"#));
    for says in [
        "/.shoal <- tmpfs mode=755 [rw,nosuid,nodev]",
        "/.shoal/lib/libhwloc.so.15 <- bind /usr/lib/x86_64-linux-gnu/libhwloc.so.15.6.1 [ro,nosuid,nodev]",
        "setup  1 chown /.shoal to uid",
        "setup  2 write /.shoal/etc/ld.so.conf",
        "setup  3 run [\"/sbin/ldconfig\", \"-X\", \"-f\", \"/.shoal/etc/ld.so.conf\", \"-C\", \"/.shoal/etc/ld.so.cache\"] as the user",
        "setup  4 bind /.shoal/etc/ld.so.cache -> /etc/ld.so.cache [ro,nosuid,nodev]",
    ] {
        assert!(dry.contains(says), "{says:?} missing in:\n{dry}");
    }
    // Without the module the program cannot start: its dependencies are
    // not in the image.
    let err = fails(&c.user(r#""$SHOAL" --config "$CONF" run --module none img.sqfs -- maps"#));
    assert!(err.contains("libhwloc.so.15"), "{err}");

    let out = ok(&c.user(r#""$SHOAL" --config "$CONF" run --module mpich img.sqfs -- maps"#));
    assert_eq!(mapped(&out, "libmpich.so.12.2.2"), host_file(c.tb, HOST_MPICH), "{out}");
    assert_eq!(
        mapped(&out, "/.shoal/lib/libhwloc.so.15"),
        host_file(c.tb, "/usr/lib/x86_64-linux-gnu/libhwloc.so.15"),
        "{out}"
    );
    // The cache was written by the user, and the image file is untouched.
    let out = ok(&c.user(
        r#""$SHOAL" --config "$CONF" run --module mpich img.sqfs -- busybox sh -c 'busybox stat -c "%U %a" /.shoal/etc/ld.so.cache; ldconfig -p | busybox grep -c /.shoal/lib/; busybox grep " /etc/ld.so.cache " /proc/self/mountinfo'
        sha256sum -c --quiet img.sum"#,
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("alice 644"), "{out}");
    assert!(lines.next().unwrap().parse::<u32>().unwrap() >= 5, "host libraries listed in the cache:\n{out}");
    let mount = lines.next().unwrap_or_default();
    assert!(mount.split_whitespace().nth(5).is_some_and(|o| o.starts_with("ro,nosuid,nodev")), "{out}");

    // The setup command must succeed, or nothing runs.
    let out = c.user(
        r#"cp -a img bad && printf '#!/usr/bin/busybox sh\necho cache not written >&2\nexit 3\n' > bad/usr/sbin/ldconfig
        sqfs bad bad.sqfs
        "$SHOAL" --config "$CONF" run --module mpich bad.sqfs -- busybox touch "$T/ran""#,
    );
    let err = fails(&out);
    assert!(
        err.contains("cannot run /sbin/ldconfig -X -f /.shoal/etc/ld.so.conf -C /.shoal/etc/ld.so.cache")
            && err.contains("exit status: 3; it printed: cache not written"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(!c.dir.join("ran").exists(), "nothing ran");
}

#[test]
fn root_for_the_user_reads_the_image_and_runs_ldconfig_as_the_user() {
    // Privileged mode, as the plugin uses it (slurmstepd is root).
    let c = Case::new("privileged");
    mpich_app_image(&c);
    let run = |args: &str| {
        c.tb.root(&format!(
            "cd {} && {} --config {} run --user {} {args}",
            c.dir.display(),
            c.tb.shoal().display(),
            testbed_config(),
            c.tb.user
        ))
    };
    let out = ok(&run(
        r#"--module mpich img.sqfs -- busybox sh -c 'busybox stat -c "%U" /.shoal/etc /.shoal/etc/ld.so.cache; busybox grep NoNewPrivs /proc/self/status; maps'"#,
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(c.tb.user.as_str()), "{out}");
    assert_eq!(lines.next(), Some(c.tb.user.as_str()), "{out}");
    assert_eq!(lines.next().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["NoNewPrivs:", "1"]));
    assert_eq!(mapped(&out, "/.shoal/lib/libhwloc.so.15"), host_file(c.tb, "/usr/lib/x86_64-linux-gnu/libhwloc.so.15"));
    // An image root can read but the user cannot is refused: the check
    // opens it with the user's credentials.
    ok(&c.tb.root(&format!("cd {} && cp img.sqfs root-only.sqfs && chmod 600 root-only.sqfs", c.dir.display())));
    let err = fails(&run("--module mpich root-only.sqfs -- maps"));
    assert!(err.contains("root-only.sqfs") && err.contains("Permission denied"), "{err}");
}

/// Prints, inside: `CUDA_VISIBLE_DEVICES`, then the libcuda and
/// libnvidia-ml lines of /proc/self/maps after the loader found them.
const GPU_PROBE: &str = r#"#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    printf("cuda %s\n", v ? v : "(unset)");
    if (!dlopen("libcuda.so.1", RTLD_NOW) || !dlopen("libnvidia-ml.so.1", RTLD_NOW)) { printf("dlopen %s\n", dlerror()); return 1; }
    char line[4096];
    FILE *f = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, f))
        if (strstr(line, "libcuda") || strstr(line, "libnvidia-ml")) fputs(line, stdout);
    return 0;
}
"#;

#[test]
fn gpu_module_shows_only_the_jobs_gpus_renumbered_with_the_hosts_driver() {
    let c = Case::new("gpu");
    ok(&c.user(&format!(
        r#"base img
        mklib drv libcuda.so.535.104.05 libcuda.so.1
        mklib drv libnvidia-ml.so.535.104.05 libnvidia-ml.so.1
        cat > probe.c <<'EOF'
{GPU_PROBE}EOF
        gcc -o img/usr/bin/gpuprobe probe.c -ldl
        sqfs img img.sqfs
        mkdir -p dev
        cat > shoal.toml <<EOF
[modules.gpu]
libraries = ["$T/drv/libcuda.so.1", "$T/drv/libnvidia-ml.so.1"]
devices = ["$T/dev/nvidiactl:/dev"]
gpu_devices = ["$T/dev/nvidia[0-9]*:/dev"]
EOF"#
    )));
    // NVIDIA's numbers (major 195, control node 255); only root makes nodes.
    ok(&c.tb.root(&format!(
        "cd {}/dev && for i in 0 1 2 3; do mknod -m 666 nvidia$i c 195 $i; done && mknod -m 666 nvidiactl c 195 255",
        c.dir.display()
    )));
    let dry = ok(&c.user(
        r#"CUDA_VISIBLE_DEVICES=3,1 "$SHOAL" --config shoal.toml run --dry-run --module gpu img.sqfs -- gpuprobe"#,
    ));
    let dev = c.dir.join("dev");
    let bound: Vec<&str> = dry.lines().filter(|l| l.contains("device of module gpu")).collect();
    assert_eq!(bound.len(), 3, "{dry}");
    for (n, line) in ["nvidiactl", "nvidia1", "nvidia3"].iter().zip(&bound) {
        assert!(line.contains(&format!("/dev/{n} <- bind {} [rw]", dev.join(n).display())), "{line}");
    }
    assert!(dry.contains("mount  1 /dev <- tmpfs mode=755 [rw,nosuid,nodev,noexec] (system)"), "{dry}");
    assert!(dry.contains("env      CUDA_VISIBLE_DEVICES=1,0"), "{dry}");
    assert!(dry.contains("/.shoal/lib/libcuda.so.1 <- bind"), "{dry}");

    // As the user (user namespace), and as root for the user (the
    // plugin's mode): the same /dev, numbering and driver.
    let probe = r#"gpuprobe; busybox ls /dev; for n in /dev/nvidia*; do busybox stat -c "%n %t:%T" $n; done"#;
    let as_user = c.user(&format!(
        r#"CUDA_VISIBLE_DEVICES=3,1 "$SHOAL" --config shoal.toml run --module gpu img.sqfs -- busybox sh -c '{probe}'"#
    ));
    let as_root = c.tb.root(&format!(
        "cd {} && CUDA_VISIBLE_DEVICES=3,1 {} --config shoal.toml run --user {} --module gpu img.sqfs -- busybox sh -c '{probe}'",
        c.dir.display(),
        c.tb.shoal().display(),
        c.tb.user
    ));
    let cuda = host_file(c.tb, &c.dir.join("drv/libcuda.so.535.104.05").display().to_string());
    let nvml = host_file(c.tb, &c.dir.join("drv/libnvidia-ml.so.535.104.05").display().to_string());
    for out in [as_user, as_root] {
        let out = ok(&out);
        assert_eq!(out.lines().next(), Some("cuda 1,0"), "{out}");
        // The loader found the host's files (device and inode).
        assert_eq!(mapped(&out, "/.shoal/lib/libcuda.so.1"), cuda, "{out}");
        assert_eq!(mapped(&out, "/.shoal/lib/libnvidia-ml.so.1"), nvml, "{out}");
        let mut names: Vec<&str> = out.lines().filter(|l| !l.contains(' ') && !l.is_empty()).collect();
        names.retain(|n| *n != "mqueue"); // only where the host has one
        assert_eq!(
            names,
            [
                "fd", "full", "null", "nvidia1", "nvidia3", "nvidiactl", "ptmx", "pts", "random", "shm", "stderr",
                "stdin", "stdout", "tty", "urandom", "zero"
            ],
            "only the basic nodes and the job's GPUs, no vda, fuse or loop:\n{out}"
        );
        for want in ["/dev/nvidia1 c3:1", "/dev/nvidia3 c3:3", "/dev/nvidiactl c3:ff"] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
    }

    // Without CUDA_VISIBLE_DEVICES every GPU node is bound and the
    // variable stays unset.
    let out = ok(&c.user(
        r#"env -u CUDA_VISIBLE_DEVICES "$SHOAL" --config shoal.toml run --module gpu img.sqfs -- busybox sh -c 'echo ${CUDA_VISIBLE_DEVICES:-unset}; busybox ls /dev | busybox grep nvidia'"#,
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["unset", "nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"], "{out}");
}

#[test]
fn gpu_and_device_mistakes_are_one_line_naming_the_fix() {
    let c = Case::new("gpu-errors");
    ok(&c.user(
        r#"base img
        sqfs img img.sqfs
        mkdir -p dev
        cat > shoal.toml <<EOF
[modules.gpu]
gpu_devices = ["$T/dev/nvidia[0-9]*:/dev"]
EOF
        cat > missing.toml <<EOF
[modules.gpu]
devices = ["$T/dev/nvidia-uvm"]
EOF
        cat > bad.toml <<EOF
[modules.gpu]
gpu_devices = ["$T/dev/nvidia[0-9]*:dev"]
EOF"#,
    ));
    ok(&c.tb.root(&format!("cd {}/dev && mknod -m 666 nvidia0 c 195 0 && mknod -m 666 nvidia1 c 195 1", c.dir.display())));
    let run = |conf: &str, cuda: &str| {
        c.user(&format!(
            r#"CUDA_VISIBLE_DEVICES={cuda} "$SHOAL" --config {conf} run --module gpu img.sqfs -- busybox touch "$T/ran""#
        ))
    };
    let err = fails(&run("shoal.toml", "1,7"));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CUDA_VISIBLE_DEVICES=1,7: GPU 7 has no device node on this node (have: 0,1)"), "{err}");
    assert!(err.contains("add its node to the module's gpu_devices"), "{err}");
    let err = fails(&run("missing.toml", "0"));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("[modules.gpu] devices") && err.contains("nvidia-uvm") && err.contains("matches no file on this node; fix the site config"),
        "{err}"
    );
    let err = fails(&run("bad.toml", "0"));
    assert!(err.contains("modules.gpu.gpu_devices") && err.contains("line 2") && err.contains("HOST_GLOB:/dev"), "{err}");
    assert!(!c.dir.join("ran").exists(), "nothing ran");
}

#[test]
fn the_programs_runpath_copy_is_covered_when_run_by_name() {
    let c = Case::new("runpath");
    // libbar twice in the image: in the multiarch directory, and a copy only
    // the program's RUNPATH names; the program prints its own maps.
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libbar.so.1.3.0 libbar.so.1
        mklib img/opt/rpath/lib libbar.so.1.0.1 libbar.so.1
        printf '#include <stdio.h>\nint f_libbar_so_1_0_1(void);\nint main(void){FILE*f=fopen("/proc/self/maps","r");int ch;while((ch=fgetc(f))!=EOF)putchar(ch);return f_libbar_so_1_0_1()-1;}\n' > app.c
        gcc -o img/usr/bin/app app.c img/opt/rpath/lib/libbar.so.1.0.1 -Wl,-rpath,'$ORIGIN/../../opt/rpath/lib'
        mklib host libbar.so.1.4.2 libbar.so.1 '' 'int f_libbar_so_1_0_1(void) { return 1; }'
        sqfs img img.sqfs
        printf '[modules.bar]\nlibraries = ["%s/host/libbar.so.1*"]\n' "$T" > shoal.toml"#,
    ));
    let dry = |cmd: &str| ok(&c.user(&format!(r#""$SHOAL" --config shoal.toml run --dry-run --module bar img.sqfs -- {cmd}"#)));
    let covered = "/opt/rpath/lib/libbar.so.1.0.1 <- bind";
    // Found on the image's PATH, or named absolutely: its RUNPATH copy is covered.
    assert!(dry("app").contains(covered), "{}", dry("app"));
    assert!(dry("/usr/bin/app").contains(covered));
    // Another program (or one that is not an ELF file) leaves it alone.
    assert!(!dry("busybox true").contains(covered));
    let out = ok(&c.user(r#""$SHOAL" --config shoal.toml run --module bar img.sqfs -- app"#));
    assert_eq!(mapped(&out, "/opt/rpath/lib/libbar.so.1.0.1"), host_file(c.tb, &c.dir.join("host/libbar.so.1.4.2").display().to_string()), "{out}");
}

#[test]
fn openmpi_image_is_refused_in_one_line_before_anything_runs() {
    let c = Case::new("openmpi");
    ok(&c.user(
        r#"base img
        mklib img/usr/lib/$MA libmpi.so.40.30.1 libmpi.so.40
        mklib img/usr/lib/$MA libopen-pal.so.40.30.1 libopen-pal.so.40
        sqfs img img.sqfs"#,
    ));
    let out = c.user(r#""$SHOAL" --config "$CONF" run --module=mpich img.sqfs -- busybox touch "$T/ran""#);
    let err = fails(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for says in [
        "cannot take module mpich",
        "image library /usr/lib/x86_64-linux-gnu/libmpi.so.40 (libmpi.so.40)",
        "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2",
        "different SONAME major",
    ] {
        assert!(err.contains(says), "{says:?} missing in: {err}");
    }
    assert!(!c.dir.join("ran").exists(), "nothing ran");
    // The dry run shows the table, then the same refusal.
    let out = c.user(r#""$SHOAL" --config "$CONF" run --dry-run --module=mpich img.sqfs -- true"#);
    let err = fails(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("REFUSE"), "{out:?}");
    assert!(err.contains("cannot take module mpich"), "{err}");
}
