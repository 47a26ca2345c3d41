#!/usr/bin/env bash
# Conversion benchmark: layer blobs of shoal/debian-mpich:12 (two gzip layers,
# whiteouts) to one zstd:3 squashfs, by every writer considered, in one run on
# this machine. Results: bench/results/convert.md (hyperfine, wall time) and
# convert-rss.txt (peak memory, output size); the figures in BENCHMARKS.md
# come from here.
#
#   bash bench/convert.sh            (as root; the test bed must be up)
#
# Candidates:
#   shoal      layers_to_squashfs: top-first flattening in Rust, one
#              flattened tar streamed into tar2sqfs -j$(nproc)
#   tar2sqfs   the bottom layer alone, gunzip | tar2sqfs -j1 / -j2 (the
#              writer's own speed, and what its threads buy)
#   mksquashfs from the unpacked tree (4.5.1 has no -tar; the tree must be
#              unpacked to disk first: umoci unpack, timed separately)
#   backhand   0.25 in-process from the unpacked tree (bench/backhand-dir)
#   gunzip     of the bottom layer: the floor of any gzip-layer pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
RUNS=${RUNS:-5}
W=${BENCH_DIR:-/var/tmp/shoal-bench-convert}
OUT=bench/results
mkdir -p "$W" "$OUT"

cargo build -q --release -p shoal --example convert
cargo build -q --release --manifest-path bench/backhand-dir/Cargo.toml
CONVERT=$PWD/target/release/examples/convert
BACKHAND=$PWD/bench/backhand-dir/target/release/backhand-dir

rm -rf "$W/oci"
skopeo copy -q --src-cert-dir "$TLS_DIR/skopeo" \
    "docker://$REGISTRY_ADDR/shoal/debian-mpich:12" "oci:$W/oci:12"
mapfile -t LAYERS < <(python3 - "$W/oci" <<'PY'
import json, sys
root = sys.argv[1]
idx = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
for l in m["layers"]:
    print(f"{root}/blobs/sha256/" + l["digest"][7:])
PY
)
BOTTOM=${LAYERS[0]}
rm -rf "$W/bundle"
umoci unpack --image "$W/oci:12" "$W/bundle" >/dev/null
TREE=$W/bundle/rootfs
{
    echo "image: shoal/debian-mpich:12, layers: ${#LAYERS[@]}, compressed $(du -cb "${LAYERS[@]}" | tail -1 | cut -f1) bytes,"
    echo "unpacked $(du -sb --apparent-size "$TREE" | cut -f1) bytes, $(find "$TREE" | wc -l) paths; $(nproc) cores"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure alike)"
} > "$OUT/convert-image.txt"

TAR2SQFS="tar2sqfs -q -f -c zstd -X level=3 -b 131072"
hyperfine --runs "$RUNS" --warmup 1 --export-markdown "$OUT/convert.md" \
    -n "shoal layers_to_squashfs (streaming, tar2sqfs -j$(nproc))" "$CONVERT $W/shoal.sqfs ${LAYERS[*]}" \
    -n "gunzip bottom layer (floor)" "gzip -dc $BOTTOM >/dev/null" \
    -n "gunzip | tar2sqfs -j1, bottom layer" "gzip -dc $BOTTOM | $TAR2SQFS -j1 $W/t1.sqfs" \
    -n "gunzip | tar2sqfs -j2, bottom layer" "gzip -dc $BOTTOM | $TAR2SQFS -j2 $W/t2.sqfs" \
    -n "umoci unpack to disk (needed by the next two)" "rm -rf $W/b2 && umoci unpack --image $W/oci:12 $W/b2 >/dev/null" \
    -n "mksquashfs unpacked tree (zstd 3)" "mksquashfs $TREE $W/mk.sqfs -noappend -quiet -no-progress -comp zstd -Xcompression-level 3" \
    -n "backhand 0.25 unpacked tree (zstd 3)" "$BACKHAND $TREE $W/bh.sqfs"

# Peak memory and output size, one run each.
{
    printf '%-40s %10s %12s %14s\n' method seconds peak_rss_kb output_bytes
    m() {
        local name=$1 out=$2; shift 2
        local t
        t=$( { /usr/bin/time -f '%e %M' bash -c "$*" >/dev/null; } 2>&1 | tail -1)
        printf '%-40s %10s %12s %14s\n' "$name" ${t% *} ${t#* } "$(stat -c %s "$out" 2>/dev/null || echo -)"
    }
    m shoal "$W/shoal.sqfs" "$CONVERT $W/shoal.sqfs ${LAYERS[*]} 2>/dev/null"
    m "tar2sqfs -j2 (bottom layer)" "$W/t2.sqfs" "gzip -dc $BOTTOM | $TAR2SQFS -j2 $W/t2.sqfs"
    m "mksquashfs tree" "$W/mk.sqfs" "mksquashfs $TREE $W/mk.sqfs -noappend -quiet -no-progress -comp zstd -Xcompression-level 3"
    m "backhand tree" "$W/bh.sqfs" "$BACKHAND $TREE $W/bh.sqfs"
} > "$OUT/convert-rss.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/convert-image.txt"
cat "$OUT/convert-image.txt" "$OUT/convert.md" "$OUT/convert-rss.txt"
rm -rf "$W"
