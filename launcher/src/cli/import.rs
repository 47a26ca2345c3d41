//! `shoal import SOURCE`: an OCI layout directory, a docker-archive
//! tarball, a plain directory or a squashfs file into the store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use shoal::image::convert::Progress;
use shoal::image::import::{import, ImportOptions};
use shoal::image::store::{Scope, Store};
use shoal::{Config, ImageSpec};

use super::human_size;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// OCI layout dir, docker-archive .tar, directory (a root filesystem) or .sqfs file.
    source: PathBuf,
    /// Name to give it (default: localhost/<file name>:latest).
    #[arg(long)]
    name: Option<String>,
    /// Which image of a layout or archive holding several (its ref name or tag).
    #[arg(long = "ref", value_name = "NAME")]
    select: Option<String>,
    /// Platform to take from a multi-platform layout; default this machine's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Write the site store (admins).
    #[arg(long)]
    site: bool,
    /// No progress and no summary line.
    #[arg(short, long)]
    quiet: bool,
    /// Squashfs compression: zstd[:LEVEL], gzip[:LEVEL] or lz4.
    #[arg(long, value_name = "ALG[:LEVEL]")]
    compression: Option<String>,
}

pub fn run(args: ImportArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let mut opts = ImportOptions {
        select: args.select.clone(),
        ..Default::default()
    };
    if let Some(n) = &args.name {
        match n.parse::<ImageSpec>()? {
            ImageSpec::Registry(r) if r.digest().is_none() => opts.name = Some(r),
            _ => bail!(
                "--name {n:?}: give a name like `localhost/myimage:1.0` (no digest, not a path)"
            ),
        }
    }
    if let Some(p) = &args.platform {
        opts.platform = p.parse()?;
    }
    if args.site {
        opts.scope = Scope::Site;
    }
    opts.squash = super::pull::squash_options(&config, args.compression.as_deref())?;
    let store = Store::open(&config);
    let bar = super::pull::progress_bar(args.quiet);
    let result = import(&store, &args.source, &opts, &|p| match p {
        Progress::Reading { done, total } => {
            bar.set_message("converting to squashfs");
            bar.set_length(total);
            bar.set_position(done);
        }
        Progress::Finishing => bar.set_message("finishing squashfs"),
    });
    bar.finish_and_clear();
    let img = result?;
    if !args.quiet {
        println!(
            "{}: imported {} ({}, {} store)",
            args.source.display(),
            img.digest,
            human_size(img.size),
            img.scope
        );
    }
    Ok(ExitCode::SUCCESS)
}
