# Sourced by images.sh: the big shared image, for pull/convert benchmarks,
# the launcher, MPI and ABI-injection tests.
#
# shoal/debian-mpich:12 is Debian 12 (minbase) with MPICH's runtime and NumPy
# with OpenBLAS as layer 1 (~300 MB unpacked, ~10k files), and a layer 2 that deletes the
# docs and apt's cache (whiteouts) and adds /usr/local/bin/hello_mpi (built on
# this host from tests/testbed/hello_mpi.c) and /etc/shoal-test-image
# ("debian-mpich").
#
# debootstrap takes minutes, so its tree is cached under
# $TESTBED_STATE/cache, keyed by what it was made from: a change to the rest
# of this recipe rebuilds the image from the cached tree in seconds.

DEBIAN_MPICH_INCLUDE=mpich,libmpich12,python3-numpy,libopenblas0-pthread

# The C source is part of the recipe too.
STAMP=$( { echo "$STAMP"; cat "$HERE/hello_mpi.c"; } | sha256sum | cut -c1-16)
if ! up_to_date debian-mpich 12; then
    log "building image shoal/debian-mpich:12"
    tree=$(debootstrap_tree debian-mpich "$DEBIAN_MPICH_INCLUDE")
    mpicc -O2 -o "$WORK/hello_mpi" "$HERE/hello_mpi.c"
    new_image debian-mpich
    b=$WORK/bundle-debian-mpich
    cp -a "$tree/." "$b/rootfs/"
    umoci repack --refresh-bundle --image "$WORK/oci:debian-mpich" "$b"
    # Layer 2: deletions become whiteouts, plus the test program and marker.
    rm -rf "$b"/rootfs/usr/share/doc/* "$b"/rootfs/var/cache/apt/*
    install -m 0755 "$WORK/hello_mpi" "$b/rootfs/usr/local/bin/hello_mpi"
    echo debian-mpich > "$b/rootfs/etc/shoal-test-image"
    umoci repack --image "$WORK/oci:debian-mpich" "$b"
    umoci config --image "$WORK/oci:debian-mpich" \
        --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
        --config.env LANG=C.UTF-8 \
        --config.cmd /bin/bash --config.workingdir / --config.label org.shoal.test=debian-mpich
    push debian-mpich shoal/debian-mpich:12
    stamp debian-mpich
    rm -rf "$b"
fi
