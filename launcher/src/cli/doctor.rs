//! `shoal doctor`: checks this node and prints a table with the fix for
//! each failure; exits 1 when something fails.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use shoal::container::doctor;

pub fn run(config_path: &Path) -> Result<ExitCode> {
    let checks = doctor::checks(config_path);
    print!("{}", doctor::render(&checks));
    // What this node offers an image index's entries (`shoal select`).
    if let Ok(config) = shoal::Config::load(config_path) {
        match shoal::select::resolve::this_node(&config) {
            Ok(caps) => print!("\nnode capabilities (for image indexes):\n{}", indent(&caps.render())),
            Err(e) => println!("\nnode capabilities: {e}"),
        }
    }
    Ok(if checks.iter().all(|c| c.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
