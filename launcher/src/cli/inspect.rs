//! `shoal inspect REF`: one stored image's metadata and run settings.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shoal::image::store::Store;
use shoal::image::trust;
use shoal::{Config, ImageSpec};

use super::human_size;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image: a reference as pulled, or id:DIGEST.
    reference: String,
    /// Platform of the entry to show; default this machine's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// JSON, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let spec: ImageSpec = args.reference.parse()?;
    let platform = match &args.platform {
        Some(p) => p.parse()?,
        None => shoal::image::platform::Platform::host(),
    };
    let store = Store::open(&config);
    // An index without --platform: this node's choice, and every variant.
    let (img, index) = match (store.find_index(&spec)?, &args.platform) {
        (Some(_), None) => {
            let node = shoal::select::resolve::this_node(&config).map_err(anyhow::Error::msg)?;
            let r = shoal::select::resolve::resolve(&store, &spec, &[node], &Default::default())?;
            (r.image, r.chosen_from)
        }
        _ => (store.resolve_for(&spec, &platform)?, None),
    };
    let signatures = trust::stored_signatures(&store, &img);
    let verdict = trust::check_stored(&config, &store, &spec, &img);
    let status = match &verdict {
        Ok(None) => "no site image policy (every image is accepted)".to_string(),
        Ok(Some(accepted)) => format!("allowed: {accepted}"),
        Err(refusal) => format!("refused: {refusal}"),
    };
    if args.json {
        let mut v = serde_json::to_value(&img)?;
        if let Some((idx, decision)) = &index {
            v["index"] = serde_json::json!({ "digest": idx.digest, "variants": idx.variants, "decision": decision });
        }
        v["policy"] = serde_json::json!({
            "allowed": verdict.is_ok(),
            "status": status,
            "signatures": signatures.as_ref().map_or(0, |s| s.signatures.len()),
            "bundles": signatures.as_ref().map_or(0, |s| s.bundles.len()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &img.config;
    println!("reference:  {spec}");
    println!("image id:   {}", img.digest);
    println!("source:     {}", img.source_ref);
    println!(
        "platform:   {}",
        img.platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("created:    {}", img.created.as_deref().unwrap_or("-"));
    println!("store:      {}", img.scope);
    println!(
        "squashfs:   {} ({}, sha256 {})",
        img.squashfs.display(),
        human_size(img.size),
        img.squashfs_sha256
    );
    match &img.verity_root {
        Some(root) => println!("hash tree:  {} (root {root}; `node.staging = \"in-place\"` serves the image checked against it)", img.squashfs.with_file_name(shoal::image::verity::FILE_NAME).display()),
        None => println!("hash tree:  none (stored by an older Shoal; nodes copy it even with `node.staging = \"in-place\"`)"),
    }
    match &signatures {
        Some(s) => println!(
            "signatures: {} stored, {} sigstore bundles (fetched at pull)",
            s.signatures.len(),
            s.bundles.len()
        ),
        None => println!("signatures: none stored"),
    }
    println!("policy:     {status}");
    println!("entrypoint: {:?}", c.entrypoint);
    println!("cmd:        {:?}", c.cmd);
    println!("workdir:    {}", c.workdir.as_deref().unwrap_or("/"));
    println!("user:       {}", c.user.as_deref().unwrap_or("-"));
    for e in &c.env {
        println!("env:        {e}");
    }
    for (k, v) in &c.labels {
        println!("label:      {k}={v}");
    }
    if let Some((idx, decision)) = &index {
        println!("index:      {} (this node's choice of its entries):", idx.digest);
        print!("{}", decision.render());
        for (key, d) in &idx.variants {
            println!("variant:    {key} {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
