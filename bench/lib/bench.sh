# Shared by bench/*.sh (sourced, as root, from the repository root, after
# tests/testbed/common.sh): the rivals' namespace, how every launcher is
# entered as the test user, the benchmark images, statistics and the one
# results format that bench/summary.sh prints.
#
# Rivals: Debian sid's Apptainer, Charliecloud and podman live in a
# debootstrap tree made by the test bed's own debootstrap_tree (common.sh;
# package list in bench/lib/trees.sh), entered like the chroot clusters
# (chroot-cluster.sh's start_holder: a process holds a private mount
# namespace whose root is the tree by pivot_root, since a chroot(2)ed
# process may not create the user namespaces every rival needs). The host's
# /proc, /sys, /dev, /tmp, /home and the test-bed state are bound in; the
# network namespace is the host's (the test registry on 127.0.0.1).
#
# Every timed command, Shoal's and bare /bin/true's included, is started the
# same way: `nsenter -t HOLDER -m -S UID -G GID -- CMD` from one root shell,
# HOLDER being that shell itself for the host's tools (Shoal, Charliecloud
# 0.31) and the rivals' holder for sid's. So each figure carries the same
# nsenter exec and setns, and "bare" shows how much that is.

source tests/testbed/chroot-cluster.sh
source bench/lib/trees.sh

BENCH_STATE=$TESTBED_STATE/bench
RIVALS=bench-rivals-sid          # holder name (chroot-cluster.sh's "series")
BENCH_UID=$(id -u "$TESTBED_USER")
BENCH_GID=$(id -g "$TESTBED_USER")
# Alice's own directory for rival stores (podman's, Apptainer's cache):
# on the same file system as her home, reachable from both namespaces.
BENCH_HOME=/home/$TESTBED_USER/bench-rivals
RESULTS_DIR=${RESULTS_DIR:-bench/results}

# Writes the rivals tree's configuration (idempotent, as root, before the
# holder starts): the test user with the host's ids and subordinate ids,
# the test CA trusted system-wide and by containers/image, and podman's
# settings for a machine without systemd.
rivals_configure() {  # rivals_configure TREE
    local tree=$1
    if ! chroot "$tree" getent passwd "$TESTBED_USER" >/dev/null; then
        chroot "$tree" groupadd -g "$BENCH_GID" "$TESTBED_USER"
        chroot "$tree" useradd -M -u "$BENCH_UID" -g "$BENCH_GID" -d "/home/$TESTBED_USER" -s /bin/bash "$TESTBED_USER"
    fi
    # podman's rootless user namespace maps the user's subordinate ids with
    # newuidmap/newgidmap (setuid root, from uidmap): the host's ranges.
    local f
    for f in subuid subgid; do
        grep "^$TESTBED_USER:" "/etc/$f" > "$tree/etc/$f" \
            || die "$TESTBED_USER has no range in /etc/$f (podman rootless needs one: usermod --add-subuids/--add-subgids)"
    done
    if ! cmp -s "$CA_CERT" "$tree/usr/local/share/ca-certificates/shoal-testbed.crt"; then
        install -D -m 0644 "$CA_CERT" "$tree/usr/local/share/ca-certificates/shoal-testbed.crt"
        chroot "$tree" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in $tree failed"
    fi
    install -D -m 0644 "$CA_CERT" "$tree/etc/containers/certs.d/$REGISTRY_ADDR/ca.crt"
    cat > "$tree/etc/containers/containers.conf" <<'CONF'
# bench/lib/bench.sh: no systemd in the rivals' namespace.
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
CONF
}

# Makes (or finds) the rivals tree and starts its holder; prints nothing.
rivals_up() {
    local tree
    tree=$(debootstrap_tree "$RIVALS" "$RIVALS_INCLUDE" "$RIVALS_SUITE")
    if ! holder_pid "$RIVALS" >/dev/null; then
        rivals_configure "$tree"
        start_holder "$RIVALS" "$tree" "$PWD"
    fi
    local pid
    pid=$(holder_pid "$RIVALS")
    # podman's XDG_RUNTIME_DIR, on the holder's own /run.
    nsenter -t "$pid" -m -- install -d -m 0700 -o "$BENCH_UID" -g "$BENCH_GID" "/run/user/$BENCH_UID"
    # On a host with cgroup v1 controllers and a v2 hierarchy beside them
    # (hybrid, /sys/fs/cgroup/unified) crun refuses to start anything
    # ("cgroups in hybrid mode not supported"), --cgroups=disabled or not.
    # podman runs with no cgroups here (as Shoal, ch-run and Apptainer), so
    # in this namespace only the v2 mount is hidden and crun sees plain v1.
    nsenter -t "$pid" -m -- sh -c '[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] || exit 0
        [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] || exit 0
        mount -t tmpfs -o ro,size=4k,mode=555 bench-no-unified /sys/fs/cgroup/unified'
    # Rootless podman wants / shared (mount propagation into containers);
    # shared within this private namespace only.
    nsenter -t "$pid" -m -- mount --make-rshared /
    install -d -m 0755 -o "$BENCH_UID" -g "$BENCH_GID" "$BENCH_HOME"
}

