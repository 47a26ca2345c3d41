#!/usr/bin/env python3
"""Hostile OCI images for tests/hostile_images.rs, written as an OCI layout.

    mkhostile.py OUTDIR [BOMB_MIB]
    mkhostile.py --big OUTDIR MIB      (tests/kill_points.rs, tests/multi_user.rs)

Every image is a busybox base layer (the host's busybox-static, so the images
run) plus the hostile part, crafted entry by entry with tarfile (see
mklayers.py, whose helpers this reuses). Tags:

Refused when pulled (the pull must fail with a clear error and leave nothing):
- dotdot:          `../../../../tmp/i18-hostile-escaped`
- symlink-layer:   layer 2 `a -> ../../../../tmp`, layer 3 writes `a/i18-hostile-escaped`
- symlink-entry:   `b -> /tmp` and `b/i18-hostile-escaped` in one layer
- hardlink-out:    a hard link to `../../../../etc/shadow`
- hardlink-host:   a hard link to `/etc/shadow` (taken inside the image, where
                   there is no such file)
- whiteout-dotdot: `etc/.wh...` (a whiteout of `etc/..`, the root)
- duplicate:       the same file twice in one layer

Accepted, and harmless in the container:
- absolute:        `/etc/i18-absolute` (lands inside the image)
- devices:         `/etc/i18-mem` (char 1:1, the host's /dev/mem) and
                   `/etc/i18-sda` (block 8:0): dropped
- setuid:          `/usr/bin/id`, busybox setuid root (mode 4755)
- caps:            `/usr/local/bin/cat`, busybox with every file capability
                   (`security.capability` xattr)
- host-links:      `/etc/i18-shadow -> /etc/shadow`, `/etc/passwd -> /etc/shadow`
                   and `/etc/group -> /proc/1/environ`: resolved inside the
                   image, never on the host (root reads /etc/passwd and
                   /etc/group of the image when it builds the container)
- xattrs:          `/etc/i18-xattrs` and `/etc/i18-opaque/` carrying overlayfs
                   markers (`trusted.overlay.opaque`, `.redirect`, `.metacopy`,
                   `user.overlay.*`), an SELinux label and other `trusted.*`:
                   all dropped by the converter; `user.i18` kept
- deep:            a file 1000 directories deep
- wide:            5000 files in one directory
- nonutf8:         names that are not UTF-8
- bomb:            one file of BOMB_MIB MiB of zeros (default 1024) in a
                   gzip layer of about a thousandth of that
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mklayers import MTIME, Layout, d, entry, f, tar_bytes  # noqa: E402

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "cat", "id", "ls", "test", "echo", "grep", "wc", "stat", "find", "head", "true", "tr"]


def base():
    with open(BUSYBOX, "rb") as fh:
        bb = fh.read()
    entries = [d("bin"), f("bin/busybox", bb, mode=0o755)]
    entries += [entry("bin/" + a, "symlink", link="busybox") for a in APPLETS]
    entries += [d("etc"), f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                f("etc/group", b"root:x:0:\n"), f("etc/i18-hostile", b"hostile\n"),
                d("usr"), d("usr/bin"), d("usr/local"), d("usr/local/bin"), d("tmp", mode=0o1777)]
    return entries, bb


def caps_xattr():
    # struct vfs_cap_data, revision 2: magic|effective, then permitted and
    # inheritable, low and high words: every capability, effective.
    raw = (0x02000000 | 1).to_bytes(4, "little")
    raw += (0xFFFFFFFF).to_bytes(4, "little") + (0).to_bytes(4, "little")
    raw += (0x000001FF).to_bytes(4, "little") + (0).to_bytes(4, "little")
    return raw.decode("utf-8", "surrogateescape")


def block(name, dev):
    ti, data = entry(name, "chr", mode=0o666, dev=dev)
    ti.type = tarfile.BLKTYPE
    return ti, data


def nonutf8(name):
    return name.decode("utf-8", "surrogateescape")


class Bomb:
    """A gzip layer holding one file of zeros, streamed (never in memory)."""

    def __init__(self, mib):
        self.mib = mib

    def write(self, path):
        h = hashlib.sha256()
        size = self.mib << 20

        class Tee:
            def __init__(self, fh):
                self.fh = fh

            def write(self, b):
                h.update(b)
                return self.fh.write(b)

            def flush(self):
                pass

        with open(path, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
                tee = Tee(gz)
                ti = tarfile.TarInfo("zeros")
                ti.size, ti.mtime, ti.mode = size, MTIME, 0o644
                tee.write(ti.tobuf(format=tarfile.PAX_FORMAT))
                chunk = bytes(1 << 20)
                for _ in range(self.mib):
                    tee.write(chunk)
                tee.write(bytes(1024))  # end of archive
        return "sha256:" + h.hexdigest()


class HostileLayout(Layout):
    def bomb_image(self, tag, base_entries, mib):
        base_raw = tar_bytes(base_entries)
        descs = [self.blob(gzip.compress(base_raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")]
        diff_ids = ["sha256:" + hashlib.sha256(base_raw).hexdigest()]
        tmp = os.path.join(self.root, "bomb.tmp")
        diff_ids.append(Bomb(mib).write(tmp))
        with open(tmp, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        size = os.path.getsize(tmp)
        os.rename(tmp, os.path.join(self.root, "blobs", "sha256", digest))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": "sha256:" + digest, "size": size})
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cdesc = self.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": cdesc, "layers": descs}
        mdesc = self.blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(mdesc)


def big(outdir, mib):
    """Tag `big`: the busybox base plus MIB MiB of random bytes in an
    uncompressed layer (`/big/random`, and `/big/mark` holding its sha256),
    so that each phase of a pull (download, conversion) lasts long enough
    for a test to stop the puller inside it. Tag `small`: the base alone."""
    out = HostileLayout(outdir)
    b, _ = base()
    data = os.urandom(mib << 20)
    mark = hashlib.sha256(data).hexdigest().encode() + b"\n"
    out.image("big", [b, [d("big"), f("big/random", data), f("big/mark", mark)]], ["gzip", "tar"])
    out.image("small", [b, [f("etc/i18-small", b"small\n")]], ["gzip"])
    out.close()


def main():
    if sys.argv[1] == "--big":
        return big(sys.argv[2], int(sys.argv[3]))
    out = HostileLayout(sys.argv[1])
    bomb_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    b, bb = base()
    esc = "i18-hostile-escaped"
    images = {
        "dotdot": [[f("ok", b"ok\n"), f("../../../../tmp/" + esc, b"escaped\n")]],
        "symlink-layer": [[entry("a", "symlink", link="../../../../tmp")], [f("a/" + esc, b"escaped\n")]],
        "symlink-entry": [[entry("b", "symlink", link="/tmp"), f("b/" + esc, b"escaped\n")]],
        "hardlink-out": [[entry("shadow", "hardlink", link="../../../../etc/shadow")]],
        "hardlink-host": [[entry("etc/i18-shadow", "hardlink", link="/etc/shadow")]],
        "whiteout-dotdot": [[f("etc/.wh...")]],
        "duplicate": [[f("etc/i18-dup", b"one\n"), f("etc/i18-dup", b"two\n")]],
        "absolute": [[f("/etc/i18-absolute", b"inside\n")]],
        "devices": [[entry("etc/i18-mem", "chr", mode=0o666, dev=(1, 1)), block("etc/i18-sda", (8, 0))]],
        "setuid": [[f("usr/bin/id", bb, mode=0o4755), f("usr/bin/i18-sgid", b"#!/bin/sh\nid\n", mode=0o2755, gid=0)]],
        "caps": [[f("usr/local/bin/cat", bb, mode=0o755,
                    pax={"SCHILY.xattr.security.capability": caps_xattr()})]],
        "host-links": [[entry("etc/i18-shadow", "symlink", link="/etc/shadow"),
                        entry("etc/passwd", "symlink", link="/etc/shadow"),
                        entry("etc/group", "symlink", link="/proc/1/environ")]],
        "xattrs": [[f("etc/i18-xattrs", b"xattrs\n", pax={
                        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                        "SCHILY.xattr.trusted.overlay.metacopy": "",
                        "SCHILY.xattr.user.overlay.redirect": "/etc",
                        "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
                        "SCHILY.xattr.trusted.i18": "root-only",
                        "SCHILY.xattr.user.i18": "kept"}),
                    d("etc/i18-opaque", pax={
                        "SCHILY.xattr.trusted.overlay.opaque": "y",
                        "SCHILY.xattr.user.overlay.opaque": "y"})]],
        "deep": [[f("deep/" + "d/" * 1000 + "bottom", b"bottom\n")]],
        "wide": [[d("wide")] + [f("wide/f%05d" % i) for i in range(5000)]],
        "nonutf8": [[d("nonutf8"), f(nonutf8(b"nonutf8/caf\xe9"), b"latin-1\n"),
                     d(nonutf8(b"nonutf8/\xff\xfe")), f(nonutf8(b"nonutf8/\xff\xfe/x"), b"x\n")]],
    }
    for tag, layers in images.items():
        out.image(tag, [b] + layers, ["gzip"])
    out.bomb_image("bomb", b, bomb_mib)
    out.close()


if __name__ == "__main__":
    main()
