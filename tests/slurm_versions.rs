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
