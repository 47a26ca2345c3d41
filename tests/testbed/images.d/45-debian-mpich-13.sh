# Sourced by images.sh: shoal/debian-mpich:13, Debian 13 (trixie) with
# MPICH's runtime, hello_mpi and /etc/shoal-test-image ("debian-mpich", as the Debian 12 one).
#
# For the Slurm 24.11 and 26.05 test beds (SHOAL_TESTBED_SLURM): a batch
# script inside an image runs the node's own srun, bound in from the node
# (slurm.host_paths), and trixie's and sid's Slurm need glibc 2.38, which
# Debian 12's images lack. Built only for those test beds.

if [ "$SLURM_SERIES" != 22.05 ]; then
    STAMP=$( { echo "$STAMP"; cat "$HERE/hello_mpi.c"; } | sha256sum | cut -c1-16)
    if [ "$(cat "$WORK/debian-mpich-13.stamp" 2>/dev/null)" != "$STAMP" ] || ! registry_has shoal/debian-mpich 13; then
        log "building image shoal/debian-mpich:13"
        tree=$(debootstrap_tree debian-mpich-13 mpich,libmpich12 trixie)
        mpicc -O2 -o "$WORK/hello_mpi" "$HERE/hello_mpi.c"
        new_image debian-mpich-13
        b=$WORK/bundle-debian-mpich-13
        cp -a "$tree/." "$b/rootfs/"
        rm -rf "$b"/rootfs/usr/share/doc/* "$b"/rootfs/var/cache/apt/*
        install -m 0755 "$WORK/hello_mpi" "$b/rootfs/usr/local/bin/hello_mpi"
        echo debian-mpich > "$b/rootfs/etc/shoal-test-image"
        umoci repack --refresh-bundle --image "$WORK/oci:debian-mpich-13" "$b"
        umoci config --image "$WORK/oci:debian-mpich-13" \
            --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
            --config.env LANG=C.UTF-8 \
            --config.cmd /bin/bash --config.workingdir / --config.label org.shoal.test=debian-mpich-13
        push debian-mpich-13 shoal/debian-mpich:13
        echo "$STAMP" > "$WORK/debian-mpich-13.stamp"
        rm -rf "$b"
    fi
fi
