//! Command-line front end. One file per subcommand; each parses its
//! arguments, calls the library, and turns errors into one line that says
//! what to do.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod abi_check;
mod config_cmd;
mod gc;
mod images;
mod import;
mod index;
mod inspect;
mod pull;
mod rm;
mod doctor;
mod run;
mod run_save;
mod select;

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
    /// Pull an image from a registry into your image store.
    Pull(pull::PullArgs),
    /// List the images in the site and user stores.
    Images(images::ImagesArgs),
    /// Build an image index (one entry per CPU level, GPU or MPI build) and push it.
    #[command(subcommand)]
    Index(index::IndexCmd),
    /// Show a stored image's metadata and run settings.
    Inspect(inspect::InspectArgs),
    /// Remove image references (and images nothing else names).
    Rm(rm::RmArgs),
    /// Delete unreferenced images and leftovers of killed pulls.
    Gc(gc::GcArgs),
    /// Import an OCI layout, docker-archive, directory or squashfs file.
    Import(import::ImportArgs),
    /// Run a command in an image: `shoal run IMAGE [--] CMD [ARGS...]`.
    Run(Box<run::RunArgs>),
    /// Which entry of an image index this node (or each given node) runs, and why.
    Select(select::SelectArgs),
    /// Check this node (user namespaces, FUSE, squashfs, config) and say how to fix failures.
    Doctor,
    /// Show which host libraries of a module an image can take, and why.
    AbiCheck(abi_check::AbiCheckArgs),
}

pub fn main() -> ExitCode {
    // The plugin's image server (see container::serve_fuse_exec): no parse.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == shoal::container::SERVE_EXEC_ARG) {
        shoal::container::serve_fuse_exec(&args[2..]);
    }
    // Before the (slow) parse: see run::wants_early_server.
    if run::wants_early_server(std::env::args_os().skip(1)) {
        run::start_early_server();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd, &cli.config),
        Command::Pull(args) => pull::run(args, &cli.config),
        Command::Images(args) => images::run(args, &cli.config),
        Command::Index(cmd) => index::run(cmd, &cli.config),
        Command::Inspect(args) => inspect::run(args, &cli.config),
        Command::Rm(args) => rm::run(args, &cli.config),
        Command::Gc(args) => gc::run(args, &cli.config),
        Command::Import(args) => import::run(args, &cli.config),
        Command::Run(args) => run::run(*args, &cli.config),
        Command::Select(args) => select::run(args, &cli.config),
        Command::Doctor => doctor::run(&cli.config),
        Command::AbiCheck(args) => abi_check::run(args, &cli.config),
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

/// `1.2 MB` style sizes (powers of 1000, as `du --si` and registries show).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
