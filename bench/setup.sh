#!/usr/bin/env bash
# Idempotent extra set-up for the benchmarks (run as root; `python -m bench` calls it):
# SuSE ftp-proxy from apt, and proftpd + mod_proxy unpacked privately into .lab-tools/proftpd
# (proftpd conflicts with vsftpd as ftp-server), with the libraries they link against.
# Python side (not installed here): matplotlib for the charts, py-spy for profiles.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench setup: not root, skipping (the C peers will be reported as not run)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq || true; apt_updated=1; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

for p in ftp-proxy util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    apt_install "$p" || echo "bench setup: could not install $p" >&2
done

dest=.lab-tools/proftpd
if [ ! -x "$dest/usr/sbin/proftpd" ] || [ ! -f "$dest/usr/lib/proftpd/mod_proxy.so" ]; then
  scripts/unpack-debs.sh "$dest" proftpd-core proftpd-mod-crypto proftpd-mod-proxy ||
    echo "bench setup: proftpd packages not available (its path will be reported as not run)" >&2
fi
