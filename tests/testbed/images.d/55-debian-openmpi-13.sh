# Sourced by images.sh: shoal/debian-openmpi:13, Debian 13 (trixie) with
# python3-mpi4py (Open MPI 5.0 and its PMIx 5 client, the same PMIx as
# trixie's Slurm mpi/pmix plugin), hello_mpi.py and /etc/shoal-test-image
# ("debian-openmpi", as the Debian 12 one; 50-debian-openmpi.sh).
#
# For the Slurm 24.11 test bed (tests/slurm_pmix.rs): a batch script in the
# image runs the node's srun, which needs glibc 2.38. Not for 26.05: sid's
# Slurm has no PMIx. Built only for that test bed.

if [ "$SLURM_SERIES" = 24.11 ]; then
    # hello_mpi.py is the Debian 12 image's, written once in its piece.
    openmpi12=$HERE/images.d/50-debian-openmpi.sh
    STAMP=$( { echo "$STAMP"; cat "$openmpi12"; } | sha256sum | cut -c1-16)
    if [ "$(cat "$WORK/debian-openmpi-13.stamp" 2>/dev/null)" != "$STAMP" ] || ! registry_has shoal/debian-openmpi 13; then
        log "building image shoal/debian-openmpi:13"
        tree=$(debootstrap_tree debian-openmpi-13 python3-mpi4py trixie)
        new_image debian-openmpi-13
        b=$WORK/bundle-debian-openmpi-13
        cp -a "$tree/." "$b/rootfs/"
        rm -rf "$b"/rootfs/usr/share/doc/* "$b"/rootfs/usr/share/man/* "$b"/rootfs/var/cache/apt/*
        mkdir -p "$b/rootfs/usr/local/bin"
        sed -n "/hello_mpi.py\" <<'EOF'\$/,/^EOF\$/p" "$openmpi12" | sed '1d;$d' > "$b/rootfs/usr/local/bin/hello_mpi.py"
        grep -q '^from mpi4py import MPI$' "$b/rootfs/usr/local/bin/hello_mpi.py" || die "no hello_mpi.py in $openmpi12"
        chmod 0755 "$b/rootfs/usr/local/bin/hello_mpi.py"
        echo debian-openmpi > "$b/rootfs/etc/shoal-test-image"
        umoci repack --refresh-bundle --image "$WORK/oci:debian-openmpi-13" "$b"
        umoci config --image "$WORK/oci:debian-openmpi-13" \
            --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
            --config.env LANG=C.UTF-8 \
            --config.cmd /bin/bash --config.workingdir / --config.label org.shoal.test=debian-openmpi-13
        push debian-openmpi-13 shoal/debian-openmpi:13
        echo "$STAMP" > "$WORK/debian-openmpi-13.stamp"
        rm -rf "$b"
    fi
fi
