#!/usr/bin/env bash
# Unpack Debian packages privately into DEST, for FTP servers that conflict with vsftpd in apt
# (pure-ftpd, proftpd), and install normally the shared libraries (lib*) they depend on.
# Exit 1 when the packages cannot be downloaded; a library that cannot be installed is
# reported on stderr (the server then fails to start and its lab cases say so).
# usage: scripts/unpack-debs.sh DEST PACKAGE...
set -euo pipefail
dest=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "$@" >/dev/null 2>&1) || exit 1
mkdir -p "$dest"
libs=()
for deb in "$tmp"/*.deb; do
  dpkg-deb -x "$deb" "$dest"
  while read -r dep; do libs+=("$dep"); done < <(dpkg-deb -f "$deb" Depends |
    tr ',' '\n' | sed -E 's/^ *([^ (|]+).*/\1/' | grep '^lib' || true)
done
missing=()
for l in "${libs[@]}"; do
  dpkg-query -W -f='${Status}' "$l" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$l")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
  echo "unpack-debs: could not install ${missing[*]} (needed by $*)" >&2
