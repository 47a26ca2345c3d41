//! The plugin's build script (top-level build.rs) must stop with a message
//! that names the Debian package to install when Slurm's headers or
//! libclang are missing. Runs the build script binary cargo already built.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The newest compiled build script of the plugin crate.
fn build_script() -> PathBuf {
    let build_dir = support::target_dir().join("build");
    std::fs::read_dir(&build_dir)
        .expect("target build dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("spank-shoal-"))
        .map(|e| e.path().join("build-script-build"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("spank-shoal's build script; run `cargo build --workspace` first")
}

fn run_build_script(env: &[(&str, &str)]) -> Output {
    let out_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(build_script());
    cmd.env("CARGO_MANIFEST_DIR", support::repo_root().join("spank-plugin"))
        .env("OUT_DIR", out_dir.path())
        .env_remove("SLURM_INCLUDE_DIR")
        .env_remove("LIBCLANG_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run build script")
}

#[test]
fn missing_slurm_headers_name_libslurm_dev() {
    let out = run_build_script(&[("SLURM_INCLUDE_DIR", "/nonexistent/slurm")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/slurm/spank.h does not exist"), "{err}");
    assert!(err.contains("apt-get install libslurm-dev"), "{err}");
}

#[test]
fn missing_libclang_names_libclang_dev() {
    let out = run_build_script(&[("LIBCLANG_PATH", "/nonexistent")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install libclang-dev"), "{err}");
    assert!(!err.contains("stack backtrace"), "bindgen's panic leaked:\n{err}");
}

#[test]
fn installed_headers_give_bindings_and_the_version() {
    let out = run_build_script(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = std::fs::read_to_string("/usr/include/slurm/slurm_version.h").unwrap();
    let hex = header
        .lines()
        .find_map(|l| l.strip_prefix("#define SLURM_VERSION_NUMBER"))
        .unwrap()
        .trim()
        .trim_start_matches("0x");
    let want = u32::from_str_radix(hex, 16).unwrap();
    assert!(
        stdout.contains(&format!("cargo:rustc-env=SHOAL_SLURM_VERSION_NUMBER={want}")),
        "{stdout}"
    );
}