# Stops the rivals' namespace: podman's pause process, then the rest.
rivals_down() {
    local pid p
    pid=$(holder_pid "$RIVALS") || return 0
    p=$(nsenter -t "$pid" -m -- cat "/run/user/$BENCH_UID/libpod/tmp/pause.pid" 2>/dev/null || true)
    [ -z "$p" ] || kill "$p" 2>/dev/null || true
    local left
    left=$(chroot_pids "$RIVALS")
    [ -z "$left" ] || kill $left 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    WAIT_TIMEOUT=10 wait_for "the rivals' namespace to end" sh -c "! kill -0 $pid"
    rm -f "$(holder_pidfile "$RIVALS")"
}

# The environment every timed command starts with (the loop shell's).
BENCH_ENV=(HOME="/home/$TESTBED_USER" USER="$TESTBED_USER" LOGNAME="$TESTBED_USER"
           PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)

# Runs CMD as the test user in the rivals' namespace (setup, not timed).
in_rivals() {  # in_rivals CMD...
    local pid
    pid=$(holder_pid "$RIVALS") || die "the rivals' namespace is not up (bash bench/rivals.sh up)"
    env -i "${BENCH_ENV[@]}" XDG_RUNTIME_DIR="/run/user/$BENCH_UID" PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        nsenter -t "$pid" -m -S "$BENCH_UID" -G "$BENCH_GID" -- "$@"
}
# The same on the host.
in_host() {  # in_host CMD...
    env -i "${BENCH_ENV[@]}" nsenter -t $$ -m -S "$BENCH_UID" -G "$BENCH_GID" -- "$@"
}

# podman, as every benchmark calls it: the bench's own store, no cgroups
# (none of the other launchers makes one), the host's network (as Shoal,
# ch-run and Apptainer use), crun.
PODMAN_ROOT=$BENCH_HOME/podman
podman_args() {  # podman_args [ROOT]: prints the global options
    local root=${1:-$PODMAN_ROOT}
    echo "--root $root/storage --runroot /run/user/$BENCH_UID/bench-podman --storage-driver overlay"
}
# Every podman call gets PODMAN_IGNORE_CGROUPSV1_WARNING=1: podman 5 warns on
# each call on a cgroup v1 host.
PODMAN_RUN_OPTS="run --rm --pull=never --network=host --cgroups=disabled --log-driver=none"

# Versions, for table headings.
tool_version() {  # tool_version TOOL
    case $1 in
        ch-0.31) in_host ch-run --version 2>&1 | head -n1 ;;
        ch-sid) in_rivals ch-run --version 2>&1 | head -n1 ;;
        apptainer) in_rivals apptainer --version 2>&1 | awk '{print $NF}' ;;
        podman) in_rivals podman --version 2>&1 | awk '{print $NF}' ;;
    esac
}

# The benchmark images by name.
image_ref() {  # image_ref NAME -> REPO:TAG in the test registry
    case $1 in
        busybox) echo shoal/busybox:latest ;;
        debian-mpich) echo shoal/debian-mpich:12 ;;
        pystack) echo "$PYSTACK_REF" ;;
        *) die "unknown image $1 (busybox, debian-mpich, pystack)" ;;
    esac
}

