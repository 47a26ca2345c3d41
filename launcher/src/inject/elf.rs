//! What the ABI check needs from an ELF shared object: its SONAME, the
//! libraries it needs, the symbol versions it needs from each, and the
//! symbol versions it defines. Read from the bytes (goblin), never guessed
//! from a file name.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfInfo {
    /// DT_SONAME, when the file has one (programs usually do not).
    pub soname: Option<String>,
    /// DT_NEEDED, in file order.
    pub needed: Vec<String>,
    /// DT_RUNPATH and DT_RPATH entries, `:`-split, `$ORIGIN` not expanded.
    pub search_paths: Vec<String>,
    /// Version needs (`.gnu.version_r`): needed file -> version names
    /// (`libc.so.6` -> {`GLIBC_2.2.5`, `GLIBC_2.34`}).
    pub version_needs: BTreeMap<String, BTreeSet<String>>,
    /// Version definitions (`.gnu.version_d`) other than the file's own base
    /// entry: what `libc.so.6` really provides (`GLIBC_2.2.5` ... `GLIBC_2.36`).
    pub version_defs: BTreeSet<String>,
    /// 64-bit class.
    pub is_64: bool,
    /// `e_machine` (62 = x86-64): a library of another architecture is never
    /// a counterpart, whatever its name.
    pub machine: u16,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// VER_FLG_BASE: the version definition that names the file itself.
const VER_FLG_BASE: u16 = 1;

/// Whether `bytes` start like an ELF file (linker scripts named `libc.so`
/// and other text files do not).
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF_MAGIC)
}

/// Parses the dynamic-linking facts of an ELF file.
pub fn parse(bytes: &[u8]) -> Result<ElfInfo, String> {
    if !is_elf(bytes) {
        return Err("not an ELF file".into());
    }
    // Image files are untrusted input: a parser panic on a crafted file
    // must become "unreadable", not end the check.
    let elf = std::panic::catch_unwind(|| goblin::elf::Elf::parse(bytes))
        .map_err(|_| "unreadable ELF: the parser gave up on it".to_string())?
        .map_err(|e| format!("unreadable ELF: {e}"))?;
    let strtab = &elf.dynstrtab;
    let name = |off: usize| strtab.get_at(off).unwrap_or("").to_string();

    let mut version_needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            let versions = version_needs.entry(name(need.vn_file)).or_default();
            versions.extend(need.iter().map(|aux| name(aux.vna_name)));
        }
    }
    let mut version_defs = BTreeSet::new();
    if let Some(verdef) = &elf.verdef {
        for def in verdef.iter() {
            if def.vd_flags & VER_FLG_BASE != 0 {
                continue;
            }
            // The first auxiliary entry is the version's own name; the
            // others name its parents, which are defined entries themselves.
            if let Some(aux) = def.iter().next() {
                version_defs.insert(name(aux.vda_name));
            }
        }
    }
    let search_paths = elf
        .runpaths
        .iter()
        .chain(elf.rpaths.iter())
        .flat_map(|p| p.split(':'))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    Ok(ElfInfo {
        soname: elf.soname.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        search_paths,
        version_needs,
        version_defs,
        is_64: elf.is_64,
        machine: elf.header.e_machine,
    })
}

/// A DT_RUNPATH or DT_RPATH entry with `$ORIGIN` and `${ORIGIN}` replaced
/// by `origin`, the directory of the object that names it, as ld.so does.
/// Byte for byte: a directory name need not be UTF-8.
pub fn expand_origin(entry: &Path, origin: &Path) -> PathBuf {
    let origin = origin.as_os_str().as_bytes();
    let mut rest = entry.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let Some(&b) = rest.first() {
        if let Some(after) = rest.strip_prefix(b"${ORIGIN}").or_else(|| rest.strip_prefix(b"$ORIGIN")) {
            out.extend_from_slice(origin);
            rest = after;
        } else {
            out.push(b);
            rest = &rest[1..];
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The newest of the `PREFIX_x.y.z` versions in `defs` (`GLIBC_2.36`), by
/// number rather than by string order, for messages.
pub fn newest<'a>(defs: &'a BTreeSet<String>, prefix: &str) -> Option<&'a str> {
    defs.iter()
        .filter_map(|d| {
            Some((
                version_numbers(d.strip_prefix(prefix)?.strip_prefix('_')?)?,
                d,
            ))
        })
        .max()
        .map(|(_, d)| d.as_str())
}

fn version_numbers(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_expanded_in_both_spellings() {
        let o = Path::new("/opt/app/lib");
        assert_eq!(expand_origin(Path::new("$ORIGIN/../lib64"), o), Path::new("/opt/app/lib/../lib64"));
        assert_eq!(expand_origin(Path::new("${ORIGIN}:x/$ORIGIN"), o), Path::new("/opt/app/lib:x//opt/app/lib"));
        assert_eq!(expand_origin(Path::new("/usr/lib/$ORIGINAL"), o), Path::new("/usr/lib//opt/app/libAL"));
        assert_eq!(expand_origin(Path::new("/usr/lib"), o), Path::new("/usr/lib"));
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"/d\xff"));
        assert_eq!(expand_origin(Path::new("$ORIGIN/x"), raw).as_os_str().as_bytes(), b"/d\xff/x");
    }

    #[test]
    fn newest_compares_numbers_not_strings() {
        let defs: BTreeSet<String> = ["GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.9", "GLIBC_PRIVATE"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(newest(&defs, "GLIBC"), Some("GLIBC_2.17"));
        assert_eq!(newest(&defs, "GLIBCXX"), None);
    }

    #[test]
    fn text_files_are_not_elf() {
        assert!(parse(b"/* GNU ld script */ INPUT(libc.so.6)")
            .unwrap_err()
            .contains("not an ELF"));
    }

    #[test]
    fn reads_the_running_libc() {
        // The host's own C library defines its GLIBC_2.x versions.
        let path = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib64/libc.so.6",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        let Some(path) = path else { return };
        let info = parse(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        assert!(
            info.version_defs.contains("GLIBC_2.2.5") || info.version_defs.contains("GLIBC_2.17")
        );
        assert!(
            !info.version_defs.contains("libc.so.6"),
            "base entry leaked"
        );
    }
}
