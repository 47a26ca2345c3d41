//! `shoal config check|show`: lets an admin validate the TOML before the
//! plugin reads it on every node.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use shoal::image::trust::Requirement;
use shoal::Config;

/// One line per scope for `config check`.
fn describe(reqs: &[Requirement]) -> String {
    reqs.iter()
        .map(|r| match r {
            Requirement::InsecureAcceptAnything => "insecureAcceptAnything".to_string(),
            Requirement::Reject => "reject".to_string(),
            Requirement::SigstoreSigned { keys, identity } => format!(
                "sigstoreSigned by {} ({identity})",
                keys.iter().map(|k| k.source.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

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
        ConfigCmd::Check => {
            // The site image policy is part of the config: a bad policy
            // file fails the check with the file, the place and the fix.
            let policy = shoal::image::trust::site_policy(&config)?;
            println!("{}: ok", path.display());
            match policy {
                None => println!("image policy: none (every image is accepted; set `policy.file` or write {})", shoal::image::trust::DEFAULT_POLICY),
                Some(p) => {
                    let scopes = p.docker_scopes().count();
                    println!(
                        "image policy {}: ok ({scopes} docker scope{}, default: {})",
                        p.path.display(),
                        if scopes == 1 { "" } else { "s" },
                        describe(p.default_requirements())
                    );
                    for (scope, reqs) in p.docker_scopes() {
                        println!("  docker {scope:?}: {}", describe(reqs));
                    }
                    if !p.other_transports.is_empty() {
                        println!("  (transports {} are podman's; Shoal uses `docker` and the default)", p.other_transports.join(", "));
                    }
                }
            }
        }
        ConfigCmd::Show => println!("# {}\n{config:#?}", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}
