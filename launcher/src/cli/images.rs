//! `shoal images`: what the site and user stores hold.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shoal::image::store::Store;
use shoal::Config;

use super::human_size;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// One JSON array, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ImagesArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let listed = Store::open(&config).list()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<50} {:<14} {:<19} {:>9}  STORE",
        "REFERENCE", "PLATFORM", "IMAGE ID", "SIZE"
    );
    for l in &listed {
        println!(
            "{:<50} {:<14} {:<19} {:>9}  {}",
            l.reference.as_deref().unwrap_or("<none>"),
            l.platform_key.as_deref().unwrap_or("-"),
            &l.image.digest.as_str()[..19],
            human_size(l.image.size),
            l.image.scope
        );
    }
    Ok(ExitCode::SUCCESS)
}
