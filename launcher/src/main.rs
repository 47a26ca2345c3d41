//! The `shoal` command: thin glue over the library (see `cli/`).

fn main() -> std::process::ExitCode {
    shoal_cli::main()
}

#[path = "cli/mod.rs"]
mod shoal_cli;
