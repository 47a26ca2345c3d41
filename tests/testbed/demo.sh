#!/usr/bin/env bash
# The main job (README): on a fresh Debian 12 machine, installs and builds
# everything, brings up the three-node cluster and the registry, and runs a
# three-node job as the unprivileged user with the Shoal plugin loaded.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/testbed/setup.sh
cargo build --workspace --locked
bash tests/testbed/up.sh --install target/debug
user=alice
echo "== sbatch -N3 as $user, plugin loaded (srun --help | grep image):"
runuser -u "$user" -- bash -c 'srun --help | grep -A1 -- "--image=REF"'
runuser -u "$user" -- bash -c 'cd ~ && sbatch --wait -N3 -o demo.out --wrap="srun -l hostname" && sort demo.out'
