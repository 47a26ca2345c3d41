#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing from Debian's
# packages, builds the workspace once, and runs every test. Integration tests
# bring the local test bed up themselves (tests/testbed/up.sh) and share it.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh --test slurm_plugin`).
#
# Then the Slurm-facing suites again on Slurm 24.11 and 26.05 (chroot
# clusters, tests/testbed/versions.sh, with the plugin built for each by
# packaging/build-plugin.sh): slurm_versions, slurm_plugin, slurm_image,
# inject_slurm (with Debian 13 images and the chroot's own MPICH), slurm_pmix
# (on 26.05 each test says it is skipped: sid's Slurm has no PMIx), and the
# README's main job (demo.sh: 6 MPI ranks on n1..n3 inside the image).
# inject_slurm's GPU test says it is skipped on 24.11 (README, "Slurm
# versions": 24.11.5's extern slurmstepd crashes).
# Each series' cluster comes up once and is stopped after its suites.
# SHOAL_MATRIX=0 skips the matrix, and extra arguments skip it too. Each
# phase's and each suite's time is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/testbed/setup.sh
cargo build --workspace --locked
# The plugin for every supported Slurm series (slurm_versions checks each).
bash packaging/build-plugin.sh 22.05 24.11 26.05
status=0
# The module graph has no cycle (issue 12), and no source file is long.
python3 tests/import_cycles.py launcher/src || status=$?
bash tests/source_lengths.sh || status=$?
start=$SECONDS
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
echo "run.sh: workspace tests on Slurm 22.05: $((SECONDS - start)) s" >&2
# The fuzz targets, each for a bounded time on its committed corpus (a
# crash fails the run; see SECURITY.md, "Fuzzing"). Not when the caller
# picked tests (`tests/run.sh --test NAME`).
if [ $# -eq 0 ]; then
    start=$SECONDS
    bash fuzz/run.sh "${SHOAL_FUZZ_SECONDS:-20}" || status=$?
    echo "run.sh: fuzz targets: $((SECONDS - start)) s" >&2
fi
if [ $# -eq 0 ] && [ "${SHOAL_MATRIX:-1}" != 0 ]; then
    for series in 24.11 26.05; do
        start=$SECONDS
        SHOAL_TESTBED_SLURM=$series bash tests/testbed/up.sh --install target/debug
        echo "run.sh: Slurm $series bring-up (chroot made if missing): $((SECONDS - start)) s" >&2
        suites=(slurm_versions slurm_plugin slurm_image inject_slurm slurm_pmix)
        for suite in "${suites[@]}"; do
            start=$SECONDS
            SHOAL_TESTBED_SLURM=$series cargo test --locked --no-fail-fast --test "$suite" -- --test-threads=1 || status=$?
            echo "run.sh: Slurm $series: $suite: $((SECONDS - start)) s" >&2
        done
        start=$SECONDS
        # Built above: demo.sh need not build again.
        out=$(SHOAL_DEMO_BUILT=1 SHOAL_TESTBED_SLURM=$series bash tests/testbed/demo.sh 2>&1) || status=$?
        printf '%s\n' "$out" | tail -n 12
        ranks=$(printf '%s\n' "$out" | grep -c 'hello from rank' || true)
        if [ "$ranks" != 6 ]; then
            echo "run.sh: the main job on Slurm $series printed $ranks MPI ranks, not 6" >&2
            status=1
        fi
        echo "run.sh: Slurm $series: the main job: $((SECONDS - start)) s" >&2
        SHOAL_TESTBED_SLURM=$series bash tests/testbed/down.sh
    done
fi
exit $status
