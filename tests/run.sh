#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing from Debian's
# packages, builds the workspace once, and runs every test. Integration tests
# bring the local test bed up themselves (tests/testbed/up.sh) and share it.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh --test slurm_plugin`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/testbed/setup.sh
cargo build --workspace --locked
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --locked --no-fail-fast "$@"
# The fuzz targets, each for a bounded time on its committed corpus (a
# crash fails the run; see SECURITY.md, "Fuzzing"). Not when the caller
# picked tests (`tests/run.sh --test NAME`).
if [ $# -eq 0 ]; then
    bash fuzz/run.sh "${SHOAL_FUZZ_SECONDS:-20}"
fi
