//! Which modules a job gets: `--module=NAME[,NAME]` (Shifter's spelling,
//! repeatable), `--module=none`, or the site's `default_modules`.

use crate::config::{module_names, Config, ModuleConfig};

use super::InjectError;

/// Picks the modules for a job. `requested` holds the raw `--module`
/// values (each may be a comma-separated list); empty means "not given".
///
/// Naming modules replaces the defaults (as Shifter does); `none` alone
/// turns them off. Order is kept and repeats are dropped.
pub fn select_modules<'c>(
    config: &'c Config,
    requested: &[String],
) -> Result<Vec<(&'c str, &'c ModuleConfig)>, InjectError> {
    let names: Vec<&str> = requested
        .iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let names: Vec<&str> = if requested.is_empty() {
        config
            .injection
            .default_modules
            .iter()
            .map(String::as_str)
            .collect()
    } else if names == ["none"] || (names.is_empty()) {
        // `--module=` (empty) is taken like `none`: the user asked for no module.
        Vec::new()
    } else if names.contains(&"none") {
        return Err(InjectError::Module(format!(
            "--module={}: `none` turns every module off and cannot be combined with module names",
            requested.join(",")
        )));
    } else {
        names
    };
    let mut out: Vec<(&'c str, &'c ModuleConfig)> = Vec::new();
    for name in names {
        let Some((key, module)) = config.modules.get_key_value(name) else {
            return Err(InjectError::Module(format!(
                "--module={name}: no such module in the site config (configured: {}); ask your admins or run `shoal config show`",
                module_names(config)
            )));
        };
        if !out.iter().any(|(n, _)| *n == key) {
            out.push((key.as_str(), module));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "[injection]\ndefault_modules = [\"mpich\"]\n[modules.mpich]\n[modules.gpu]\n[modules.site-fs]\n",
            Path::new("x"),
        )
        .unwrap()
    }

    fn names(requested: &[&str]) -> Result<Vec<String>, String> {
        let c = config();
        let req: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        select_modules(&c, &req)
            .map(|v| v.into_iter().map(|(n, _)| n.to_string()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_when_nothing_is_asked() {
        assert_eq!(names(&[]).unwrap(), ["mpich"]);
    }

    #[test]
    fn named_modules_replace_the_defaults_in_order_without_repeats() {
        assert_eq!(names(&["gpu,site-fs"]).unwrap(), ["gpu", "site-fs"]);
        assert_eq!(names(&["gpu", "mpich,gpu"]).unwrap(), ["gpu", "mpich"]);
    }

    #[test]
    fn none_turns_defaults_off() {
        assert!(names(&["none"]).unwrap().is_empty());
        assert!(names(&[""]).unwrap().is_empty());
        assert!(names(&["none,gpu"])
            .unwrap_err()
            .contains("cannot be combined"));
    }

    #[test]
    fn unknown_module_lists_the_configured_ones() {
        let e = names(&["mpich,openmpi"]).unwrap_err();
        assert!(e.contains("--module=openmpi"), "{e}");
        assert!(e.contains("configured: gpu, mpich, site-fs"), "{e}");
    }
}
