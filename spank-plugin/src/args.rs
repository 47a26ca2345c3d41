//! The plugin's arguments from its plugstack.conf line, for example
//! `required /usr/lib/shoal/libspank_shoal.so config=/etc/shoal/shoal.toml`.

use std::path::PathBuf;

/// Parsed plugstack.conf arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// Site config file (`config=PATH`).
    pub config: PathBuf,
}

impl PluginArgs {
    /// Parses `KEY=VALUE` words; an unknown or malformed word is an error
    /// that names it and lists what is accepted, because a typo here would
    /// otherwise change behaviour silently on every node.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<PluginArgs, String> {
        let mut config = PathBuf::from(shoal::config::DEFAULT_PATH);
        for arg in args.iter().map(AsRef::as_ref) {
            match arg.split_once('=') {
                Some(("config", path)) if !path.is_empty() => config = PathBuf::from(path),
                Some(("config", _)) => {
                    return Err("plugstack.conf argument `config=` needs a path, e.g. config=/etc/shoal/shoal.toml".into())
                }
                _ => {
                    return Err(format!(
                        "unknown plugstack.conf argument `{arg}`; supported: config=PATH"
                    ))
                }
            }
        }
        Ok(PluginArgs { config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_path() {
        let a = PluginArgs::parse::<&str>(&[]).unwrap();
        assert_eq!(a.config, PathBuf::from("/etc/shoal/shoal.toml"));
    }

    #[test]
    fn config_path_is_taken() {
        let a = PluginArgs::parse(&["config=/srv/shoal.toml"]).unwrap();
        assert_eq!(a.config, PathBuf::from("/srv/shoal.toml"));
    }

    #[test]
    fn unknown_argument_is_named() {
        let e = PluginArgs::parse(&["config=/x", "bogus=1"]).unwrap_err();
        assert!(e.contains("`bogus=1`"), "{e}");
        let e = PluginArgs::parse(&["verbose"]).unwrap_err();
        assert!(e.contains("`verbose`"), "{e}");
        assert!(PluginArgs::parse(&["config="]).is_err());
    }
}
