# Shared settings of the local test bed: a three-node Slurm cluster (n1..n3
# on loopback, each slurmd in its own UTS namespace), munge, and a TLS OCI
# registry on 127.0.0.1. Sourced by the other scripts; runs as root.

set -euo pipefail

TESTBED_STATE=${TESTBED_STATE:-/var/lib/shoal-testbed}
TESTBED_USER=${TESTBED_USER:-alice}
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5443}
REGISTRY_DIR=$TESTBED_STATE/registry
# Fake GPU device nodes (up.sh; Slurm gres.conf hands them out).
FAKE_GPU_DIR=$TESTBED_STATE/gpu
# A second registry with htpasswd auth and this test login (up.sh).
AUTH_REGISTRY_ADDR=${AUTH_REGISTRY_ADDR:-127.0.0.1:5444}
AUTH_REGISTRY_USER=shoaltest
AUTH_REGISTRY_PASSWORD=shoal-test-password
# A third with Bearer tokens from a small token server; same test login.
TOKEN_REGISTRY_ADDR=${TOKEN_REGISTRY_ADDR:-127.0.0.1:5445}
TOKEN_SERVER_ADDR=${TOKEN_SERVER_ADDR:-127.0.0.1:5446}
TLS_DIR=$TESTBED_STATE/tls
CA_CERT=$TLS_DIR/cert.pem
SLURM_NODES=(n1 n2 n3)
PLUGIN_DIR=/usr/local/lib/shoal
PLUGSTACK_SNIPPET=/etc/slurm/plugstack.conf.d/shoal.conf
SHOAL_CONFIG_FILE=/etc/shoal/shoal.toml

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts slurmctld, slurmd and munged)"

# Waits until "$@" succeeds, polling; fails after $WAIT_TIMEOUT seconds.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + ${WAIT_TIMEOUT:-60}))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
        sleep 0.2
    done
}

# debian_mirror (the Debian mirror this machine already uses, for
# debootstrap) is in slurm-headers/apt.sh, sourced by versions.sh below.

# A Debian 12 minbase tree with PACKAGES (comma-separated) for a test image,
# made with debootstrap (minutes) and cached under $TESTBED_STATE/cache,
# keyed by what it is made from; older trees of NAME are removed. Prints the
# tree's path.
debootstrap_tree() {  # debootstrap_tree NAME PACKAGES [SUITE, default bookworm]
    local name=$1 include=$2 suite=${3:-bookworm} mirror key cache=$TESTBED_STATE/cache tree
    mirror=$(debian_mirror)
    key=$(printf 'minbase %s bookworm %s\n' "$include" "$mirror" | sha256sum | cut -c1-16)
    [ "$suite" = bookworm ] || key=$(printf 'minbase %s %s %s\n' "$include" "$suite" "$mirror" | sha256sum | cut -c1-16)
    tree=$cache/$name-$key
    if [ ! -f "$tree.done" ]; then
        log "debootstrap $suite ($include) from $mirror: takes a few minutes"
        mkdir -p "$cache"
        rm -rf "$tree.tmp" "$tree"
        debootstrap --variant=minbase --include="$include" \
            "$suite" "$tree.tmp" "$mirror" >"$cache/debootstrap-$name.log" 2>&1 \
            || die "debootstrap failed; see $cache/debootstrap-$name.log"
        # No package lists or downloaded .debs in the image (they are not
        # part of the recipe and would only inflate it).
        rm -rf "$tree.tmp"/var/lib/apt/lists/* "$tree.tmp"/var/cache/apt/archives/*.deb
        mv "$tree.tmp" "$tree"
        touch "$tree.done"
        for old in "$cache/$name"-*.done; do
            [ "$old" = "$tree.done" ] || rm -rf "${old%.done}" "$old"
        done
    fi
    echo "$tree"
}

# A minimal userland from busybox-static in ROOTFS (test images and fixtures).
busybox_tree() {  # busybox_tree ROOTFS: a minimal userland
    local r=$1
    mkdir -p "$r"/{bin,etc,tmp,dev,proc,sys,home,root,usr/bin,var/tmp}
    chmod 1777 "$r/tmp" "$r/var/tmp"
    cp /bin/busybox "$r/bin/busybox"
    for applet in $("$r/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
}

# The Slurm series to run (SHOAL_TESTBED_SLURM) and the chroot clusters.
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
