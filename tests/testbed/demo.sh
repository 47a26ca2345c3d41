#!/usr/bin/env bash
# The main job (README): on a fresh Debian 12 machine, installs and builds
# everything, brings up the three-node cluster and the TLS registry (with
# test images built locally and pulled into the site store), then runs a
# containerized job as the unprivileged user: `sbatch -N3 --image=...`,
# whose batch script and MPI steps run inside the image on n1..n3.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/testbed/setup.sh
cargo build --workspace --locked
bash tests/testbed/up.sh --install target/debug
user=alice
image=127.0.0.1:5443/shoal/debian-mpich:12
echo "== as $user: sbatch -N3 --ntasks-per-node=2 --image=$image"
runuser -u "$user" -- bash -c "cd ~ && cat > demo.sh <<'JOB'
#!/bin/bash
echo \"batch script on \$(hostname) in image: \$(cat /etc/shoal-test-image)\"
srun -l sh -c 'echo \"\$(hostname): \$(cat /etc/shoal-test-image), uid \$(id -u)\"' | sort
srun --mpi=pmi2 /usr/local/bin/hello_mpi | sort
JOB
sbatch --wait -N3 --ntasks-per-node=2 -o demo.out --image=$image demo.sh && cat demo.out"
