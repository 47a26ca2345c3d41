# Sourced by bench/*.sh (after tests/testbed/common.sh): the package lists of
# the two debootstrap trees the benchmarks use, made and cached by the test
# bed's own debootstrap_tree (common.sh), keyed by these lists.

# Debian sid's rivals: Apptainer 1.4, Charliecloud 0.45, podman 5.8, and
# what each needs to run rootless (squashfuse and fuse3 for Apptainer's
# and ch-run's squashfs mounts, fuse-overlayfs, newuidmap/newgidmap from
# uidmap for podman's subordinate ids, crun, passt, catatonit).
RIVALS_SUITE=sid
RIVALS_INCLUDE=apptainer,squashfuse,fuse3,fuse-overlayfs,squashfs-tools,e2fsprogs,uidmap,charliecloud-runtime,charliecloud-builders,podman,crun,passt,catatonit,ca-certificates,procps,util-linux,time

# The third launch image (bench/images.sh): Debian 13 with a Python
# science stack, tens of thousands of small files (sympy, pandas, scipy
# with their byte-compiled caches): about 18,000 paths (11,000 of them
# under /usr/lib/python3), 470 MB, laid out unlike debian-mpich (10,000
# paths, 300 MB, mostly MPICH and OpenBLAS libraries).
PYSTACK_SUITE=trixie
PYSTACK_INCLUDE=python3-numpy,python3-scipy,python3-pandas,python3-sympy
# Where bench/images.sh pushes it (the test registry).
PYSTACK_REF=t17/pystack:1
