#!/usr/bin/env bash
# Production install of ftpalg (docs/deployment.md, "Installing"): a private virtualenv with
# ftpalg and its pinned-by-range dependencies (not the development .venv, not system pip,
# which Debian refuses as an externally managed environment), the `ftpalg` command where the
# unit expects it, the systemd unit and the example configuration (never overwritten).
#
#   scripts/install.sh                      # /opt/ftpalg, /usr/local/bin/ftpalg, /etc/...
#   make install                            # the same
#   scripts/install.sh --prefix /usr --venv /opt/ftpalg --etc /etc --systemd /etc/systemd/system
#
# Re-running upgrades the virtualenv in place. Uninstall: remove the venv, the link, the unit.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local venv=/opt/ftpalg etc=/etc systemd=/etc/systemd/system python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --etc) etc=$2; shift 2 ;;
    --systemd) systemd=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    *) echo "install: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "install: ftpalg needs Python 3.11 or newer ($python is older)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
log=$(mktemp)
leftovers=()  # setuptools builds in the source tree: remove what this run creates
for d in build ftpalg.egg-info; do [ -e "$d" ] || leftovers+=("$d"); done
trap 'rm -rf "${leftovers[@]}"' EXIT
if ! "$venv/bin/pip" install -q --upgrade . >"$log" 2>&1; then
  tail -n 20 "$log" >&2; rm -f "$log"
  echo "install: pip could not install ftpalg into $venv" >&2; exit 1
fi
rm -f "$log"
install -d "$prefix/bin"
ln -sfn "$venv/bin/ftpalg" "$prefix/bin/ftpalg"

install -d "$etc/ftpalg"
[ -e "$etc/ftpalg/ftpalg.toml" ] || install -m 0644 conf/ftpalg.toml "$etc/ftpalg/ftpalg.toml"
install -d "$systemd"
sed -e "s|/usr/local/bin/ftpalg|$prefix/bin/ftpalg|g" -e "s|/etc/ftpalg/|$etc/ftpalg/|g" \
  conf/ftpalg.service >"$systemd/ftpalg.service.tmp"
chmod 0644 "$systemd/ftpalg.service.tmp"
mv "$systemd/ftpalg.service.tmp" "$systemd/ftpalg.service"

echo "installed: $prefix/bin/ftpalg -> $venv ($("$prefix/bin/ftpalg" --version))"
echo "config:    $etc/ftpalg/ftpalg.toml   unit: $systemd/ftpalg.service"
if [ "$systemd" = /etc/systemd/system ] && ! id ftpalg >/dev/null 2>&1; then
  echo "next:      useradd --system --no-create-home --shell /usr/sbin/nologin ftpalg"
fi
echo "then:      systemctl daemon-reload && systemctl enable --now ftpalg"
