# Bash helpers for the tests that build synthetic ELF libraries and image
# trees (tests/abi_check.rs, tests/inject_run.rs); `$T` is the test's
# scratch directory.
set -euo pipefail
MA=${MA:-$(gcc -print-multiarch)}  # set by callers without a compiler (a chroot node)
# mklib DIR FILE SONAME [VERSION_SCRIPT [C_SOURCE [GCC_ARGS...]]]: a shared
# library named FILE with that SONAME, and the SONAME link next to it.
mklib() {
    local dir=$1 file=$2 soname=$3 vs=${4:-} src=${5:-}
    shift $(( $# < 5 ? $# : 5 ))
    mkdir -p "$dir"
    [ -n "$src" ] || src="int f_$(echo "$file" | tr -c 'a-z0-9\n' _)(void) { return 1; }"
    printf '%s\n' "$src" > "$T/src.c"
    local args=()
    if [ -n "$vs" ]; then printf '%s\n' "$vs" > "$T/src.map"; args=(-Wl,--version-script="$T/src.map"); fi
    gcc -shared -fPIC -o "$dir/$file" -Wl,-soname,"$soname" "${args[@]}" "$T/src.c" "$@"
    [ "$file" = "$soname" ] || ln -sfn "$file" "$dir/$soname"
}
# base ROOT: a merged-/usr Debian-style tree with the host's glibc, ldconfig
# and a static busybox.
base() {
    local r=$1
    mkdir -p "$r/usr/lib/$MA" "$r/usr/lib64" "$r/usr/sbin" "$r/usr/bin" "$r/etc/ld.so.conf.d"
    ln -sfn usr/lib "$r/lib"; ln -sfn usr/lib64 "$r/lib64"; ln -sfn usr/sbin "$r/sbin"; ln -sfn usr/bin "$r/bin"
    for f in libc.so.6 libm.so.6 libresolv.so.2 libpthread.so.0 libdl.so.2 librt.so.1 ld-linux-x86-64.so.2; do cp -L "/lib/$MA/$f" "$r/usr/lib/$MA/$f"; done
    ln -sfn "../lib/$MA/ld-linux-x86-64.so.2" "$r/usr/lib64/ld-linux-x86-64.so.2"
    cp -L /sbin/ldconfig "$r/usr/sbin/ldconfig"
    cp -L /bin/busybox "$r/usr/bin/busybox"
    # A shell: the test bed configures a TaskProlog (a /bin/sh script) that
    # Slurm runs inside the task's image.
    ln -sfn busybox "$r/usr/bin/sh"
    echo 'include /etc/ld.so.conf.d/*.conf' > "$r/etc/ld.so.conf"
    echo "/usr/lib/$MA" > "$r/etc/ld.so.conf.d/$MA.conf"
}
# sqfs DIR FILE: pack an image the way Shoal's store does.
sqfs() { mksquashfs "$1" "$2" -comp zstd -Xcompression-level 3 -noappend -no-progress >/dev/null; }
