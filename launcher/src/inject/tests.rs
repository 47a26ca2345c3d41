//! Unit tests of the injection plan as a whole (decision, steps, render).

use std::fs;
use std::path::Path;

use super::plan::*;
use crate::config::{AbiMode, Config};
use crate::inject::{assess, render_table, DirImage};


    /// The host's own zlib against an image tree holding the host's libc:
    /// pure data, no gcc. Skipped where the host lacks them.
    fn zlib_case(with_ldconfig: bool) -> Option<Assessment> {
        let multiarch = Path::new("/usr/lib/x86_64-linux-gnu");
        let (libz, libc) = (multiarch.join("libz.so.1"), multiarch.join("libc.so.6"));
        if !libz.exists() || !libc.exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::copy(&libc, lib.join("libc.so.6")).unwrap();
        if with_ldconfig {
            fs::create_dir_all(dir.path().join("sbin")).unwrap();
            fs::write(dir.path().join("sbin/ldconfig"), b"").unwrap();
        }
        let text = format!("[modules.z]\nlibraries = [\"{}\"]\n", libz.display());
        let config = Config::parse(&text, Path::new("x")).unwrap();
        let host = DirImage::new("/");
        let req = Request {
            modules: vec![("z", &config.modules["z"])],
            default_abi: AbiMode::Relaxed,
            cuda_visible_devices: None,
            host: &host,
            program: None,
        };
        Some(assess(&DirImage::new(dir.path()), &req).unwrap())
    }

    #[test]
    fn a_missing_library_is_added_through_the_images_ldconfig() {
        let Some(a) = zlib_case(true) else { return };
        let z = a.decisions.iter().find(|d| d.name == "libz.so.1").unwrap();
        assert_eq!((z.action, z.needed_by.as_deref()), (Action::Add, None));
        assert_eq!(z.host_version.as_deref(), Some("1.2.13"));
        let libc = a.decisions.iter().find(|d| d.name == "libc.so.6").unwrap();
        assert_eq!(
            (libc.kind, libc.action),
            (ObjectKind::Runtime, Action::UseImage)
        );
        let plan = a.into_plan().unwrap();
        assert_eq!(
            plan.steps[0],
            Step::Tmpfs {
                target: SHOAL_DIR.into()
            }
        );
        let Step::Bind(bind) = &plan.steps[1] else {
            panic!("{plan}")
        };
        assert_eq!(bind.target, Path::new("/.shoal/lib/libz.so.1"));
        assert!(bind.read_only && bind.nosuid && bind.nodev && !bind.target_in_image);
        let Step::RunInContainer { argv, .. } = &plan.steps[3] else {
            panic!("{plan}")
        };
        assert_eq!(argv[..2], ["/sbin/ldconfig".to_string(), "-X".to_string()]);
        assert!(
            matches!(&plan.steps[4], Step::BindWithin { target, .. } if target == Path::new("/etc/ld.so.cache"))
        );
        assert!(plan.env.is_empty());
    }

    #[test]
    fn without_ldconfig_a_missing_library_is_refused_not_put_on_ld_library_path() {
        let Some(a) = zlib_case(false) else { return };
        let e = a.into_plan().unwrap_err().to_string();
        assert!(e.contains("no libz.so.1 and no ldconfig"), "{e}");
    }

    #[test]
    fn table_has_one_line_per_decision() {
        let Some(a) = zlib_case(true) else { return };
        let table = render_table(&a.decisions);
        assert_eq!(table.lines().count(), 1 + a.decisions.len());
        assert!(table.starts_with("LIBRARY"));
        assert!(table.contains("libc.so.6 (for libz.so.1)"), "{table}");
    }
