# The three-node cluster of a newer Slurm series, run from its chroot
# (versions.sh): sourced by up.sh, down.sh and demo.sh after common.sh.
#
# One process per series holds a mount namespace whose root is the chroot
# tree (pivot_root; a chroot(2)ed process could not create the user
# namespaces the launcher needs). Everything else enters it with
# `nsenter -t HOLDER -m`, which also sets root and cwd to the tree:
# slurmctld -D and three `slurmd -D -N nX` (each in its own UTS namespace),
# and the tests' commands (chroot_run), so srun and sbatch are that series'
# clients and the mounts slurmstepd makes are seen where they happen.
#
# Shared with the host: the network namespace (registries on 127.0.0.1),
# munged's socket, /proc, /sys, /dev, /tmp, /home, the test-bed state and the
# repository. Its own: /usr (so the `mpich` module of shoal.toml injects the
# tree's own MPICH, libmpich12 of its suite, as a site injects its nodes'),
# /etc, /run, the node cache
# /var/cache/shoal, Slurm's spool and logs, and its ports
# (series_port_offset), so it runs beside the host's 22.05 cluster without
# touching it. (The host's up.sh looks for its slurmctld in its own mount
# namespace only: host_pgrep.)

CLUSTER_RUN=$TESTBED_STATE/run

holder_pidfile() { echo "$CLUSTER_RUN/slurm-$1.holder"; }

# The holder's pid if SERIES's namespace is up.
holder_pid() {  # holder_pid SERIES
    local f pid
    f=$(holder_pidfile "$1")
    pid=$(cat "$f" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" = "shoal-holder infinity " ] || return 1
    echo "$pid"
}

# pgrep ARGS..., limited to processes in SERIES's namespace (pgrep alone
# would also see the host's daemons: the pid namespace is shared).
chroot_pgrep() {  # chroot_pgrep SERIES PGREP_ARGS...
    local series=$1 pid ns p found=1
    shift
    pid=$(holder_pid "$series") || return 1
    ns=$(readlink "/proc/$pid/ns/mnt")
    for p in $(pgrep "$@"); do
        if [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then echo "$p"; found=0; fi
    done
    return $found
}

# Stops the processes chroot_pgrep finds and waits until they are gone.
chroot_pkill() {  # chroot_pkill SERIES PGREP_ARGS...
    local series=$1 pids
    shift
    pids=$(chroot_pgrep "$series" "$@") || return 0
    kill $pids 2>/dev/null || true
    WAIT_TIMEOUT=30 wait_for "Slurm $series daemons ($*) to stop" sh -c "! kill -0 $(echo $pids) 2>/dev/null"
}

# Runs a command inside SERIES's cluster namespace (root and cwd: the tree).
chroot_run() {  # chroot_run SERIES CMD...
    local series=$1 pid
    shift
    pid=$(holder_pid "$series") || die "the Slurm $series cluster is not up (tests/testbed/up.sh with SHOAL_TESTBED_SLURM=$series)"
    nsenter -t "$pid" -m -- "$@"
}

# Paths bound from the host into the tree at the same place.
CHROOT_BINDS=(/tmp /home "$TESTBED_STATE")

# Starts SERIES's namespace holder on TREE (idempotent).
start_holder() {  # start_holder SERIES TREE REPO
    local series=$1 tree=$2 repo=$3 pidfile
    pidfile=$(holder_pidfile "$series")
    holder_pid "$series" >/dev/null && return 0
    mkdir -p "$CLUSTER_RUN" /run/munge
    local p binds=("${CHROOT_BINDS[@]}" "$repo")
    for p in "${binds[@]}"; do mkdir -p "$tree$p"; done
    mkdir -p "$tree/.oldroot" "$tree/run"
    local script
    script=$(cat <<SH
set -e
mount --make-rprivate /
mount --bind '$tree' '$tree'
for d in proc sys dev; do mount --rbind /\$d '$tree'/\$d; done
for p in ${binds[*]}; do mount --bind "\$p" '$tree'"\$p"; done
mount -t tmpfs -o mode=755 tmpfs '$tree/run'
mkdir -p '$tree/run/munge' && mount --bind /run/munge '$tree/run/munge'
cd '$tree'
pivot_root . .oldroot
umount -l /.oldroot
cd /
echo \$\$ > '$pidfile'
exec -a shoal-holder sleep infinity
SH
)
    rm -f "$pidfile"
    # The holder must not keep up.sh's lock (fd 9) or the caller's output open.
    setsid unshare -m --propagation private bash -c "$script" </dev/null >>"$CLUSTER_RUN/slurm-$series.holder.log" 2>&1 9>&- &
    wait_for "the Slurm $series namespace" holder_pid "$series"
}

# The pids of processes in SERIES's namespace (the holder's mount namespace).
chroot_pids() {  # chroot_pids SERIES
    local pid ns p
    pid=$(holder_pid "$1") || return 0
    ns=$(readlink "/proc/$pid/ns/mnt")
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$pid" ] && continue
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
    done
    return 0
}

# Stops SERIES's cluster: its jobs, daemons, then the namespace itself.
stop_chroot_cluster() {  # stop_chroot_cluster SERIES
    local series=$1 pid
    pid=$(holder_pid "$series") || return 0
    log "stopping the Slurm $series cluster"
    chroot_run "$series" scancel --user="$TESTBED_USER" 2>/dev/null || true
    # Daemons first (slurmd kills its steps), then whatever is left.
    chroot_pkill "$series" -x slurmctld
    chroot_pkill "$series" -f '^slurmd -D -N '
    local left
    left=$(chroot_pids "$series")
    [ -z "$left" ] || kill -9 $left 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    WAIT_TIMEOUT=10 wait_for "the Slurm $series namespace to end" sh -c "! kill -0 $pid"
    rm -f "$(holder_pidfile "$series")"
}

# PrologFlags of SERIES's test bed. Both newer beds hold the allocation in
# an extern step (Contain), which loads the plugin in remote context. 24.11
# also runs the prolog inside it (RunInJob, 24.05+), as sites that put the
# prolog in the job's cgroup do: there Slurm 24.11.5 calls no SPANK job
# prolog at all (seen here: the plugin's prolog logs nothing and stages
# nothing; the first step on each node stages), so 26.05 keeps the prolog
# in slurmd, where the plugin's prolog stages (and must never fail: that
# drains the node there too).
series_prolog_flags() {  # series_prolog_flags SERIES
    case $1 in 22.05) echo Alloc ;; 24.11) echo Alloc,Contain,RunInJob ;; *) echo Alloc,Contain ;; esac
}

