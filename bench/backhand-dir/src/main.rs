//! backhand-dir ROOT OUT: packs the unpacked tree ROOT into OUT with
//! backhand (zstd level 3, 128 KiB blocks), files read lazily from disk, as
//! DEPENDENCIES.md measured it. Hard links become copies and xattrs are
//! dropped: backhand 0.25 writes neither.
use backhand::compression::{CompressionOptions, Compressor, Zstd};
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn walk(fs: &mut FilesystemWriter, root: &Path, dir: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = Path::new("/").join(p.strip_prefix(root).unwrap());
        let h = NodeHeader::new((m.mode() & 0o7777) as u16, m.uid(), m.gid(), m.mtime() as u32);
        let t = m.file_type();
        if t.is_dir() {
            fs.push_dir(&rel, h).unwrap();
            walk(fs, root, &p);
        } else if t.is_symlink() {
            fs.push_symlink(std::fs::read_link(&p).unwrap(), &rel, h).unwrap();
        } else if t.is_file() {
            fs.push_file_from_path(&p, &rel, h).unwrap();
        } else if t.is_fifo() {
            fs.push_fifo(&rel, h).unwrap();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = Path::new(&args[1]);
    let mut fs = FilesystemWriter::default();
    fs.set_block_size(128 * 1024);
    let opts = CompressionOptions::Zstd(Zstd { compression_level: 3 });
    fs.set_compressor(FilesystemCompressor::new(Compressor::Zstd, Some(opts)).unwrap());
    walk(&mut fs, root, root);
    let out = std::fs::File::create(&args[2]).unwrap();
    fs.write(std::io::BufWriter::new(out)).unwrap();
}
