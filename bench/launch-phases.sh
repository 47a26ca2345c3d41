#!/usr/bin/env bash
# Where a launch's time goes: `shoal run IMG -- /bin/true` and
# `ch-run IMG -- /bin/true` alternating, as the user, with kernel
# tracepoints recorded by `perf` (process exec/fork/exit, pivot_root, and
# every FUSE request), then per-launch phases as medians (ms):
#   exec->INIT        launcher exec to the FUSE superblock (INIT queued)
#   INIT->1st access  to the first request after INIT (waits for the server)
#   ->pivot_root      skeleton, /etc merge, overlay, mounts
#   ->exec command    pivot_root to the command's exec completing
#   command           the command's run (its page faults are FUSE reads)
#   exit->shell       its exit_group to the shell's wait4 returning
# Tracepoints cost little next to strace; still, compare the two launchers
# only within one run.
#
#   bash bench/launch-phases.sh [IMAGE] [LAUNCHES]   (root; needs linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${TESTBED_STATE:-/var/lib/shoal-testbed}
USER_NAME=${TESTBED_USER:-alice}
# Default: the launcher tests' busybox fixture (tests/testbed/launcher-fixtures.sh);
# bench/launch.sh's squashfs files are under $STATE/bench/launcher/.
IMG=${1:-$STATE/launcher/busybox.sqfs}
[ $# -gt 0 ] || [ -f "$IMG" ] || bash tests/testbed/launcher-fixtures.sh "$STATE/launcher"
N=${2:-40}
command -v perf >/dev/null || { echo "perf (Debian package linux-perf) missing" >&2; exit 1; }
cargo build --release -p shoal --locked >/dev/null 2>&1 || cargo build --release -p shoal --locked
SHOAL=$PWD/target/release/shoal
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/shoal.toml"
chmod 755 "$work" && chmod 644 "$work/shoal.toml"
perf record -q -a -o "$work/perf.data" \
    -e sched:sched_process_exec -e syscalls:sys_enter_exit_group -e syscalls:sys_exit_wait4 \
    -e syscalls:sys_enter_pivot_root -e fuse:fuse_request_send -- \
    runuser -u "$USER_NAME" -- env -i HOME=/tmp USER="$USER_NAME" PATH=/usr/bin:/bin bash -c '
        cd /tmp
        for i in $(seq 1 "$1"); do
            "$2" --config "$3" run "$4" -- /bin/true
            ch-run "$4" -- /bin/true
        done' _ "$N" "$SHOAL" "$work/shoal.toml" "$IMG" >/dev/null 2>&1
perf script -i "$work/perf.data" -F comm,pid,time,event,trace 2>/dev/null > "$work/events"
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg), $IMG, $N launches each"
python3 - "$work/events" "$SHOAL" <<'PY'
import re, statistics, sys
runs, cur = [], None
for line in open(sys.argv[1]):
    m = re.match(r'\s*(\S+)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if not m:
        continue
    comm, t, ev, args = m.group(1), float(m.group(3)), m.group(4), m.group(5)
    if ev == 'sched:sched_process_exec' and (sys.argv[2] in args or args.startswith('filename=/usr/bin/ch-run')):
        cur = {'who': 'ch-run' if 'ch-run' in args else 'shoal run', 'exec': t, 'fuse': []}
        runs.append(cur)
    elif cur is None:
        continue
    elif ev == 'fuse:fuse_request_send':
        cur['fuse'].append(t)
    elif ev == 'syscalls:sys_enter_pivot_root':
        cur.setdefault('pivot', t)
    elif ev == 'sched:sched_process_exec' and 'bin/true' in args:
        cur['cmd'] = t
    elif ev == 'syscalls:sys_enter_exit_group' and comm == 'true':
        cur.setdefault('exit', t)
    elif ev == 'syscalls:sys_exit_wait4' and comm == 'bash' and 'exit' in cur and not args.startswith('0xffff'):
        cur.setdefault('done', t)
phases = [('exec->INIT', 'exec', 'init'), ('INIT->1st access', 'init', 'first'), ('->pivot_root', 'first', 'pivot'),
          ('->exec command', 'pivot', 'cmd'), ('command', 'cmd', 'exit'), ('exit->shell', 'exit', 'done'), ('total', 'exec', 'done')]
table = {}
for r in runs:
    if len(r['fuse']) < 2 or not all(k in r for k in ('pivot', 'cmd', 'exit', 'done')):
        continue
    r['init'], r['first'] = r['fuse'][0], r['fuse'][1]
    for name, a, b in phases:
        table.setdefault(r['who'], {}).setdefault(name, []).append((r[b] - r[a]) * 1000)
    table[r['who']].setdefault('FUSE requests', []).append(len(r['fuse']))
print('%-18s %10s %10s' % ('median', 'shoal run', 'ch-run'))
for name in [p[0] for p in phases] + ['FUSE requests']:
    vals = [statistics.median(table[w][name]) if w in table else float('nan') for w in ('shoal run', 'ch-run')]
    print('%-18s %10.2f %10.2f' % (name, *vals))
PY
