//! `shoal gc`: delete images no reference names and work files left by
//! killed pulls.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shoal::image::store::{Scope, Store};
use shoal::Config;

use super::human_size;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Collect the site store (admins).
    #[arg(long)]
    site: bool,
}

pub fn run(args: GcArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let store = Store::open(&config);
    let root = store.root(if args.site { Scope::Site } else { Scope::User })?;
    let r = root.gc()?;
    // Signatures of images no longer stored go with them.
    shoal::image::trust::gc_signatures(root);
    println!(
        "{}: removed {} image(s) ({}), {} stale reference(s), {} leftover work dir(s), {} unheld lock file(s)",
        root.dir().display(),
        r.images_removed,
        human_size(r.bytes_freed),
        r.tags_removed,
        r.temps_removed,
        r.locks_removed
    );
    Ok(ExitCode::SUCCESS)
}
