#!/usr/bin/env bash
# Brings up (or checks) the local test bed: munge, slurmctld, three slurmd
# (n1..n3, each in its own UTS namespace so a task's hostname is its node
# name), a TLS registry on 127.0.0.1:5443 seeded with test images, and an
# unprivileged user. Installs Shoal from a build directory when given one:
#
#   up.sh [--install TARGET_DIR]     e.g. up.sh --install target/debug
#
# SHOAL_TESTBED_SLURM=24.11 or 26.05 runs that Slurm's cluster from its
# chroot instead (chroot-cluster.sh; the plugin from
# TARGET_DIR/slurm-SERIES/, packaging/build-plugin.sh) and stops the others:
# one cluster runs at a time, on the same ports.
#
# Idempotent and safe to run concurrently (serialized by a lock that the
# daemons it starts do not inherit); it waits on readiness (sinfo shows
# idle, the registry answers), never on sleeps.
source "$(dirname "$0")/common.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/chroot-cluster.sh"

install_from=
while [ $# -gt 0 ]; do
    case $1 in
        --install) install_from=$2; shift 2 ;;
        *) die "unknown argument $1 (usage: up.sh [--install TARGET_DIR])" ;;
    esac
done

# The daemons started below must hold no descriptor of the caller's: under
# `flock /tmp/shoal-cluster.lock tests/testbed/up.sh` the lock's fd would
# live on in munged and the registries, and the cluster lock would never
# be released again. The caller's flock keeps its own copy.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    # (bash reads this script through a high fd of its own: keep those.)
    [ "$fd" -gt 2 ] 2>/dev/null && [ "$fd" -lt 10 ] && eval "exec $fd>&-"
done

mkdir -p "$TESTBED_STATE"
exec 9>"$TESTBED_STATE/lock"
flock 9

hostname_short=$(hostname)

# --- the unprivileged user ---------------------------------------------------
id "$TESTBED_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$TESTBED_USER"
# A second one on the same nodes, for tests/multi_user.rs.
id bob >/dev/null 2>&1 || useradd -m -s /bin/bash bob
# Sites ship /dev/fuse 0666; squashfuse as a user needs it.
[ -e /dev/fuse ] && chmod 666 /dev/fuse

# --- Shoal itself --------------------------------------------------------------
restart_slurmd=0
if [ "$SLURM_SERIES" = 22.05 ]; then
if [ -n "$install_from" ]; then
    [ -f "$install_from/libspank_shoal.so" ] || die "$install_from/libspank_shoal.so missing: run cargo build --workspace first"
    mkdir -p "$PLUGIN_DIR" /etc/shoal
    if ! cmp -s "$install_from/libspank_shoal.so" "$PLUGIN_DIR/libspank_shoal.so"; then
        # install(1) writes a new inode, so a process that has the old file
        # mapped keeps working; slurmd is restarted below to load the new one.
        install -m 0755 "$install_from/libspank_shoal.so" "$PLUGIN_DIR/libspank_shoal.so"
        restart_slurmd=1
    fi
    if [ -f "$install_from/shoal" ]; then
        install -m 0755 "$install_from/shoal" /usr/local/bin/shoal
    fi
fi
if ! cmp -s "$HERE/shoal.toml" "$SHOAL_CONFIG_FILE"; then
    mkdir -p "$(dirname "$SHOAL_CONFIG_FILE")"
    install -m 0644 "$HERE/shoal.toml" "$SHOAL_CONFIG_FILE"
fi
if [ -f "$PLUGIN_DIR/libspank_shoal.so" ]; then
    line="required $PLUGIN_DIR/libspank_shoal.so config=$SHOAL_CONFIG_FILE"
    if [ "$(cat "$PLUGSTACK_SNIPPET" 2>/dev/null)" != "$line" ]; then
        mkdir -p "$(dirname "$PLUGSTACK_SNIPPET")"
        echo "$line" > "$PLUGSTACK_SNIPPET"
        restart_slurmd=1
    fi
fi
install -D -m 0755 "$HERE/task-prolog.sh" /etc/slurm/task-prolog.sh
fi

# --- munge ---------------------------------------------------------------------
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged 9>&-
    wait_for "munged" munge -n
fi

# --- fake GPUs: four character devices per node, handed out by gres/gpu ------
# Major 195 is NVIDIA's; no driver answers on this machine (opening one gives
# ENXIO), which is all the GPU-module tests need: the device nodes must exist,
# Slurm must allocate them and set CUDA_VISIBLE_DEVICES.
mkdir -p "$FAKE_GPU_DIR"
for i in 0 1 2 3; do
    [ -c "$FAKE_GPU_DIR/nvidia$i" ] || mknod -m 0666 "$FAKE_GPU_DIR/nvidia$i" c 195 "$i"
