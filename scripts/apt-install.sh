# Sourced (not run) by the scripts that install what the tests need from Debian packages
# (scripts/install-prometheus.sh, scripts/install-image-tools.sh):
#
#   . "$(dirname "$0")/apt-install.sh"
#   apt_install WHAT VERSIONS HINT "PACKAGE..." COMMAND...
#
# Does nothing but say so when every COMMAND is already on PATH. Otherwise installs the
# PACKAGEs with apt-get, non-interactively, through sudo unless root, and checks that every
# COMMAND is then on PATH. WHAT names what is installed in the messages; VERSIONS is a
# shell command printing the installed versions on one line; HINT says how to install by
# hand (lines). Every failure (no apt-get, not root without sudo, apt-get failing, a
# COMMAND still missing) prints a line starting "error:" and HINT on stderr, and exits 1.

apt_install() {
    what=$1
    versions=$2
    hint=$3
    packages=$4
    shift 4

    if all_on_path "$@"; then
        echo "$what already installed: $(eval "$versions")"
        return 0
    fi

    if ! command -v apt-get >/dev/null 2>&1; then
        apt_fail "apt-get not found, so $what cannot be installed here" "$hint"
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            apt_fail "not root and sudo not found, so $what cannot be installed with apt-get ($packages)" "$hint"
        fi
        sudo="sudo"
    fi
    # shellcheck disable=SC2086 # $sudo and $packages are word lists
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
        apt_fail "apt-get update failed: $what not installed ($packages)" "$hint"
    fi
    # shellcheck disable=SC2086
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages; then
        apt_fail "apt-get install $packages failed" "$hint"
    fi
    if ! all_on_path "$@"; then
        apt_fail "apt-get installed $packages, but not all of $* are on PATH" "$hint"
    fi
    echo "installed $what: $(eval "$versions")"
}

# Whether every argument is a command on PATH.
all_on_path() {
    for command in "$@"; do
        command -v "$command" >/dev/null 2>&1 || return 1
    done
}

# Prints "error: MESSAGE" and the hint on stderr, and exits 1.
apt_fail() {
    echo "error: $1" >&2
    echo "$2" >&2
    exit 1
}
