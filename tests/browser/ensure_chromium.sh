#!/usr/bin/env bash
# Print the path of a headless-capable Chromium, installing Debian's `chromium` package with apt-get when
# none is on PATH (root, or sudo without a password). Exit 1 with the reason on stderr when it cannot be
# installed (no apt-get, no root, no package source); tests/test_report_browser.py then skips with that reason.
#
# Usage: tests/browser/ensure_chromium.sh         (stdout: the executable's path; apt's output goes to stderr)
# Environment: SHARPGAPS_CHROMIUM  a browser to use instead (its path, or a name on PATH); nothing is installed
set -euo pipefail

log() { echo "ensure_chromium: $*" >&2; }
die() { log "$*"; exit 1; }

find_browser() {
    local b
    for b in ${SHARPGAPS_CHROMIUM:-} chromium chromium-browser; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}

if path=$(find_browser); then echo "$path"; exit 0; fi
[[ -n "${SHARPGAPS_CHROMIUM:-}" ]] && die "SHARPGAPS_CHROMIUM=$SHARPGAPS_CHROMIUM is not an executable"
command -v apt-get >/dev/null 2>&1 || die "chromium is not installed and there is no apt-get to install it"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    sudo -n true 2>/dev/null || die "chromium is not installed; installing it needs root (or sudo without a password)"
    SUDO="sudo -n"
fi
log "installing Debian's chromium with apt-get"
timeout 600 $SUDO apt-get update -qq >&2 || die "apt-get update failed (no package source reachable?)"
timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2 \
    || die "apt-get install chromium failed"
path=$(find_browser) || die "apt-get installed chromium but no chromium executable is on PATH"
echo "$path"
