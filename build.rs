//! Build script of the SPANK plugin (`spank-plugin/Cargo.toml` points here).
//!
//! Generates Rust bindings for `<slurm/spank.h>` with bindgen and exports the
//! installed Slurm's `SLURM_VERSION_NUMBER`, because slurmd refuses a plugin
//! whose `plugin_version` differs from its own. Headers come from
//! `SLURM_INCLUDE_DIR` (a directory that holds `spank.h`; default
//! `/usr/include/slurm`); what is bound is listed in `slurm-headers/`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::exit;

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    exit(1);
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let headers_dir = root.join("slurm-headers");
    let wrapper = headers_dir.join("wrapper.h");
    let allowlist = headers_dir.join("allowlist.txt");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo:rerun-if-changed={}", wrapper.display());
    println!("cargo:rerun-if-changed={}", allowlist.display());

    let include_dir = PathBuf::from(
        env::var("SLURM_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include/slurm".to_string()),
    );
    let spank_h = include_dir.join("spank.h");
    if !spank_h.is_file() {
        fail(&format!(
            "Slurm headers not found: {} does not exist.\n       \
             Install Debian's `libslurm-dev` (apt-get install libslurm-dev), or set \
             SLURM_INCLUDE_DIR to the directory that holds spank.h.",
            spank_h.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", spank_h.display());
    let version_h = include_dir.join("slurm_version.h");
    println!("cargo:rerun-if-changed={}", version_h.display());

    let version = read_version(&version_h);
    println!("cargo:rustc-env=SHOAL_SLURM_VERSION_NUMBER={version}");
    // SPANK symbols newer than 22.05, as cfgs: the plugin may reference one
    // only in a build for a Slurm that has it. Rust links cdylibs with full
    // RELRO (-z now), so one unresolved symbol fails slurmd's dlopen of the
    // whole plugin, RTLD_LAZY or not.
    for (cfg, since, symbol) in NEWER_SYMBOLS {
        println!("cargo:rustc-check-cfg=cfg({cfg})");
        if version >= *since {
            println!("cargo:rustc-cfg={cfg}");
        }
        let declared = fs::read_to_string(&spank_h).is_ok_and(|h| h.contains(symbol));
        if declared != (version >= *since) {
            fail(&format!(
                "{}: Slurm {:#x} {} {symbol}, which Slurm added in {:#x}: are spank.h and slurm_version.h \
                 from the same libslurm-dev?",
                spank_h.display(),
                version,
                if declared { "declares" } else { "does not declare" },
                since
            ));
        }
    }
    println!(
        "cargo:rustc-env=SHOAL_SLURM_VERSION={}.{:02}.{}",
        (version >> 16) & 0xff,
        (version >> 8) & 0xff,
        version & 0xff
    );

    // wrapper.h says <slurm/spank.h>, so the include path is the parent of
    // the directory holding spank.h.
    let include_parent = include_dir.parent().unwrap_or(Path::new("/"));
    let mut builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_arg(format!("-I{}", include_parent.display()))
        // Enums as modules of plain integer constants, not Rust enums: Slurm
        // returns values its enums do not list (spank_err_t is slurm_err_t,
        // whose success value 0 is only a #define), and an unlisted value in
        // a Rust enum is undefined behaviour. (Newtype structs would clash
        // with the function `spank_context`.)
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    let rules = fs::read_to_string(&allowlist)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", allowlist.display())));
    for line in rules.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        builder = match line.split_once(' ') {
            Some(("function", re)) => builder.allowlist_function(re),
            Some(("type", re)) => builder.allowlist_type(re),
            Some(("var", re)) => builder.allowlist_var(re),
            _ => fail(&format!("{}: bad rule {line:?}", allowlist.display())),
        };
    }

    // bindgen panics when it cannot load libclang; catch that (quietly: the
    // panic's own text and backtrace would bury our message) and name the
    // package to install.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate()));
    std::panic::set_hook(default_hook);
    let bindings = generated
        .unwrap_or_else(|_| {
            fail(
                "bindgen could not load libclang. Install Debian's `libclang-dev` \
                 (apt-get install libclang-dev), or set LIBCLANG_PATH.",
            )
        })
        .unwrap_or_else(|e| {
            fail(&format!(
                "bindgen failed on {}: {e}. Check that `libslurm-dev` and `libclang-dev` \
                 are installed and match.",
                wrapper.display()
            ))
        });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", out.display())));
}

/// `(cfg, first SLURM_VERSION_NUMBER that has it, symbol in spank.h)`.
const NEWER_SYMBOLS: &[(&str, u32, &str)] = &[
    // 23.11: spank_prepend_task_argv() (task_init_privileged, task_init).
    ("slurm_prepend_task_argv", 0x170b00, "spank_prepend_task_argv"),
    // 25.05: a plugin-defined `int slurm_spank_init_failure_mode`.
    ("slurm_init_failure_mode", 0x190500, "slurm_spank_init_failure_mode"),
];

/// Reads `#define SLURM_VERSION_NUMBER 0x160508` from slurm_version.h.
fn read_version(path: &Path) -> u32 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| {
        fail(&format!(
            "cannot read {}: {e}. Install Debian's `libslurm-dev`.",
            path.display()
        ))
    });
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("#define SLURM_VERSION_NUMBER"))
        .find_map(|v| {
            let v = v.trim();
            let hex = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
            u32::from_str_radix(hex, 16).ok()
        })
        .unwrap_or_else(|| {
            fail(&format!(
                "{} has no SLURM_VERSION_NUMBER; is it a Slurm header?",
                path.display()
            ))
        })
}
