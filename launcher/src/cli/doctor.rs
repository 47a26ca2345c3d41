//! `shoal doctor`: checks this node and prints a table with the fix for
//! each failure; exits 1 when something fails.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use shoal::container::doctor;

pub fn run(config_path: &Path) -> Result<ExitCode> {
    let checks = doctor::checks(config_path);
    print!("{}", doctor::render(&checks));
    Ok(if checks.iter().all(|c| c.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
