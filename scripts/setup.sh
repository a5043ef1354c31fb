#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine (run as root):
# system packages for the lab (nftables, iproute2, real FTP servers and clients),
# then a virtualenv in .venv with ftpalg and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nftables iproute2 vsftpd lftp curl wget tayga tcpdump conntrack procps make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# systemd-analyze checks the unit that scripts/install.sh writes (tests/test_install.py)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The lab runs its FTP servers privately inside network namespaces; what apt enables on the
# host (vsftpd listening on [::]:21 with local logins, SuSE ftp-proxy from bench/setup.sh,
# Tayga's NAT64 on a host tun device with NAT44) is disabled and masked, and stopped through
# systemd when it runs. Never through init scripts: they stop every process of the binary,
# the lab's own servers included.
for unit in vsftpd ftp-proxy tayga; do
  if [ "$(id -u)" -eq 0 ] && command -v systemctl >/dev/null \
    && [ -n "$(systemctl list-unit-files "$unit.service" --no-legend 2>/dev/null)" ]; then
    if [ -d /run/systemd/system ]; then systemctl stop "$unit" >/dev/null 2>&1 || true; fi
    systemctl disable "$unit" >/dev/null 2>&1 || true
    systemctl mask "$unit" >/dev/null 2>&1 || true
  fi
  if [ "$(id -u)" -eq 0 ] && [ -x "/etc/init.d/$unit" ] && command -v update-rc.d >/dev/null; then
    update-rc.d "$unit" disable >/dev/null 2>&1 || true
  fi
done

# pure-ftpd and proftpd (the NAT64 lab's IPv4-only proftpd) conflict with vsftpd (all
# provide ftp-server): unpacked privately, with the libraries they link against.
if [ ! -x .lab-tools/pure-ftpd/usr/sbin/pure-ftpd ] && [ "$(id -u)" -eq 0 ]; then
  scripts/unpack-debs.sh .lab-tools/pure-ftpd pure-ftpd-common pure-ftpd ||
    echo "setup: pure-ftpd not available (its lab cases will report that)" >&2
fi
if [ ! -x .lab-tools/proftpd/usr/sbin/proftpd ] && [ "$(id -u)" -eq 0 ]; then
  scripts/unpack-debs.sh .lab-tools/proftpd proftpd-core ||
    echo "setup: proftpd not available (its lab cases will report that)" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
