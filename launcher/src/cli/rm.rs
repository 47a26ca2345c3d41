//! `shoal rm REF`: forget a reference, and delete its image when nothing
//! else names it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use shoal::image::store::{Scope, Store};
use shoal::{Config, ImageSpec};

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image references (as pulled) or id:DIGEST.
    #[arg(required = true)]
    references: Vec<String>,
    /// Remove from the site store (admins).
    #[arg(long)]
    site: bool,
}

pub fn run(args: RmArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let store = Store::open(&config);
    let root = store.root(if args.site { Scope::Site } else { Scope::User })?;
    for reference in &args.references {
        let digests = match reference.parse::<ImageSpec>()? {
            ImageSpec::Registry(r) => {
                let d = root.remove_tag(&r)?;
                if d.is_empty() {
                    bail!(
                        "{reference}: not in the {} store ({}); see `shoal images`",
                        root.scope(),
                        root.dir().display()
                    );
                }
                d
            }
            ImageSpec::Id(d) => {
                // Every tag that names it goes too.
                for (_, entry) in root.tag_entries()? {
                    if entry.images.values().any(|x| x == &d) {
                        if let Ok(ImageSpec::Registry(r)) = entry.reference.parse::<ImageSpec>() {
                            root.remove_tag(&r)?;
                        }
                    }
                }
                if root.image(&d)?.is_none() {
                    bail!(
                        "{reference}: no such image in the {} store; see `shoal images`",
                        root.scope()
                    );
                }
                vec![d]
            }
            ImageSpec::File(p) => bail!(
                "{}: a file, not a stored image; delete it yourself",
                p.display()
            ),
        };
        let mut removed = 0;
        for d in &digests {
            if root.remove_if_unreferenced(d)? {
                removed += 1;
            }
        }
        println!("{reference}: removed ({removed} image(s) deleted)");
    }
    Ok(ExitCode::SUCCESS)
}