# The benchmark images, from the test registry: REPO:TAG -> a zstd:3
# squashfs of its flattened rootfs (Shoal, both ch-runs and Apptainer run the
# same file), cached by manifest digest under $BENCH_STATE/launcher.
registry_digest() {  # registry_digest REPO TAG
    curl -sf --cacert "$CA_CERT" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' -o /dev/null -w '%header{docker-content-digest}' \
        "https://$REGISTRY_ADDR/v2/$1/manifests/$2"
}
image_sqfs() {  # image_sqfs REPO:TAG -> prints the squashfs path
    local ref=$1 repo tag digest name out tmp
    repo=${ref%:*} tag=${ref##*:}
    digest=$(registry_digest "$repo" "$tag") || die "$REGISTRY_ADDR/$ref is not in the test registry (tests/testbed/up.sh, bench/images.sh)"
    name=$(echo "$repo" | tr / -)
    out=$BENCH_STATE/launcher/$name-${digest:7:16}.sqfs
    if [ ! -f "$out" ]; then
        log "squashing $REGISTRY_ADDR/$ref ($digest) into $out"
        mkdir -p "$BENCH_STATE/launcher" "$TLS_DIR/skopeo"
        cp "$CA_CERT" "$TLS_DIR/skopeo/ca.crt"
        tmp=$(mktemp -d "$BENCH_STATE/launcher/tmp.XXXXXX")
        skopeo copy -q --src-cert-dir "$TLS_DIR/skopeo" "docker://$REGISTRY_ADDR/$ref" "oci:$tmp/oci:x" >&2
        umoci unpack --image "$tmp/oci:x" "$tmp/bundle" >/dev/null
        nice -n 10 mksquashfs "$tmp/bundle/rootfs" "$out.tmp" -comp zstd -Xcompression-level 3 -no-xattrs -quiet -no-progress >/dev/null
        chmod 0644 "$out.tmp" && mv "$out.tmp" "$out"
        rm -rf "$tmp"
    fi
    echo "$out"
}

# The order of round ROUND (from 1) among K tools, as K indices on one
# line: a Williams design (a Latin square balanced for what came just
# before). Every tool goes first equally often and follows every other
# tool equally often over K rounds (2K when K is odd), so no tool always
# inherits one rival's leftover work: a plain rotation keeps the cyclic
# order, and the tool after the heaviest rival (podman, whose processes
# end after it returns) then paid for it in every round.
round_order() {  # round_order K ROUND
    local k=$1 r=$(( $2 - 1 )) j m=1 row=(0) out=()
    while (( ${#row[@]} < k )); do
        row+=("$m")
        (( ${#row[@]} < k )) && row+=("$(( k - m ))")
        m=$(( m + 1 ))
    done
    for ((j = 0; j < k; j++)); do out+=("$(( (row[j] + r) % k ))"); done
    if (( k % 2 == 1 && (r / k) % 2 == 1 )); then
        local rev=()
        for ((j = k - 1; j >= 0; j--)); do rev+=("${out[j]}"); done
        out=("${rev[@]}")
    fi
    echo "${out[*]}"
}

# Statistics over "TAG VALUE" lines (stdin): "median p10 p90 spread% n",
# spread being the interquartile range over the median.
stats() {  # stats TAG [SCALE]
    awk -v tag="$1" '$1==tag && $2 != "failed" {print $2}' | sort -g | awk -v s="${2:-1}" '{a[NR]=$1/s} END {
        if (NR == 0) { print "n/a"; exit }
        m = a[int((NR+1)/2)]; q1 = a[int(NR/4)+1]; q3 = a[int((3*NR+3)/4)]
        i90 = int(NR*0.9); if (i90 < 1) i90 = 1
        sp = 0; if (m > 0) sp = 100*(q3-q1)/m
        printf "%.4g %.4g %.4g %.0f %d\n", m, a[int(NR*0.1)+1], a[i90], sp, NR }'
}
# Median over rounds of TAG's value / shoal's in the same round (paired:
# cancels the machine's slow and fast periods, which move whole-run medians
# of this VM by 10% or more). Lines carry the round: "TAG VALUE ROUND".
paired() {  # paired TAG
    awk -v tag="$1" '$1=="shoal" && $2 != "failed" {s[$3]=$2} $1==tag && $2 != "failed" {x[$3]=$2}
        END { for (r in x) if ((r in s) && s[r] > 0) print x[r] / s[r] }' | sort -g |
        awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else printf "%.2f\n", a[int((NR+1)/2)] }'
}
failures() {  # failures TAG
    awk -v tag="$1" '$1==tag && $2 == "failed"' | wc -l
}

# One results file per run (tab-separated), the format bench/summary.sh
# prints: figure, unit, tool, runs, median, p10, p90, spread %, paired
# ratio tool/shoal, failed runs, date (UTC), load average at start/end,
# tool version.
results_open() {  # results_open NAME -> sets RESULTS, LOAD_START, RUN_DATE
    mkdir -p "$RESULTS_DIR"
    RUN_DATE=$(date -u +%FT%H:%MZ)
    RESULTS=$RESULTS_DIR/$1-$(date -u +%Y%m%dT%H%M%S).tsv
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    : > "$RESULTS"
}
# results_add FIGURE UNIT SCALE RAWFILE TOOLS...: one row per tool from the
# raw "TAG VALUE ROUND" lines.
results_add() {
    local fig=$1 unit=$2 scale=$3 raw=$4 tool st p f load
    shift 4
    load="$LOAD_START/$(cut -d' ' -f1 /proc/loadavg)"
    for tool in "$@"; do
        st=$(stats "$tool" "$scale" < "$raw")
        f=$(failures "$tool" < "$raw")
        [ "$st" != n/a ] || st="- - - - 0"
        p=$(paired "$tool" < "$raw")
        [ "$tool" != shoal ] || p=1.00
        read -r m p10 p90 sp n <<<"$st"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fig" "$unit" "$tool" "$n" "$m" "$p10" "$p90" "$sp" "$p" "$f" "$RUN_DATE" "$load" "${TOOL_VERSIONS[$tool]:-}" >> "$RESULTS"
    done
}
declare -A TOOL_VERSIONS=()
