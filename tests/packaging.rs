//! The Debian package an admin installs: built from this build's binaries,
//! with the config files as conffiles and the exact Slurm version pinned.

mod support;

use std::process::Command;

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_holds_plugin_command_config_and_pins_slurm() {
    let target = support::target_dir();
    let profile = target.file_name().unwrap().to_str().unwrap().to_string();
    let out = tempfile::tempdir().unwrap();
    let deb = stdout(
        Command::new("bash")
            .arg(support::repo_root().join("packaging/build-deb.sh"))
            .arg(out.path())
            .env("PROFILE", &profile)
            .env("DEB_FAST", "1")
            .env("CARGO_TARGET_DIR", target.parent().unwrap()),
    );
    let deb = deb.trim();
    let files = stdout(Command::new("dpkg-deb").args(["-c", deb]));
    for f in [
        "./usr/bin/shoal",
        "./usr/lib/shoal/libspank_shoal.so",
        "./etc/shoal/shoal.toml",
        "./etc/slurm/plugstack.conf.d/shoal.conf",
    ] {
        assert!(files.contains(f), "{f} missing from {deb}:\n{files}");
    }
    assert!(files.contains("root/root"), "files must be owned by root:\n{files}");
    let slurm = stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", "libslurm-dev"]));
    let depends = stdout(Command::new("dpkg-deb").args(["-f", deb, "Depends"]));
    assert!(depends.contains(&format!("slurm-client (= {slurm})")), "{depends}");
    let info = stdout(Command::new("dpkg-deb").args(["-I", deb, "conffiles"]));
    assert!(info.contains("/etc/shoal/shoal.toml") && info.contains("/etc/slurm/plugstack.conf.d/shoal.conf"), "{info}");
    // The packaged plugstack line points at the packaged plugin.
    let x = tempfile::tempdir().unwrap();
    stdout(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    let line = std::fs::read_to_string(x.path().join("etc/slurm/plugstack.conf.d/shoal.conf")).unwrap();
    assert!(line.lines().any(|l| l.starts_with("required /usr/lib/shoal/libspank_shoal.so")), "{line}");
    let packaged = std::fs::read(x.path().join("usr/lib/shoal/libspank_shoal.so")).unwrap();
    assert_eq!(packaged, std::fs::read(target.join("libspank_shoal.so")).unwrap());
}
