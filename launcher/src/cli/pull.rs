//! `shoal pull REF`: fetch an image from its registry into the store.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{ArgAction, Args};
use indicatif::{ProgressBar, ProgressStyle};
use shoal::image::convert::{Progress, SquashOptions};
use shoal::image::pull::{pull, PullEvent, PullOptions};
use shoal::image::store::{Scope, Store};
use shoal::{Config, ImageSpec};

use super::human_size;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image: NAME[:TAG], REGISTRY[:PORT]/NAME[:TAG], ...@sha256:DIGEST, docker://...
    reference: String,
    /// No progress and no summary line.
    #[arg(short, long)]
    quiet: bool,
    /// Platform to take from a multi-platform image (OS/ARCH[/VARIANT]); default this machine's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// `--tls-verify=false` skips certificate checks (a lab registry only).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    tls_verify: bool,
    /// Write the site store (`store.site_dir`) instead of your own (admins).
    #[arg(long)]
    site: bool,
    /// Squashfs compression: zstd[:LEVEL], gzip[:LEVEL] or lz4.
    #[arg(long, value_name = "ALG[:LEVEL]")]
    compression: Option<String>,
}

pub fn run(args: PullArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let r = match args.reference.parse::<ImageSpec>()? {
        ImageSpec::Registry(r) => r,
        ImageSpec::Id(_) => bail!(
            "{}: an image id names an image already in a store; pull a registry reference instead",
            args.reference
        ),
        ImageSpec::File(p) => bail!(
            "{}: a file, not a registry image; use `shoal import {}`",
            p.display(),
            p.display()
        ),
    };
    let mut opts = PullOptions::new();
    if let Some(p) = &args.platform {
        opts.platform = p.parse()?;
    } else {
        // From an index, every entry one of the site's nodes could run.
        opts.platforms = config
            .image
            .platforms
            .iter()
            .map(|p| p.parse().map_err(|e| anyhow::anyhow!("image.platforms in the site config: {e}")))
            .collect::<Result<_>>()?;
    }
    if !args.tls_verify {
        opts.client.tls_verify = Some(false);
    }
    if args.site {
        opts.scope = Scope::Site;
    }
    opts.squash = squash_options(&config, args.compression.as_deref())?;
    let store = Store::open(&config);
    let bar = progress_bar(args.quiet);
    let outcome = pull(&config, &store, &r, &opts, &|ev| match ev {
        PullEvent::Resolved { layers, bytes, .. } => {
            bar.set_message(format!(
                "downloading {layers} layer{}",
                if layers == 1 { "" } else { "s" }
            ));
            bar.set_length(bytes);
        }
        PullEvent::Waiting => bar.set_message("waiting for another pull of this image"),
        // Layers are converted as they download: the bar follows the
        // converter (it trails the download by a buffer at most).
        PullEvent::Downloading { total, .. } => bar.set_length(total),
        PullEvent::Converting(Progress::Reading { done, total }) => {
            bar.set_message("downloading and converting to squashfs");
            bar.set_length(total);
            bar.set_position(done);
        }
        PullEvent::Converting(Progress::Finishing) => bar.set_message("finishing squashfs"),
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if !args.quiet {
        let img = &outcome.image;
        println!(
            "{r}: {} {} ({}, {} store)",
            if outcome.downloaded {
                "pulled"
            } else {
                "up to date"
            },
            img.digest,
            human_size(img.size),
            img.scope
        );
        if let Some((index, variants)) = &outcome.index {
            println!("  image index {index}: {} entr{} for this site's platforms", variants.len(), if variants.len() == 1 { "y" } else { "ies" });
            for (key, v) in variants {
                println!("    {key:<24} {} ({})", v.digest, human_size(v.size));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr when it is a terminal and not `-q`; hidden otherwise.
pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:24} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("resolving");
    bar
}

/// The site's `[image]` squashfs settings, then this call's `--compression`
/// (shared by `pull` and `import`).
pub(super) fn squash_options(config: &Config, compression: Option<&str>) -> Result<SquashOptions> {
    let mut squash = config.image.squash_options();
    if let Some(c) = compression {
        squash.compression = c.parse().map_err(anyhow::Error::msg)?;
    }
    Ok(squash)
}