done
# The driver's control node, and a fake driver: libcuda.so.1 and
# libnvidia-ml.so.1 with the real SONAMEs (the `gpu` module of shoal.toml).
[ -c "$FAKE_GPU_DIR/nvidiactl" ] || mknod -m 0666 "$FAKE_GPU_DIR/nvidiactl" c 195 255
mkdir -p "$FAKE_GPU_DIR/lib"
for so in libcuda.so.1 libnvidia-ml.so.1; do
    [ -f "$FAKE_GPU_DIR/lib/$so" ] && continue
    fn=$(echo "${so%%.so*}" | tr -c 'a-z\n' _)
    echo "int ${fn}_fake_driver(void) { return 535; }" > "$FAKE_GPU_DIR/lib/$so.c"
    gcc -shared -fPIC -Wl,-soname,"$so" -o "$FAKE_GPU_DIR/lib/$so.tmp" "$FAKE_GPU_DIR/lib/$so.c"
    mv "$FAKE_GPU_DIR/lib/$so.tmp" "$FAKE_GPU_DIR/lib/$so"
    rm -f "$FAKE_GPU_DIR/lib/$so.c"
done
gres="NodeName=n[1-3] Name=gpu File=$FAKE_GPU_DIR/nvidia[0-3]"
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$gres" ]; then
    printf '%s\n' "$gres" > /etc/slurm/gres.conf
    restart_slurmd=1
fi

if [ "$SLURM_SERIES" = 22.05 ]; then
# --- slurm.conf ----------------------------------------------------------------
mkdir -p /var/spool/slurmctld /var/log/slurm /etc/slurm
conf=$(series_slurm_conf 22.05 "$hostname_short")
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/slurm/slurm.conf
    restart_slurmd=1
    if pids=$(host_pgrep -x slurmctld); then
        kill $pids
        wait_for "slurmctld to stop" sh -c "! kill -0 $(echo $pids) 2>/dev/null"
    fi
fi

# --- slurmctld and the three slurmd -------------------------------------------
if ! host_pgrep -x slurmctld >/dev/null; then
    log "starting slurmctld"
    slurmctld 9>&-
    wait_for "slurmctld" scontrol ping
fi
slurmd_running() { pgrep -f "^slurmd -N $1\$" >/dev/null; }
if [ $restart_slurmd = 1 ]; then
    for n in "${SLURM_NODES[@]}"; do
        pkill -f "^slurmd -N $n\$" 2>/dev/null || true
    done
    for n in "${SLURM_NODES[@]}"; do
        wait_for "slurmd $n to stop" sh -c "! pgrep -f '^slurmd -N $n\$'"
    done
fi
for n in "${SLURM_NODES[@]}"; do
    if ! slurmd_running "$n"; then
        log "starting slurmd $n"
        mkdir -p "/var/spool/slurmd/$n"
        install -d -m 1777 "/var/spool/slurmd/$n/tmp"   # TmpFS (slurm.conf.in)
        unshare --uts sh -c "hostname $n && exec slurmd -N $n" 9>&-
    fi
