//! Unit tests of `config` (moved out of it to keep the file to one job).

use super::*;

fn err(text: &str) -> String {
    Config::parse(text, Path::new("/etc/shoal/shoal.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(
        Config::parse("", Path::new("x")).unwrap(),
        Config::default()
    );
}

#[test]
fn image_compression_parses_and_bad_values_name_the_key() {
    let c = Config::parse(
        "[image]\ncompression = \"lz4\"\nblock_size = 65536\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.image.squash_options().compression.to_string(), "lz4");
    assert_eq!(c.image.block_size, 65536);
    assert_eq!(Config::default().image.compression.to_string(), "zstd:3");
    let e = err("[image]\ncompression = \"zstd:99\"\n");
    assert!(
        e.contains("line 2 (key `image.compression`)") && e.contains("zstd:N"),
        "{e}"
    );
}

#[test]
fn policy_file_parses() {
    let c = Config::parse(
        "[policy]\nfile = \"/etc/site/policy.json\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(
        c.policy.file.as_deref(),
        Some(Path::new("/etc/site/policy.json"))
    );
    assert_eq!(Config::default().policy.file, None);
    let e = err("[policy]\npath = \"/x\"\n");
    assert!(e.contains("path") && e.contains("line 2"), "{e}");
}

#[test]
fn store_paths_parse() {
    let c = Config::parse(
        "[store]\nuser_dir = \"/home/u/.shoal\"\nsite_dir = \"/srv/shoal\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.store.site_dir.as_deref(), Some(Path::new("/srv/shoal")));
    assert_eq!(
        c.store.user_dir.as_deref(),
        Some(Path::new("/home/u/.shoal"))
    );
}

#[test]
fn node_section_sizes_and_staging() {
    let c = Config::parse(
        "[node]\ncache_dir = \"/local/shoal\"\ncache_size = \"512M\"\nstaging = \"direct\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.node.cache_size, Size(512 << 20));
    assert_eq!(c.node.staging, Staging::Direct);
    assert_eq!(Config::default().node.staging, Staging::Copy);
    let c = Config::parse("[node]\ncache_size = 4096\n", Path::new("x")).unwrap();
    assert_eq!(c.node.cache_size, Size(4096));
    let e = err("[node]\ncache_size = \"lots\"\n");
    assert!(
        e.contains("node.cache_size") && e.contains("\"lots\""),
        "{e}"
    );
    let c = Config::parse("[node]\nstaging = \"in-place\"\n", Path::new("x")).unwrap();
    assert_eq!(c.node.staging, Staging::InPlace);
    let e = err("[launcher]\nimage_server = \"squashfuse\"\n[node]\nstaging = \"in-place\"\n");
    assert!(e.contains("node.staging") && e.contains("image_server"), "{e}");
    let e = err("[node]\nstaging = \"teleport\"\n");
    assert!(e.contains("node.staging") && e.contains("teleport"), "{e}");
}

#[test]
fn documented_registry_example_parses_when_uncommented() {
    let example = include_str!("../../../packaging/shoal.toml");
    let block: String = example
        .lines()
        .skip_while(|l| !l.starts_with("# [registries."))
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::parse(&block, Path::new("packaging/shoal.toml")).unwrap();
    let r = &c.registries["registry.example.org:5000"];
    assert!(
        r.tls_verify && r.ca_file.is_some() && r.mirrors.len() == 1,
        "{block}"
    );
}

#[test]
fn registry_sections_parse() {
    let c = Config::parse(
        "[registries.\"lab.example:5000\"]\ntls_verify = false\nmirrors = [\"m1:5000\"]\n\
             [registries.\"docker.io\"]\nca_file = \"/etc/ca.pem\"\n",
        Path::new("x"),
    )
    .unwrap();
    let lab = &c.registries["lab.example:5000"];
    assert!(!lab.tls_verify);
    assert_eq!(lab.mirrors, vec!["m1:5000"]);
    let hub = &c.registries["docker.io"];
    assert!(hub.tls_verify, "TLS is verified unless turned off");
    assert_eq!(hub.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    let e = err("[registries.\"x\"]\ntls_verfy = false\n");
    assert!(e.contains("tls_verfy"), "{e}");
}

#[test]
fn unknown_key_names_key_line_and_file() {
    let e = err("[store]\nsite_dir = \"/srv\"\nsite_dri = \"/srv\"\n");
    assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("site_dri"), "{e}");
}

#[test]
fn unknown_section_is_refused() {
    let e = err("[stor]\nsite_dir = \"/srv\"\n");
    assert!(e.contains("stor"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err("# site\n[store]\nsite_dir = 42\n");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("store.site_dir"), "{e}");
    assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert!(matches!(
        Config::load(&missing).unwrap_err(),
        ConfigError::Read { .. }
    ));
}

#[test]
fn launcher_sections_parse() {
    let c = Config::parse(
        "[launcher]\nallow_kernel_mount_of_user_images = true\nsquashfuse = \"/opt/sq\"\n\
             [mounts]\nsite = [\"/apps:/apps:ro\"]\nallowed_targets = [\"/etc/site\"]\n\
             [env]\ndeny = [\"SECRET_*\"]\n",
        Path::new("x"),
    )
    .unwrap();
    assert!(c.launcher.allow_kernel_mount_of_user_images);
    assert_eq!(c.launcher.squashfuse_path(), PathBuf::from("/opt/sq"));
    let site = &c.mounts.site[0];
    assert_eq!(
        (site.source.as_path(), site.target.as_path(), site.read_only),
        (Path::new("/apps"), Path::new("/apps"), true)
    );
    assert_eq!(c.env.deny, ["SECRET_*"]);
}

const MODULES: &str = r#"
[injection]
default_modules = ["mpich"]
abi = "strict"

[modules.mpich]
description = "Debian MPICH"
libraries = ["/usr/lib/x86_64-linux-gnu/libmpich.so.12*"]
binaries = ["/usr/bin/mpichversion"]
env = { MPICH_SITE = "1" }
env_prepend = { PATH = ["/opt/site/bin"] }
mounts = [{ source = "/etc/site-net", target = "/etc/site-net" }]

[modules.gpu]
libraries = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
devices = ["/dev/nvidiactl", "/dev/nvidia-uvm"]
gpu_devices = ["/dev/nvidia[0-9]*"]
abi = "relaxed"
"#;

#[test]
fn modules_parse() {
    let c = Config::parse(MODULES, Path::new("x")).unwrap();
    assert_eq!(c.injection.default_modules, ["mpich"]);
    assert_eq!(c.injection.abi, AbiMode::Strict);
    let mpich = &c.modules["mpich"];
    assert_eq!(
        mpich.libraries,
        ["/usr/lib/x86_64-linux-gnu/libmpich.so.12*"]
    );
    assert_eq!(mpich.env["MPICH_SITE"], "1");
    assert_eq!(mpich.env_prepend["PATH"], ["/opt/site/bin"]);
    assert_eq!(mpich.mounts[0].target, Path::new("/etc/site-net"));
    assert!(!mpich.mounts[0].writable);
    assert_eq!(c.modules["gpu"].abi, Some(AbiMode::Relaxed));
    assert_eq!(c.modules["gpu"].gpu_devices, ["/dev/nvidia[0-9]*"]);
    assert_eq!(Config::default().injection.abi, AbiMode::Relaxed);
}

#[test]
fn bad_module_input_names_the_key() {
    let e = err("[modules.mpich]\nlibraries = [\"libmpich.so.12\"]\n");
    assert!(
        e.contains("modules.mpich.libraries") && e.contains("line 2") && e.contains("absolute"),
        "{e}"
    );
    let e = err("[modules.mpich]\nlibaries = []\n");
    assert!(e.contains("libaries") && e.contains("line 2"), "{e}");
    let e = err("[injection]\nabi = \"loose\"\n");
    assert!(e.contains("injection.abi") && e.contains("loose"), "{e}");
    let e = err("[injection]\ndefault_modules = [\"mpi\"]\n[modules.mpich]\n");
    assert!(
        e.contains("injection.default_modules") && e.contains("configured: mpich"),
        "{e}"
    );
    let e = err("[modules.gpu]\nenv = { LD_LIBRARY_PATH = \"/x\" }\n");
    assert!(e.contains("modules.gpu.env") && e.contains("LD_"), "{e}");
    let e = err("[modules.none]\n");
    assert!(e.contains("modules.none"), "{e}");
    let e = err("[modules.x]\nmounts = [{ source = \"rel\", target = \"/t\" }]\n");
    assert!(
        e.contains("modules.x.mounts") && e.contains("line 2"),
        "{e}"
    );
    // `shoal config check` parses `[mounts] site` too: a bad entry fails
    // there, with its place, not in every job's container setup.
    let e = err("[mounts]\nsite = [\"/apps:/apps:rx\"]\n");
    assert!(
        e.contains("mounts.site") && e.contains("line 2") && e.contains("rx"),
        "{e}"
    );
    let e = err("[mounts]\nsite = [\"/apps:apps\"]\n");
    assert!(e.contains("[mounts] site") && e.contains("the target"), "{e}");
    let e = err("[modules.gpu]\ngpu_devices = [\"/opt/gpu/nvidia[0-9]*:dev\"]\n");
    assert!(
        e.contains("modules.gpu.gpu_devices")
            && e.contains("line 2")
            && e.contains("HOST_GLOB:/dev"),
        "{e}"
    );
}

#[test]
fn device_entries_say_where_nodes_appear_inside() {
    let d = DeviceSpec::parse("/dev/nvidia[0-9]*").unwrap();
    assert_eq!(
        (d.pattern.as_str(), d.dir.as_deref()),
        ("/dev/nvidia[0-9]*", None)
    );
    assert_eq!(
        d.target(Path::new("/dev/nvidia3")),
        Path::new("/dev/nvidia3")
    );
    let d = DeviceSpec::parse("/var/lib/gpu/nvidia[0-9]*:/dev").unwrap();
    assert_eq!(d.pattern, "/var/lib/gpu/nvidia[0-9]*");
    assert_eq!(
        d.target(Path::new("/var/lib/gpu/nvidia3")),
        Path::new("/dev/nvidia3")
    );
    for bad in [
        "dev/nvidia0",
        "/dev/nvidia0:",
        "/x:/dev/../etc",
        "/x:/dev/*",
        "/x[:/dev",
    ] {
        assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
    }
    let c = Config::parse("[launcher]\nhost_dev = true\n", Path::new("x")).unwrap();
    assert!(c.launcher.host_dev && !Config::default().launcher.host_dev);
}

#[test]
fn the_stage_stall_timeout_defaults_to_a_minute_and_is_never_zero() {
    assert_eq!(Config::default().node.stall_timeout, 60);
    let c = Config::parse("[node]\nstall_timeout = 5\n", Path::new("x")).unwrap();
    assert_eq!(c.node.stall_timeout, 5);
    let e = err("[node]\nstall_timeout = 0\n");
    assert!(e.contains("node.stall_timeout") && e.contains("at least 1"), "{e}");
}
