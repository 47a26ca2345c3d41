#!/usr/bin/env bash
# cosign for the image signature tests (tests/image_policy.rs). Debian
# bookworm has no cosign; sid packages it. The .deb is fetched with a
# private APT configuration (its own sources list naming sid, its own lists,
# cache and an empty dpkg status), from the mirror this machine already
# uses, so the host's apt sources and state are never touched; it is then
# unpacked (never installed) under $TESTBED_STATE/cosign. Cached: does
# nothing once cosign is there. Prints the binary's path.
source "$(dirname "$0")/common.sh"

COSIGN_DIR=$TESTBED_STATE/cosign
COSIGN=$COSIGN_DIR/usr/bin/cosign
if [ ! -x "$COSIGN" ]; then
    mirror=$(debian_mirror)
    apt=$TESTBED_STATE/cosign-apt
    rm -rf "$apt" "$COSIGN_DIR.tmp"
    mkdir -p "$apt"/{lists/partial,archives/partial,etc/apt.conf.d,etc/preferences.d}
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" > "$apt/etc/sources.list"
    : > "$apt/status"
    cat > "$apt/apt.conf" <<CONF
Dir::State "$apt";
Dir::State::Lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt";
Dir::Cache::archives "$apt/archives";
Dir::Etc::SourceList "$apt/etc/sources.list";
Dir::Etc::SourceParts "$apt/etc/sources.list.d";
Dir::Etc::Parts "$apt/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$apt/etc/preferences.d";
APT::Architecture "amd64";
APT::Sandbox::User "root";
// A mirror snapshot's Release may be past its Valid-Until on this clock;
// the archive signature is still checked.
Acquire::Check-Valid-Until "false";
CONF
    log "fetching cosign from Debian sid ($mirror) into $COSIGN_DIR"
    export APT_CONFIG=$apt/apt.conf
    apt-get update -qq >"$apt/update.log" 2>&1 || die "apt-get update for sid failed; see $apt/update.log"
    (cd "$apt" && apt-get download -qq cosign >"$apt/download.log" 2>&1) || die "apt-get download cosign failed; see $apt/download.log"
    dpkg-deb -x "$apt"/cosign_*.deb "$COSIGN_DIR.tmp"
    mv "$COSIGN_DIR.tmp" "$COSIGN_DIR"
    rm -rf "$apt"
fi
"$COSIGN" version >/dev/null 2>&1 || die "$COSIGN does not run"
echo "$COSIGN"