done
nodes_idle() {
    local states
    states=$(sinfo -h -N -o '%N %T' | awk '{print $2}' | sort -u)
    [ "$states" = idle ] || [ "$states" = "idle
mixed" ] || [ "$states" = mixed ] || [ "$states" = allocated ] || return 1
}
if ! WAIT_TIMEOUT=10 wait_for "nodes" nodes_idle 2>/dev/null; then
    # After a restart, nodes may be down/drained from an earlier run.
    scontrol update nodename=n[1-3] state=resume 2>/dev/null || true
fi
WAIT_TIMEOUT=90 wait_for "n1..n3 to be idle in sinfo" nodes_idle
else
    chroot_cluster_up "$SLURM_SERIES" "$install_from" "$hostname_short"
fi

# --- the TLS registry ----------------------------------------------------------
mkdir -p "$TLS_DIR" "$REGISTRY_DIR"
if [ ! -f "$CA_CERT" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$TLS_DIR/key.pem" -out "$CA_CERT" 2>/dev/null
    chmod 644 "$CA_CERT"
fi
cat > "$TESTBED_STATE/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  tls:
    certificate: $CA_CERT
    key: $TLS_DIR/key.pem
YML
registry_up() { curl -sf --cacert "$CA_CERT" "https://$REGISTRY_ADDR/v2/" >/dev/null; }
if ! registry_up; then
    log "starting the registry on $REGISTRY_ADDR"
    setsid docker-registry serve "$TESTBED_STATE/registry.yml" \
        >>/var/log/shoal-testbed-registry.log 2>&1 < /dev/null 9>&- &
    wait_for "the registry on $REGISTRY_ADDR" registry_up
fi

# --- a second registry that wants a login (htpasswd, basic auth) ---------------
# Same TLS certificate as the first; its test login is AUTH_REGISTRY_USER /
# AUTH_REGISTRY_PASSWORD (common.sh). Additive: the first registry is untouched.
AUTH_DIR=$TESTBED_STATE/registry-auth
mkdir -p "$AUTH_DIR"
if ! htpasswd -vb "$AUTH_DIR/htpasswd" "$AUTH_REGISTRY_USER" "$AUTH_REGISTRY_PASSWORD" >/dev/null 2>&1; then
    htpasswd -Bbc "$AUTH_DIR/htpasswd" "$AUTH_REGISTRY_USER" "$AUTH_REGISTRY_PASSWORD" 2>/dev/null
fi
cat > "$TESTBED_STATE/registry-auth.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $AUTH_DIR/data
http:
  addr: $AUTH_REGISTRY_ADDR
  tls:
    certificate: $CA_CERT
    key: $TLS_DIR/key.pem
auth:
  htpasswd:
    realm: shoal-testbed
    path: $AUTH_DIR/htpasswd
YML
# Any HTTP answer (401 without a login) means it is up.
auth_registry_up() { curl -s --cacert "$CA_CERT" -o /dev/null "https://$AUTH_REGISTRY_ADDR/v2/"; }
if ! auth_registry_up; then
    log "starting the login-protected registry on $AUTH_REGISTRY_ADDR"
    setsid docker-registry serve "$TESTBED_STATE/registry-auth.yml" \
        >>/var/log/shoal-testbed-registry-auth.log 2>&1 < /dev/null 9>&- &
    wait_for "the registry on $AUTH_REGISTRY_ADDR" auth_registry_up
fi

# --- a third registry with Bearer-token auth -----------------------------------
# The registry protocol most public registries use: the registry answers 401
# with a `Bearer realm=...` challenge, a token server (token_server.py, on
# TOKEN_SERVER_ADDR) hands out JWTs for the test login, the registry checks
# them against the signing key's certificate.
TOKEN_DIR=$TESTBED_STATE/registry-token
mkdir -p "$TOKEN_DIR"
if [ ! -f "$TOKEN_DIR/signing.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=shoal-testbed-token \
        -keyout "$TOKEN_DIR/signing.key" -out "$TOKEN_DIR/signing.crt" 2>/dev/null
fi
cat > "$TESTBED_STATE/registry-token.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $TOKEN_DIR/data
http:
  addr: $TOKEN_REGISTRY_ADDR
  tls:
    certificate: $CA_CERT
    key: $TLS_DIR/key.pem
auth:
  token:
    realm: https://$TOKEN_SERVER_ADDR/token
    service: shoal-testbed-registry
    issuer: shoal-testbed-token
    rootcertbundle: $TOKEN_DIR/signing.crt
YML
token_server_up() { curl -s --cacert "$CA_CERT" -o /dev/null "https://$TOKEN_SERVER_ADDR/token"; }
if ! token_server_up; then
    log "starting the token server on $TOKEN_SERVER_ADDR"
    setsid /usr/bin/python3 "$HERE/token_server.py" "$TOKEN_SERVER_ADDR" "$CA_CERT" "$TLS_DIR/key.pem" \
        "$TOKEN_DIR/signing.key" "$AUTH_REGISTRY_USER" "$AUTH_REGISTRY_PASSWORD" \
        >>/var/log/shoal-testbed-token-server.log 2>&1 < /dev/null 9>&- &
    wait_for "the token server on $TOKEN_SERVER_ADDR" token_server_up
fi
token_registry_up() { curl -s --cacert "$CA_CERT" -o /dev/null "https://$TOKEN_REGISTRY_ADDR/v2/"; }
if ! token_registry_up; then
    log "starting the token-auth registry on $TOKEN_REGISTRY_ADDR"
    setsid docker-registry serve "$TESTBED_STATE/registry-token.yml" \
        >>/var/log/shoal-testbed-registry-token.log 2>&1 < /dev/null 9>&- &
    wait_for "the registry on $TOKEN_REGISTRY_ADDR" token_registry_up
fi

# --- test images -----------------------------------------------------------------
"$HERE/images.sh"

# --- the site store -----------------------------------------------------------
# Admins pull site images as root into store.site_dir; the plugin may
# kernel-mount those. Only when installing a build (a re-pull of an
# unchanged image is one manifest request).
if [ -n "$install_from" ]; then
    site_shoal=(/usr/local/bin/shoal)
    [ "$SLURM_SERIES" = 22.05 ] || site_shoal=(chroot_run "$SLURM_SERIES" /usr/local/bin/shoal)
    for img in shoal/busybox:latest shoal/debian-mpich:12 shoal/debian-openmpi:12 $(series_images "$SLURM_SERIES"); do
        "${site_shoal[@]}" pull --site -q "$REGISTRY_ADDR/$img" || die "shoal pull --site $img failed"
    done
fi

log "up: slurm $SLURM_SERIES n1..n3 idle, registry https://$REGISTRY_ADDR (CA $CA_CERT), user $TESTBED_USER"
