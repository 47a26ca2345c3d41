# Sourced by images.sh: an Open MPI image for `srun --mpi=pmix` in an image.
#
# shoal/debian-openmpi:12 is Debian 12 (minbase) with python3-mpi4py, which
# on amd64 pulls Open MPI 4.1 (libopenmpi3, openmpi-bin) and through it the
# external PMIx 4.2 client (libpmix2): the same PMIx as the host's Slurm
# mpi/pmix plugin. A second layer drops the docs and adds
# /usr/local/bin/hello_mpi.py (rank, size, node, and an allreduce so the
# ranks really talk) and /etc/shoal-test-image ("debian-openmpi").
#
# Python instead of a compiled hello: the host has no Open MPI headers, and
# compiling in the tree would need a compiler in it; mpi4py is one package.
#
# The debootstrap tree is cached under $TESTBED_STATE/cache like 40's,
# keyed by what it was made from.

DEBIAN_OPENMPI_INCLUDE=python3-mpi4py

if ! up_to_date debian-openmpi 12; then
    log "building image shoal/debian-openmpi:12"
    tree=$(debootstrap_tree debian-openmpi "$DEBIAN_OPENMPI_INCLUDE")
    new_image debian-openmpi
    b=$WORK/bundle-debian-openmpi
    cp -a "$tree/." "$b/rootfs/"
    umoci repack --refresh-bundle --image "$WORK/oci:debian-openmpi" "$b"
    rm -rf "$b"/rootfs/usr/share/doc/* "$b"/rootfs/usr/share/man/* "$b"/rootfs/var/cache/apt/*
    cat > "$b/rootfs/usr/local/bin/hello_mpi.py" <<'EOF'
#!/usr/bin/python3
# MPI_Init goes through PMIx when srun --mpi=pmix started the task.
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
total = comm.allreduce(rank)
lib = MPI.Get_library_version().split(",")[0].strip()
print(f"hello from rank {rank} of {size} on {MPI.Get_processor_name()} sum {total} ({lib})", flush=True)
EOF
    chmod 0755 "$b/rootfs/usr/local/bin/hello_mpi.py"
    echo debian-openmpi > "$b/rootfs/etc/shoal-test-image"
    umoci repack --image "$WORK/oci:debian-openmpi" "$b"
    umoci config --image "$WORK/oci:debian-openmpi" \
        --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
        --config.env LANG=C.UTF-8 \
        --config.cmd /bin/bash --config.workingdir / --config.label org.shoal.test=debian-openmpi
    push debian-openmpi shoal/debian-openmpi:12
    stamp debian-openmpi
    rm -rf "$b"
fi
