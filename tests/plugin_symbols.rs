//! The SPANK plugin does not carry Shoal's built-in FUSE image server
//! (`container::image_server`): slurmstepd is threaded, so the plugin
//! always execs squashfuse_ll, and the server's code would only be
//! unreviewable weight in every job's slurmstepd. Checked on the plugin
//! this build made (`cargo build --workspace` turns the `image-server`
//! feature on for the whole workspace, so the check is on what is linked,
//! not on what is compiled), against the `shoal` binary, which does carry
//! the server, so the symbol pattern is known to match real names.

mod support;

use std::path::Path;
use std::process::Command;

/// The demangled names of the functions defined in `file`.
fn defined_symbols(file: &Path) -> String {
    assert!(file.exists(), "{} missing: run cargo build --workspace first", file.display());
    let out = Command::new("nm").arg("-C").arg("--defined-only").arg(file).output().expect("run nm (binutils)");
    assert!(out.status.success(), "nm {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SERVER: &str = "shoal::container::image_server::";

#[test]
fn the_plugin_links_no_image_server_and_the_command_does() {
    let target = support::target_dir();
    let command = defined_symbols(&target.join("shoal"));
    assert!(
        command.lines().any(|l| l.contains(SERVER)),
        "the shoal binary defines no {SERVER}* symbol: the pattern no longer matches (renamed module?)"
    );
    let plugin = defined_symbols(&target.join("libspank_shoal.so"));
    let linked: Vec<&str> = plugin.lines().filter(|l| l.contains(SERVER)).take(10).collect();
    assert!(linked.is_empty(), "libspank_shoal.so links the image server:\n{}", linked.join("\n"));
}
