#!/usr/bin/env bash
# The newer rivals bench/launch.sh and bench/pull.sh compare Shoal with:
# Debian sid's Apptainer (1.4), Charliecloud (0.45) and podman (5.8), in a
# cached debootstrap tree (bench/lib/trees.sh, made by the test bed's
# debootstrap_tree), run from a private mount namespace whose root is that
# tree (bench/lib/bench.sh). The host's Charliecloud 0.31 stays the other
# baseline.
#
#   bash bench/rivals.sh up        make the tree (minutes, once) and start its namespace
#   bash bench/rivals.sh check     up, then each rival runs /bin/true in the
#                                  busybox image as the test user, unprivileged
#   bash bench/rivals.sh run CMD   CMD as the test user inside the namespace
#   bash bench/rivals.sh down      stop the namespace (the tree stays cached)
#   bash bench/rivals.sh clean     down, and remove the rivals' stores in the user's home
#
# What each rival needs to run rootless here (all set up by `up`):
#   ch-run 0.45   user namespaces, /dev/fuse, squashfuse's library (it mounts
#                 the squashfs in-process); nothing setuid
#   Apptainer     user namespaces, /dev/fuse and squashfuse_ll (a squashfs or
#                 SIF is mounted by squashfuse in the user namespace); nothing setuid
#   podman        newuidmap/newgidmap (setuid root, package uidmap) and a
#                 subordinate id range for the user in /etc/subuid and
#                 /etc/subgid (copied from the host's), XDG_RUNTIME_DIR,
#                 cgroupfs and file events (no systemd), the registry's CA
#                 in /etc/containers/certs.d; storage: native overlay in
#                 the user namespace (kernel 5.13+)
# Run as root; the test bed's registry must be up for `check`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/testbed/common.sh
source bench/lib/bench.sh

case ${1:-} in
    up) nice -n 10 bash -c 'source tests/testbed/common.sh; source bench/lib/trees.sh; debootstrap_tree "$0" "$RIVALS_INCLUDE" "$RIVALS_SUITE" >/dev/null' "$RIVALS"
        rivals_up
        log "rivals' namespace up (holder $(holder_pid "$RIVALS")): $(tool_version ch-sid), Apptainer $(tool_version apptainer), podman $(tool_version podman)" ;;
    down) rivals_down ;;
    clean) # podman's store holds files of subordinate ids: removed as root.
        rivals_down
        rm -rf "$BENCH_HOME" ;;
    run) shift; [ $# -gt 0 ] || die "usage: bench/rivals.sh run CMD [ARGS...]"
        in_rivals "$@" ;;
    check)
        bash "$0" up
        ref=shoal/busybox:latest
        img=$(image_sqfs "$ref")
        ok=0
        check() {  # check NAME CMD...
            local name=$1 out
            shift
            if out=$(in_rivals "$@" 2>&1); then
                log "$name: ok ($(echo "$out" | tr '\n' ' '))"
            else
                log "$name: FAILED: $out"
                ok=1
            fi
        }
        check "ch-run $(tool_version ch-sid | awk '{print $NF}') from the squashfs" ch-run "$img" -- /bin/sh -c '/bin/true && id -u'
        check "Apptainer $(tool_version apptainer) from the squashfs" apptainer -s exec "$img" /bin/sh -c '/bin/true && id -u'
        in_rivals podman $(podman_args) image exists "$REGISTRY_ADDR/$ref" \
            || in_rivals podman $(podman_args) pull -q "$REGISTRY_ADDR/$ref" >/dev/null
        check "podman $(tool_version podman) rootless ($(in_rivals podman $(podman_args) info --format '{{.Store.GraphDriverName}}'))" \
            podman $(podman_args) $PODMAN_RUN_OPTS "$REGISTRY_ADDR/$ref" /bin/sh -c '/bin/true && id -u'
        if in_host ch-run "$img" -- /bin/true; then log "ch-run 0.31 (host): ok"; else log "ch-run 0.31 (host): FAILED"; ok=1; fi
        exit $ok ;;
    *) die "usage: bench/rivals.sh up|check|run CMD|down|clean" ;;
esac