# slurm.conf for SERIES, from slurm.conf.in.
series_slurm_conf() {  # series_slurm_conf SERIES HOSTNAME
    local conf
    conf=$(sed -e "s/@HOST@/$2/g" "$HERE/slurm.conf.in")
    if [ "$1" != 22.05 ]; then
        # crypto/munge became cred/munge (the default) in 23.11. The
        # plugin must leave the extern step alone (series_prolog_flags).
        # Own ports (series_port_offset), so it can run beside the host's.
        local off
        off=$(series_port_offset "$1")
        conf=$(printf '%s\n' "$conf" | sed -e '/^CryptoType=/d' \
            -e "s/^PrologFlags=Alloc\$/PrologFlags=$(series_prolog_flags "$1")/" \
            -e "s/^SlurmctldPort=6817$/SlurmctldPort=$((6817 + off))/" \
            -e "s/ Port=1700\([1-3]\) / Port=$(((17000 + off) / 10))\1 /" \
            -e "s/^ClusterName=shoal$/ClusterName=shoal${1/./}/")
    fi
    if [ "$1" = 24.11 ]; then
        # Slurm 24.05.5-24.11.6 (ticket 22853, fixed in 24.11.7) run the
        # TaskProlog by exec'ing slurmstepd inside the task's mount
        # namespace: in an image that fails ("execv(/etc/alternatives/
        # slurmstepd): No such file or directory", TaskProlog failed
        # status=127) and the task with it. Seen on trixie's 24.11.5, not
        # every time; README, "Slurm versions". Sites on those releases
        # must leave TaskProlog unset for image jobs, as this test bed does
        # (SHOAL_TESTBED_TASK_PROLOG=1 keeps it: tests/slurm_versions.rs
        # records what 24.11.5 does with it).
        [ "${SHOAL_TESTBED_TASK_PROLOG:-0}" = 1 ] || conf=$(printf '%s\n' "$conf" | sed -e '/^TaskProlog=/d')
    fi
    printf '%s\n' "$conf"
}

