#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing from Debian's
# packages, builds the workspace once, and runs every test. Integration tests
# bring the local test bed up themselves (tests/testbed/up.sh) and share it.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh --test slurm_plugin`).
#
# Then the Slurm-facing suites run again on Slurm 24.11 and 26.05 (chroot
# clusters, tests/testbed/versions.sh), with the plugin built for each
# (packaging/build-plugin.sh); SHOAL_MATRIX=0 skips that, and extra
# arguments skip it too. slurm_pmix runs only where Slurm has PMIx (not on
# sid's 26.05). Each phase's time is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/testbed/setup.sh
cargo build --workspace --locked
status=0
start=$SECONDS
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
echo "run.sh: workspace tests on Slurm 22.05: $((SECONDS - start)) s" >&2
if [ $# -eq 0 ] && [ "${SHOAL_MATRIX:-1}" != 0 ]; then
    for series in 24.11 26.05; do
        start=$SECONDS
        bash packaging/build-plugin.sh "$series"
        SHOAL_TESTBED_SLURM=$series bash tests/testbed/up.sh --install target/debug
        echo "run.sh: Slurm $series build and bring-up (chroot made if missing): $((SECONDS - start)) s" >&2
        suites=(--test slurm_plugin --test slurm_image --test inject_slurm --test slurm_versions)
        [ "$series" = 26.05 ] || suites+=(--test slurm_pmix)
        start=$SECONDS
        SHOAL_TESTBED_SLURM=$series cargo test --locked --no-fail-fast "${suites[@]}" -- --test-threads=1 || status=$?
        echo "run.sh: Slurm-facing suites on Slurm $series: $((SECONDS - start)) s" >&2
        SHOAL_TESTBED_SLURM=$series bash tests/testbed/down.sh
    done
fi
exit $status
