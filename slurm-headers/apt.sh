# Private apt access to other Debian suites, for the Slurm headers
# (slurm-headers/fetch.sh) and the chroot clusters (tests/testbed/versions.sh).
# Sourced; needs no root. The host's apt sources are only read (for its
# mirrors), never changed: each suite gets its own sources list, package
# lists, cache and status under a directory of its own.

# The Debian mirror this machine already uses.
debian_mirror() {
    local uri
    uri=$(grep -hoE '^URIs:[[:space:]]+\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hoE '^deb[[:space:]]+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || { echo "error: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2; return 1; }
    echo "$uri"
}

# Its security mirror (for trixie-security), if it has one.
debian_security_mirror() {
    local uri
    uri=$(grep -hoE '^URIs:[[:space:]]+\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep security | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hoE '^deb[[:space:]]+\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep security | head -n1 || true)
    echo "${uri:-}"
}

# The Debian suite whose Slurm is SERIES ("host" for the host's own).
series_suite() {  # series_suite SERIES
    case $1 in
        22.05) echo host ;;
        24.11) echo trixie ;;
        26.05) echo sid ;;
        *) echo "error: unknown Slurm series '$1': supported are 22.05 (Debian 12, the host), 24.11 (trixie), 26.05 (sid)" >&2; return 1 ;;
    esac
}

# apt sources lines for SUITE from the host's mirrors.
suite_sources() {  # suite_sources SUITE
    local mirror security
    mirror=$(debian_mirror) || return 1
    echo "deb $mirror $1 main"
    if [ "$1" != sid ]; then
        security=$(debian_security_mirror)
        [ -z "$security" ] || echo "deb $security $1-security main"
    fi
}

# A private apt configuration for SUITE under DIR/SUITE; prints the
# APT_CONFIG file. Refreshes the package lists once a day.
private_apt() {  # private_apt DIR SUITE
    local suite=$2 dir=$1/$2 arch
    arch=$(dpkg --print-architecture)
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/preferences.d"
    suite_sources "$suite" > "$dir/sources.list" || return 1
    touch "$dir/status"
    cat > "$dir/apt.conf" <<APT
Dir::State "$dir";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/status";
Dir::Cache "$dir/cache";
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Preferences "$dir/preferences";
Dir::Etc::PreferencesParts "$dir/preferences.d";
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
APT::Sandbox::User "$(id -un)";
APT
    if [ -z "$(find "$dir/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ] \
        || ! cmp -s "$dir/sources.list" "$dir/sources.list.done"; then
        if ! APT_CONFIG=$dir/apt.conf apt-get update -qq >"$dir/update.log" 2>&1; then
            echo "error: apt-get update for $suite failed; see $dir/update.log" >&2
            return 1
        fi
        cp "$dir/sources.list" "$dir/sources.list.done"
    fi
    echo "$dir/apt.conf"
}

# The candidate version of PACKAGE under APT_CONFIG=CONF.
apt_candidate() {  # apt_candidate CONF PACKAGE
    local v
    v=$(APT_CONFIG=$1 apt-cache policy "$2" | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || { echo "error: no package $2 in $(head -n1 "${1%/apt.conf}/sources.list")" >&2; return 1; }
    echo "$v"
}
