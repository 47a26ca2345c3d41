# The Slurm series the test bed can run (sourced by common.sh).
#
#   SHOAL_TESTBED_SLURM=22.05   the host's Slurm (Debian 12), the default
#   SHOAL_TESTBED_SLURM=24.11   Debian trixie's Slurm, in a chroot cluster
#   SHOAL_TESTBED_SLURM=26.05   Debian sid's Slurm, in a chroot cluster
#
# A chroot cluster is a debootstrap tree with that suite's slurm-wlm (made by
# slurm_chroot below, cached under $TESTBED_STATE/chroots, keyed by what it is
# made from). Its daemons run in their own mount namespace whose root is the
# tree (pivot_root, not chroot(2): a chrooted process may not create user
# namespaces, and the launcher needs them), with the host's /proc, /sys, /dev,
# /tmp, /home, munge socket and test-bed state bound in, in the host's network
# namespace (same registry, same ports: one cluster runs at a time).
#
# Nothing here touches the host's apt sources: package lists for trixie and
# sid live in a private APT_CONFIG under $TESTBED_STATE/apt/SUITE.

SLURM_SERIES_ALL=(22.05 24.11 26.05)
SLURM_SERIES=${SHOAL_TESTBED_SLURM:-22.05}

source "$(dirname "${BASH_SOURCE[0]}")/../../slurm-headers/apt.sh"
series_suite "$SLURM_SERIES" >/dev/null || exit 1

# The exact Debian version of PACKAGE in SERIES's suite.
series_package_version() {  # series_package_version SERIES PACKAGE
    local suite conf
    suite=$(series_suite "$1")
    if [ "$suite" = host ]; then
        dpkg-query -W -f='${Version}' "$2"
        return
    fi
    conf=$(private_apt "$TESTBED_STATE/apt" "$suite")
    apt_candidate "$conf" "$2"
}

# How far SERIES's cluster ports are from the host's (slurmctld 6817, slurmd
# 17001-17003): 24.11 uses 6917 and 17101-17103, 26.05 7017 and 17201-17203.
series_port_offset() {  # series_port_offset SERIES
    case $1 in 22.05) echo 0 ;; 24.11) echo 100 ;; 26.05) echo 200 ;; esac
}

# Site images the test bed of SERIES adds to the shared ones (up.sh pulls
# them into the site store).
series_images() {  # series_images SERIES
    [ "$1" = 22.05 ] || echo shoal/debian-mpich:13
    # Open MPI for --mpi=pmix where that Slurm has PMIx (not sid's).
    [ "$1" != 24.11 ] || echo shoal/debian-openmpi:13
}

# What a chroot cluster of each suite holds.
CHROOT_PACKAGES=(
    slurm-wlm munge
    # the launcher and plugin: squashfs, FUSE
    squashfs-tools squashfs-tools-ng squashfuse fuse3
    # what the Slurm-facing tests run as root or as the user on a node
    skopeo curl ca-certificates procps psmisc util-linux hostname python3
    # test images are made from the node's /bin/busybox (busybox-static)
    busybox-static
    # the node's own MPICH, which the `mpich` module injects there
    # (tests/inject_slurm.rs); the host's Debian 12 one needs libraries
    # (UCX, hwloc) of its own suite
    libmpich12
)

# A chroot with SERIES's Slurm, made with debootstrap and apt inside (minutes),
# cached under $TESTBED_STATE/chroots keyed by suite, packages and mirror;
# older trees of the same series are removed. Prints the tree's path.
slurm_chroot() {  # slurm_chroot SERIES
    local series=$1 suite mirror key tree packages=("${CHROOT_PACKAGES[@]}")
    suite=$(series_suite "$series")
    [ "$suite" != host ] || die "Slurm $series is the host's own; no chroot"
    # sid's Slurm has no PMIx (Debian #1149781); trixie's mpi/pmix plugin
    # dlopens pmix2/lib/libpmix.so, which only libpmix-dev ships.
    [ "$suite" = sid ] || packages+=(libpmix-dev)
    mirror=$(debian_mirror)
    key=$(printf '%s %s %s %s\n' "$suite" "${packages[*]}" "$mirror" "$(suite_sources "$suite" | tr '\n' ' ')" | sha256sum | cut -c1-16)
    local base=$TESTBED_STATE/chroots
    tree=$base/slurm-$series-$key
    if [ ! -f "$tree.done" ]; then
        mkdir -p "$base"
        local logf=$base/slurm-$series.log
        log "debootstrap $suite with Slurm $series from $mirror (minutes; log $logf)"
        rm -rf "$tree.tmp" "$tree"
        debootstrap --variant=minbase "$suite" "$tree.tmp" "$mirror" >"$logf" 2>&1 \
            || die "debootstrap $suite failed; see $logf"
        suite_sources "$suite" > "$tree.tmp/etc/apt/sources.list"
        # The host's way of reaching its mirror (proxy, Check-Valid-Until for
        # a snapshot mirror) holds inside too.
        cat /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null | grep -E '^Acquire::[A-Za-z:-]+ "[^"]*";$' > "$tree.tmp/etc/apt/apt.conf.d/90shoal-host-acquire" || true
        # Postinst scripts must start nothing (no init in a chroot).
        printf '#!/bin/sh\nexit 101\n' > "$tree.tmp/usr/sbin/policy-rc.d"
        chmod 755 "$tree.tmp/usr/sbin/policy-rc.d"
        mount -t proc proc "$tree.tmp/proc"
        local rc=0
        chroot "$tree.tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
            "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages[*]}" >>"$logf" 2>&1 || rc=$?
        umount "$tree.tmp/proc"
        [ $rc = 0 ] || die "apt-get install in the $suite chroot failed; see $logf"
        rm -rf "$tree.tmp"/var/lib/apt/lists/* "$tree.tmp"/var/cache/apt/archives/*.deb
        mv "$tree.tmp" "$tree"
        touch "$tree.done"
        for old in "$base/slurm-$series"-*.done; do
            [ "$old" = "$tree.done" ] || rm -rf "${old%.done}" "$old"
        done
    fi
    echo "$tree"
}
