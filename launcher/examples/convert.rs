//! Converts layer blobs to a squashfs with the library, for `bench/convert.sh`:
//!
//!     convert OUT.sqfs [--compression zstd:3] LAYER...      (bottom layer first)
//!
//! Prints the summary and the wall time on stderr (and, with
//! SHOAL_BENCH_HASH set, the time of the final check and hash alone).
use shoal::image::convert::{
    check_squashfs, layers_to_squashfs, Layer, LayerCompression, SquashOptions,
};
use std::path::PathBuf;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = SquashOptions::default();
    if let Some(i) = args.iter().position(|a| a == "--compression") {
        opts.compression = args[i + 1].parse().expect("compression");
        args.drain(i..i + 2);
    }
    let (out, layers) = args.split_first().expect("usage: convert OUT LAYER...");
    let layers: Vec<Layer> = layers
        .iter()
        .map(|p| Layer {
            path: PathBuf::from(p),
            compression: LayerCompression::Gzip,
            digest: p.rsplit('/').next().unwrap_or(p).to_string(),
            arriving: None,
        })
        .collect();
    let t = std::time::Instant::now();
    match layers_to_squashfs(&layers, out.as_ref(), &opts, &|_| {}) {
        Ok(s) => {
            eprintln!("{s:?} in {:.2} s", t.elapsed().as_secs_f64());
            if std::env::var_os("SHOAL_BENCH_HASH").is_some() {
                // How much of that the final check and hash take.
                let t = std::time::Instant::now();
                check_squashfs(out.as_ref()).expect("check");
                eprintln!("check and sha256 alone: {:.3} s", t.elapsed().as_secs_f64());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
