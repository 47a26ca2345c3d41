//! The site config as the plugin holds it, in one place: the file named by
//! plugstack.conf's `config=PATH` ([`crate::args`]), read by
//! `slurm_spank_init` once per process and kept for every later callback of
//! that process; the job prolog and epilog, which Slurm runs without
//! `slurm_spank_init`, read it through [`load`] too.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use shoal::Config;

use crate::args::PluginArgs;

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// Reads the site config named by the plugstack arguments; returns it with
/// its path (for the log line).
pub fn load<S: AsRef<str>>(args: &[S]) -> Result<(Config, PathBuf), String> {
    let args = PluginArgs::parse(args)?;
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    Ok((config, args.config))
}

/// Keeps `config` for the rest of this process (`slurm_spank_init`).
pub fn keep(config: Config) {
    *CONFIG.lock().unwrap_or_else(PoisonError::into_inner) = Some(config);
}

/// The config `slurm_spank_init` kept, if it ran in this process.
pub fn kept() -> Option<Config> {
    CONFIG.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The config `slurm_spank_init` kept (the defaults before it ran).
pub fn config() -> Config {
    kept().unwrap_or_default()
}
