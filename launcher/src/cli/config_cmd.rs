//! `shoal config check|show`: lets an admin validate the TOML before the
//! plugin reads it on every node.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use shoal::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Parse the config file and report the first error (exit 1), or "ok".
    Check,
    /// Print the settings in effect, defaults included.
    Show,
}

pub fn run(cmd: ConfigCmd, path: &Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    match cmd {
        ConfigCmd::Check => println!("{}: ok", path.display()),
        ConfigCmd::Show => println!("# {}\n{config:#?}", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}
