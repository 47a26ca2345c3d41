//! `shoal abi-check IMAGE --module NAME[,NAME]`: shows, before any job
//! runs, which host libraries would replace or join the image's and why,
//! and the mounts that follow. Reads the image in-process; mounts nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use shoal::inject::{self, render_table, DirImage, Request};
use shoal::Config;

#[derive(Debug, Args)]
pub struct AbiCheckArgs {
    /// The image: a squashfs file (or an unpacked image directory).
    image: PathBuf,
    /// Modules to check (`NAME[,NAME]`, repeatable; `none`); default: the
    /// site's `default_modules`.
    #[arg(long = "module", value_name = "NAME[,NAME]")]
    modules: Vec<String>,
    /// The program the job will run, as a path inside the image: library
    /// copies in its RUNPATH are checked and covered too.
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Print the table and plan as JSON.
    #[arg(long)]
    json: bool,
    /// The job's GPUs, as Slurm sets them.
    #[arg(long, env = "CUDA_VISIBLE_DEVICES", value_name = "LIST")]
    cuda_visible_devices: Option<String>,
}

pub fn run(args: AbiCheckArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let modules = inject::select_modules(&config, &args.modules)?;
    let image = inject::image::open(&args.image)
        .with_context(|| format!("cannot read image {}", args.image.display()))?;
    let host = DirImage::new("/");
    let request = Request {
        modules,
        default_abi: config.injection.abi,
        cuda_visible_devices: args.cuda_visible_devices.as_deref(),
        host: &host,
        program: args.program.as_deref(),
    };
    let assessment = inject::assess(image.as_ref(), &request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&assessment)?);
    } else if assessment.modules.is_empty() {
        println!("no module selected (site default_modules is empty, or --module=none)");
    } else {
        print!("{}", render_table(&assessment.decisions));
        if assessment.refused().next().is_none() {
            println!("\nplan:\n{}", assessment.plan);
        }
    }
    assessment.into_plan()?;
    Ok(ExitCode::SUCCESS)
}
