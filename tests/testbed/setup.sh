#!/usr/bin/env bash
# Installs everything the test bed and the build need, from Debian's
# packages. Idempotent: does nothing when all packages are present.
source "$(dirname "$0")/common.sh"

PACKAGES=(
    # Slurm 22.05 and its headers (the plugin is built against them)
    slurm-wlm libslurm-dev munge
    # build: bindgen needs libclang
    libclang-dev pkg-config
    # images: squashfs writers/readers and FUSE (`shoal run` serves most
    # images itself; the plugin and shared containers exec squashfuse_ll)
    squashfs-tools squashfs-tools-ng squashfuse fuse3
    # a real OCI registry and tools to build and push test images
    docker-registry skopeo umoci openssl curl apache2-utils busybox-static debootstrap
    # the token server of the Bearer-auth test registry
    python3-jwt python3-cryptography
    # MPI, and the peer measured against
    mpich libmpich-dev charliecloud
    # PMIx for Slurm's mpi/pmix plugin (srun --mpi=pmix): the plugin dlopens
    # pmix2/lib/libpmix.so, the unversioned name only libpmix-dev ships
    libpmix2 libpmix-dev
    # zstd-compressed test layers (images.d/20-layers.sh, mklayers.py)
    zstd
    # benchmarks and helpers
    hyperfine util-linux procps psmisc time jq
    # ABI tests build synthetic ELF libraries (gcc, objdump)
    gcc binutils
    # fuzz/ (libfuzzer-sys builds libFuzzer's C++); hostile-image tests (getcap)
    g++ libcap2-bin
    # kill-point tests: SIGKILL and delays at chosen syscalls (tests/kill_points.rs)
    strace
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    log "all packages present"
else
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
# cosign (Debian sid) for the image signature tests, unpacked and cached.
bash "$(dirname "$0")/cosign.sh" >/dev/null
