//! One tar entry on its way through: the metadata read from a layer's entry
//! (mode, owner, time, the extended attributes squashfs can store) and the
//! flattened tar stream written for the squashfs writer, xattrs as PAX records.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Metadata carried from a layer entry to the output.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn read_meta<R: Read>(e: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = e.header();
    let mut m = Meta {
        mode: h.mode()? & 0o7777,
        uid: h.uid()?,
        gid: h.gid()?,
        mtime: h.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Some(exts) = e.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let (k, v) = (ext.key_bytes(), ext.value_bytes());
            let num = || {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse().ok())
            };
            match k {
                b"uid" => m.uid = num().unwrap_or(m.uid),
                b"gid" => m.gid = num().unwrap_or(m.gid),
                b"mtime" => m.mtime = num().unwrap_or(m.mtime),
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        if keep_xattr(name) {
                            m.xattrs.push((name.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
        }
    }
    Ok(m)
}

/// Which extended attributes go into the image (issue 18's review of what
/// an untrusted layer may carry):
/// - `user.*`: the image's own data, kept; but not `user.overlay.*`, which
///   an overlay mounted with `userxattr` (an unprivileged writable
///   `shoal run`) reads as whiteouts, opaque markers and redirects;
/// - `security.capability`: kept, and inert (every image mount is
///   `nosuid`, where the kernel ignores file capabilities, and tasks run
///   with `no_new_privs`; `tests/hostile_images.rs` runs such a binary);
/// - other `security.*` (SELinux, SMACK, AppArmor attachment, IMA/EVM
///   labels): the host's security policy labels files, not an image from a
///   registry: dropped;
/// - `trusted.*`: root's namespace (needs `CAP_SYS_ADMIN` to set);
///   overlayfs reads `trusted.overlay.*` in a privileged overlay (named
///   and writable containers under Slurm) and nothing else of Shoal's
///   needs the rest: dropped;
/// - others (POSIX ACLs in `system.`): squashfs cannot store them; dropped
///   rather than failing the image.
pub(crate) fn keep_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"user.") && !name.starts_with(b"user.overlay.")) || name == b"security.capability"
}

/// The flattened tar stream going to the writer.
pub(super) struct Out<W: Write>(pub(super) tar::Builder<W>);

impl<W: Write> Out<W> {
    pub(super) fn header(
        &mut self,
        kind: tar::EntryType,
        meta: &Meta,
        size: u64,
    ) -> io::Result<tar::Header> {
        if !meta.xattrs.is_empty() {
            self.pax_xattrs(&meta.xattrs)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime);
        h.set_size(size);
        Ok(h)
    }

    pub(super) fn data<R: Read>(
        &mut self,
        kind: tar::EntryType,
        path: &[u8],
        meta: &Meta,
        size: u64,
        data: R,
    ) -> io::Result<()> {
        let mut h = self.header(kind, meta, size)?;
        self.0
            .append_data(&mut h, Path::new(OsStr::from_bytes(path)), data.take(size))
    }

    pub(super) fn link(
        &mut self,
        kind: tar::EntryType,
        path: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> io::Result<()> {
        let mut h = self.header(kind, meta, 0)?;
        self.0.append_link(
            &mut h,
            Path::new(OsStr::from_bytes(path)),
            Path::new(OsStr::from_bytes(target)),
        )
    }

    /// A PAX extended header carrying `SCHILY.xattr.NAME` records, which
    /// tar2sqfs applies to the next entry.
    pub(super) fn pax_xattrs(&mut self, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        append_pax_xattrs(&mut self.0, xattrs)
    }
}

/// Appends a PAX extended header carrying `SCHILY.xattr.NAME` records for
/// `xattrs` (name, value), which applies to the next entry.
pub(crate) fn append_pax_xattrs<W: Write>(tar: &mut tar::Builder<W>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    let mut body = Vec::new();
    for (name, value) in xattrs {
        let key = [b"SCHILY.xattr.".as_slice(), name].concat();
        body.extend(pax_record(&key, value));
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeader")?;
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    h.set_cksum();
    tar.append(&h, body.as_slice())
}

/// One PAX record: "LEN KEY=VALUE\n", where LEN counts itself.
pub(crate) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_and_unstorable_ones_are_dropped() {
        let mut out = Out(tar::Builder::new(Vec::new()));
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = [
            ("user.a", "1"),
            ("security.capability", "2"),
            ("system.posix_acl_access", "3"),
            ("trusted.overlay.opaque", "y"),
            ("trusted.x", "4"),
            ("user.overlay.redirect", "/etc"),
            ("security.selinux", "system_u:object_r:shadow_t:s0"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let meta = Meta {
            mode: 0o4755,
            uid: 7,
            gid: 8,
            mtime: 9,
            xattrs,
        };
        out.data(tar::EntryType::Regular, b"f", &meta, 2, &b"hi"[..])
            .unwrap();
        let bytes = out.0.into_inner().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut e = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"f");
        let m = read_meta(&mut e).unwrap();
        assert_eq!((m.mode, m.uid, m.gid, m.mtime), (0o4755, 7, 8, 9));
        let names: Vec<&[u8]> = m.xattrs.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            names,
            [&b"user.a"[..], b"security.capability"]
        );
    }

    #[test]
    fn pax_record_counts_its_own_length() {
        let r = pax_record(b"SCHILY.xattr.user.a", b"b");
        assert_eq!(r, b"25 SCHILY.xattr.user.a=b\n");
        assert_eq!(r.len(), 25);
        // Crossing a power of ten: 98 bytes plus a 2-digit length would be
        // 100, which needs 3 digits.
        assert_eq!(pax_record(b"k", &[b'v'; 93]).len(), 99);
        let r = pax_record(b"k", &[b'v'; 94]);
        assert_eq!(r.len(), 101);
        assert!(r.starts_with(b"101 k="));
    }
}
