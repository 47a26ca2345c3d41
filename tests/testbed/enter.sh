#!/usr/bin/env bash
# Runs a command against the test bed's Slurm (SHOAL_TESTBED_SLURM): as is
# for the host's 22.05, inside the cluster's namespace for 24.11 and 26.05
# (chroot-cluster.sh), where srun, sbatch, scontrol are that series' own.
#
#   SHOAL_TESTBED_SLURM=24.11 tests/testbed/enter.sh runuser -u alice -- srun -N3 hostname
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/chroot-cluster.sh"
[ $# -gt 0 ] || die "usage: enter.sh CMD [ARGS...]"
[ "$SLURM_SERIES" = 22.05 ] && exec "$@"
pid=$(holder_pid "$SLURM_SERIES") || die "the Slurm $SLURM_SERIES cluster is not up: SHOAL_TESTBED_SLURM=$SLURM_SERIES tests/testbed/up.sh"
# The caller's directory if the cluster sees it too (the repository bound
# in is the one whose up.sh started the cluster), else the tree's root.
wd=$PWD
[ -d "/proc/$pid/root$wd" ] || wd=/
exec nsenter -t "$pid" -m --wd="$wd" -- "$@"