# Brings SERIES's cluster up from its chroot, installing this build's plugin
# (INSTALL_FROM/slurm-SERIES/libspank_shoal.so, packaging/build-plugin.sh)
# and shoal binary into the tree when INSTALL_FROM is given.
chroot_cluster_up() {  # chroot_cluster_up SERIES INSTALL_FROM HOSTNAME
    local series=$1 install_from=$2 host=$3 tree repo restart=0
    tree=$(slurm_chroot "$series")
    repo=$(cd "$HERE/../.." && pwd)

    # The test user, with the host's ids (the home directory is the host's).
    local uid gid
    uid=$(id -u "$TESTBED_USER") gid=$(id -g "$TESTBED_USER")
    if ! chroot "$tree" getent passwd "$TESTBED_USER" >/dev/null; then
        chroot "$tree" groupadd -g "$gid" "$TESTBED_USER"
        chroot "$tree" useradd -M -u "$uid" -g "$gid" -d "/home/$TESTBED_USER" -s /bin/bash "$TESTBED_USER"
    fi

    if [ -n "$install_from" ]; then
        local so=$install_from/slurm-$series/libspank_shoal.so
        [ -f "$so" ] || die "$so missing: run bash packaging/build-plugin.sh $series first"
        if ! cmp -s "$so" "$tree$PLUGIN_DIR/libspank_shoal.so"; then
            install -D -m 0755 "$so" "$tree$PLUGIN_DIR/libspank_shoal.so"
            restart=1
        fi
        [ ! -f "$install_from/shoal" ] || install -D -m 0755 "$install_from/shoal" "$tree/usr/local/bin/shoal"
    fi
    install -D -m 0644 "$HERE/shoal.toml" "$tree$SHOAL_CONFIG_FILE"
    if [ -f "$tree$PLUGIN_DIR/libspank_shoal.so" ]; then
        local line="required $PLUGIN_DIR/libspank_shoal.so config=$SHOAL_CONFIG_FILE"
        if [ "$(cat "$tree$PLUGSTACK_SNIPPET" 2>/dev/null)" != "$line" ]; then
            mkdir -p "$(dirname "$tree$PLUGSTACK_SNIPPET")"
            echo "$line" > "$tree$PLUGSTACK_SNIPPET"
            restart=1
        fi
    fi

    local conf
    conf=$(series_slurm_conf "$series" "$host")
    if [ "$(cat "$tree/etc/slurm/slurm.conf" 2>/dev/null)" != "$conf" ]; then
        printf '%s\n' "$conf" > "$tree/etc/slurm/slurm.conf"
        restart=2
    fi
    # No cgroup plugin at all (24.05+): proctrack/linuxproc, task/none.
    local cg="CgroupPlugin=disabled"
    if [ "$(cat "$tree/etc/slurm/cgroup.conf" 2>/dev/null)" != "$cg" ]; then
        echo "$cg" > "$tree/etc/slurm/cgroup.conf"
        restart=2
    fi
    local gres="NodeName=n[1-3] Name=gpu File=$FAKE_GPU_DIR/nvidia[0-3]"
    if [ "$(cat "$tree/etc/slurm/gres.conf" 2>/dev/null)" != "$gres" ]; then
        printf '%s\n' "$gres" > "$tree/etc/slurm/gres.conf"
        restart=2
    fi
    # The node names resolve, as on a real cluster: from 23.11 slurmctld
    # looks up the host an srun runs on (a batch script's srun runs on
    # "n1") by name, and times the user's scancel out after 10 tries.
    # (22.05 found them in its node table.)
    local hosts
    hosts=$(printf '127.0.0.1\tlocalhost %s\n127.0.0.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$host" "${SLURM_NODES[*]}")
    [ "$(cat "$tree/etc/hosts" 2>/dev/null)" = "$hosts" ] || printf '%s\n' "$hosts" > "$tree/etc/hosts"
    install -D -m 0755 "$HERE/task-prolog.sh" "$tree/etc/slurm/task-prolog.sh"
    mkdir -p "$tree/var/spool/slurmctld" "$tree/var/log/slurm"

    start_holder "$series" "$tree" "$repo"
    local in=(chroot_run "$series")
    if [ $restart = 2 ]; then
        chroot_pkill "$series" -x slurmctld
        chroot_pkill "$series" -f '^slurmd -D -N '
    fi
    if ! chroot_pgrep "$series" -x slurmctld >/dev/null; then
        log "starting slurmctld $series"
        "${in[@]}" setsid slurmctld -D </dev/null >>"$tree/var/log/slurm/slurmctld.out" 2>&1 9>&- &
        wait_for "slurmctld $series" "${in[@]}" scontrol ping
    fi
    local n
    if [ $restart = 1 ]; then
        chroot_pkill "$series" -f '^slurmd -D -N '
    fi
    for n in "${SLURM_NODES[@]}"; do
        if ! chroot_pgrep "$series" -f "^slurmd -D -N $n\$" >/dev/null; then
            log "starting slurmd $n (Slurm $series)"
            mkdir -p "$tree/var/spool/slurmd/$n"
            install -d -m 1777 "$tree/var/spool/slurmd/$n/tmp"
            "${in[@]}" setsid unshare --uts sh -c "hostname $n && exec slurmd -D -N $n" \
                </dev/null >>"$tree/var/log/slurm/slurmd-$n.out" 2>&1 9>&- &
        fi
    done
    chroot_nodes_idle() {
        local states
        states=$(chroot_run "$series" sinfo -h -N -o '%N %T' | awk '{print $2}' | sort -u | tr '\n' ' ')
        case $states in "idle " | "idle mixed " | "mixed " | "allocated " | "allocated idle " | "allocated idle mixed " | "allocated mixed ") return 0 ;; esac
        return 1
    }
    # (In a subshell: wait_for dies on its timeout, which would end up.sh
    # here instead of resuming the nodes.)
    if ! (WAIT_TIMEOUT=10 wait_for "nodes" chroot_nodes_idle) 2>/dev/null; then
        "${in[@]}" scontrol update nodename=n[1-3] state=resume 2>/dev/null || true
    fi
    WAIT_TIMEOUT=90 wait_for "n1..n3 (Slurm $series) to be idle in sinfo" chroot_nodes_idle
}

# pgrep ARGS..., limited to the host's own mount namespace (the chroot
# clusters' daemons share the pid namespace and names).
host_pgrep() {  # host_pgrep PGREP_ARGS...
    local ns p found=1
    ns=$(readlink /proc/$$/ns/mnt)
    for p in $(pgrep "$@"); do
        if [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then echo "$p"; found=0; fi
    done
    return $found
}
