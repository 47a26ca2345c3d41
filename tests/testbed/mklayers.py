#!/usr/bin/env python3
"""Hand-made OCI images that exercise the layer rules, written as an OCI layout.

    mklayers.py OUTDIR

writes OUTDIR/{oci-layout,index.json,blobs/} with these tags (layers are
crafted byte by byte with tarfile, which no image builder would produce):

- layers:  three layers (gzip, gzip, plain tar) with whiteouts, an opaque
           directory, a file replaced by a directory and a directory by a
           file, a hard link, symlinks, a setuid file, owners, a user xattr,
           a device node and a fifo, a long name. The expected flattened tree
           is what `umoci unpack` makes of it (less the device node).
- layers-zstd: the same layers, zstd-compressed (needs the `zstd` command).
- evil:    layer 1 makes `a -> ../../../../../tmp`, layer 2 writes
           `a/shoal-evil-escaped` through it.
- evil-samelayer: `b -> /tmp` and `b/shoal-evil-escaped` in one layer.
- evil-dotdot:    `../../../../tmp/shoal-evil-escaped`.
- evil-hardlink:  a hard link to `../../../../etc/shadow`.
- evil-absolute:  `/tmp/shoal-evil-absolute` (harmless once taken relative
                  to the root: it must land at /tmp inside the image).

Used by images.d/20-layers.sh (pushed to the test registry) and by
tests/image_convert.rs (converted directly).
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

MTIME = 1700000000


def entry(name, kind="file", data=b"", mode=None, uid=0, gid=0, link="", pax=None, dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.mtime = MTIME
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}
    ti.type = types[kind]
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.linkname = link
    ti.devmajor, ti.devminor = dev
    if pax:
        ti.pax_headers = dict(pax)
    if kind == "file":
        ti.size = len(data)
        return ti, data
    return ti, None


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def f(name, data=b"", **kw):
    return entry(name, "file", data, **kw)


def d(name, **kw):
    return entry(name, "dir", **kw)


LONG = "long/" + "n" * 60 + "/" + "m" * 80 + "/file-with-a-long-name"

LAYERS = [
    [  # bottom
        d("etc"), f("etc/shoal-test-image", b"layers\n"),
        f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        d("gone"), f("gone/a", b"a\n"), d("gone/sub"), f("gone/sub/b", b"b\n"),
        d("wh"), f("wh/remove-me", b"bye\n"), f("wh/keep", b"kept\n"),
        d("opq", mode=0o750), f("opq/old1", b"old\n"), d("opq/oldsub"), f("opq/oldsub/x", b"x\n"),
        f("f2d", b"was a file\n"),
        d("d2f"), f("d2f/child", b"child\n"),
        d("data"),
        f("data/orig", b"linked content\n", pax={"SCHILY.xattr.user.shoal": "test-xattr"}),
        entry("data/hardlink", "hardlink", link="data/orig"),
        entry("link-to-keep", "symlink", link="wh/keep"),
        entry("abs-link", "symlink", link="/etc/passwd"),
        d("bin"), f("bin/suid", b"#!/bin/sh\necho suid\n", mode=0o4755),
        d("shared", mode=0o1777),
        d("home"), d("home/u1000", uid=1000, gid=1000, mode=0o700),
        f("home/u1000/file", b"owned\n", uid=1000, gid=1000, mode=0o600),
        d("dev"), entry("dev/null", "chr", mode=0o666, dev=(1, 3)),
        d("run"), entry("run/fifo", "fifo"),
        f(LONG, b"long\n"),
    ],
    [  # middle
        f(".wh.gone"), f("wh/.wh.remove-me"),
        d("opq", mode=0o700), f("opq/.wh..wh..opq"), f("opq/new", b"new\n"),
        d("f2d"), f("f2d/inside", b"now a dir\n"),
        f("d2f", b"was a dir\n"),
        f("etc/shoal-test-image", b"layers (layer 2)\n"),
        f("data/second", b"second layer\n"),
    ],
    [  # top, uncompressed
        f("etc/shoal-test-image", b"layers\n"),
        f("top", b"top layer\n", mode=0o640, uid=12, gid=34),
        d("gone"), f("gone/recreated", b"again\n"),
    ],
]

EVIL = {
    "evil": [
        [entry("a", "symlink", link="../../../../../tmp")],
        [f("a/shoal-evil-escaped", b"escaped\n")],
    ],
    "evil-samelayer": [[entry("b", "symlink", link="/tmp"), f("b/shoal-evil-escaped", b"escaped\n")]],
    "evil-dotdot": [[f("ok", b"ok\n"), f("../../../../tmp/shoal-evil-escaped", b"escaped\n")]],
    "evil-hardlink": [[entry("shadow", "hardlink", link="../../../../etc/shadow")]],
    "evil-absolute": [[f("/tmp/shoal-evil-absolute", b"inside\n")]],
}


class Layout:
    def __init__(self, root):
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        with open(os.path.join(root, "oci-layout"), "w") as fh:
            json.dump({"imageLayoutVersion": "1.0.0"}, fh)
        self.manifests = []

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.root, "blobs", "sha256", digest), "wb") as fh:
            fh.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def image(self, tag, layers, compress):
        descs, diff_ids = [], []
        for i, entries in enumerate(layers):
            raw = tar_bytes(entries)
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
            how = compress[i] if i < len(compress) else compress[-1]
            if how == "gzip":
                data, mt = gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
            elif how == "zstd":
                data = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, check=True,
                                      stdout=subprocess.PIPE).stdout
                mt = "application/vnd.oci.image.layer.v1.tar+zstd"
            else:
                data, mt = raw, "application/vnd.oci.image.layer.v1.tar"
            descs.append(self.blob(data, mt))
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"org.shoal.test": tag}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cdesc = self.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cdesc, "layers": descs}
        mdesc = self.blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(mdesc)

    def close(self):
        with open(os.path.join(self.root, "index.json"), "w") as fh:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": self.manifests}, fh)


def main():
    out = Layout(sys.argv[1])
    out.image("layers", LAYERS, ["gzip", "gzip", "tar"])
    if shutil.which("zstd"):
        out.image("layers-zstd", LAYERS, ["zstd"])
    for tag, layers in EVIL.items():
        out.image(tag, layers, ["gzip"])
    out.close()


if __name__ == "__main__":
    main()
