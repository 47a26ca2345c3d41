//! Command-line front end. One file per subcommand; each parses its
//! arguments, calls the library, and turns errors into one line that says
//! what to do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod doctor;
mod run;

/// Containers for HPC: run OCI images on Slurm clusters and laptops with no
/// setuid binary and no daemon.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Site config file.
    #[arg(long, global = true, env = "SHOAL_CONFIG", default_value = shoal::config::DEFAULT_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check or show the site config file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCmd),
    /// Run a command in an image: `shoal run IMAGE [--] CMD [ARGS...]`.
    Run(Box<run::RunArgs>),
    /// Check this node (user namespaces, FUSE, squashfs, config) and say how to fix failures.
    Doctor,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd, &cli.config),
        Command::Run(args) => run::run(*args, &cli.config),
        Command::Doctor => doctor::run(&cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, the cause chain joined: what failed and what to do.
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
