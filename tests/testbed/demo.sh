#!/usr/bin/env bash
# The main job (README): on a fresh Debian 12 machine, installs and builds
# everything, brings up the three-node cluster and the TLS registry (with
# test images built locally and pulled into the site store), then runs a
# containerized job as the unprivileged user: `sbatch -N3 --image=...`,
# whose batch script and MPI steps run inside the image on n1..n3.
#
# SHOAL_TESTBED_SLURM=24.11 or 26.05 runs it on that Slurm (a chroot
# cluster, tests/testbed/versions.sh) with the Debian 13 image: the batch
# script's srun is the node's, and those Slurm builds need glibc 2.38.
set -euo pipefail
cd "$(dirname "$0")/../.."
series=${SHOAL_TESTBED_SLURM:-22.05}
image=127.0.0.1:5443/shoal/debian-mpich:12
[ "$series" = 22.05 ] || image=127.0.0.1:5443/shoal/debian-mpich:13
# SHOAL_DEMO_BUILT=1: the caller (tests/run.sh) built everything already.
if [ "${SHOAL_DEMO_BUILT:-0}" != 1 ]; then
    bash tests/testbed/setup.sh
    cargo build --workspace --locked
    [ "$series" = 22.05 ] || bash packaging/build-plugin.sh "$series"
fi
bash tests/testbed/up.sh --install target/debug
user=alice
echo "== Slurm $(bash tests/testbed/enter.sh sinfo --version)"
echo "== as $user: sbatch -N3 --ntasks-per-node=2 --image=$image"
bash tests/testbed/enter.sh runuser -u "$user" -- bash -c "cd ~ && cat > demo.sh <<'JOB'
#!/bin/bash
echo \"batch script on \$(hostname) in image: \$(cat /etc/shoal-test-image)\"
srun -l sh -c 'echo \"\$(hostname): \$(cat /etc/shoal-test-image), uid \$(id -u)\"' | sort
srun --mpi=pmi2 /usr/local/bin/hello_mpi | sort
JOB
sbatch --wait -N3 --ntasks-per-node=2 -o demo.out --image=$image demo.sh && cat demo.out"
