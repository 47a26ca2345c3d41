#!/usr/bin/env bash
# Stops what up.sh started. Leaves packages, users and built images in place
# (up.sh reuses them); `down.sh --purge` also removes the test bed's state.
#
# SHOAL_TESTBED_SLURM=24.11 or 26.05 stops only that series' chroot cluster;
# the default stops the host's and every chroot cluster.
source "$(dirname "$0")/common.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/chroot-cluster.sh"
if [ "$SLURM_SERIES" != 22.05 ]; then
    stop_chroot_cluster "$SLURM_SERIES"
    log "down: Slurm $SLURM_SERIES"
    exit 0
fi
for s in "${SLURM_SERIES_ALL[@]}"; do [ "$s" = 22.05 ] || stop_chroot_cluster "$s"; done

scancel --user="$TESTBED_USER" 2>/dev/null || true
for n in "${SLURM_NODES[@]}"; do pkill -f "^slurmd -N $n\$" 2>/dev/null || true; done
pkill -x slurmctld 2>/dev/null || true
pkill -f "^docker-registry serve $TESTBED_STATE/registry.yml" 2>/dev/null || true
pkill -f "^docker-registry serve $TESTBED_STATE/registry-auth.yml" 2>/dev/null || true
pkill -f "^docker-registry serve $TESTBED_STATE/registry-token.yml" 2>/dev/null || true
pkill -f "token_server.py $TOKEN_SERVER_ADDR " 2>/dev/null || true
# Patterns are anchored so they cannot match the checking shell itself.
WAIT_TIMEOUT=30 wait_for "daemons to stop" sh -c "! pgrep -x slurmctld && ! pgrep -f '^slurmd -N ' && ! pgrep -f '^docker-registry serve'"
rm -f "$PLUGSTACK_SNIPPET"
if [ "${1:-}" = --purge ]; then
    rm -rf "$TESTBED_STATE" /var/spool/slurmctld /var/spool/slurmd
    log "purged $TESTBED_STATE"
fi
log "down"
