#!/usr/bin/env bash
# The compose labs of docker/ for real on a Debian machine as root (`make compose-lab`, CI):
# runs `ftpalg lab --containers` with podman + podman-compose, after installing and preparing
# whatever is missing:
#   - podman, runc, netavark and debootstrap (apt); podman-compose (pip, pinned in
#     docker/constraints.txt) in .lab-tools/compose/venv;
#   - a containers.conf for machines like the development and CI ones (runc: crun fails on
#     hybrid cgroups; cgroupfs: no systemd; ulimits no higher than this process's: podman's
#     defaults fail with EPERM without CAP_SYS_RESOURCE; netavark, not CNI: CNI's portmap
#     also DNATs the published ports to the gateway's address on the internal network, and
#     which of the two rules comes first depends on the order podman set the networks up)
#     unless CONTAINERS_CONF is set;
#   - the base image localhost/ftpalg-base:bookworm, once per machine (no image registry is
#     reachable): a Debian bookworm root filesystem made with debootstrap and `podman import`;
#   - the wheels of ftpalg and its pinned dependencies (pip on the host; the image build
#     installs them offline: pip inside a build cannot verify the index's certificate here).
# Then both labs run again with Debian's docker-compose against podman's Docker API service.
# Arguments go to `ftpalg lab --containers` (e.g. --topology reverse, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
say() { echo "compose-lab: $* ($(($(date +%s) - t0)) s)" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "compose-lab: needs root (podman's bridge networks)" >&2; exit 1; }
./scripts/setup.sh

need=()
for p in podman runc netavark aardvark-dns debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tools=.lab-tools/compose
mkdir -p "$tools"
if [ ! -x "$tools/venv/bin/podman-compose" ]; then
  say "installing podman-compose"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q -c docker/constraints.txt podman-compose 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$tools/venv/bin/podman-compose" --version >/dev/null
fi
export PATH="$PWD/$tools/venv/bin:$PATH"

if [ -z "${CONTAINERS_CONF:-}" ]; then
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$tools/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[network]
network_backend = "netavark"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF="$PWD/$tools/containers.conf"
fi

base=localhost/ftpalg-base:bookworm
if ! podman image exists "$base"; then
  mirror=${FTPALG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /var/tmp/ftpalg-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  say "building $base: debootstrap --variant=minbase bookworm from $mirror"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1
  fi
  rm -f "$rootfs.log"
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# SOURCE_DATE_EPOCH: the same source gives the same wheel, and the image build its cache.
say "building the wheels (docker/constraints.txt) into docker/wheels"
rm -f docker/wheels/*.whl
if ! SOURCE_DATE_EPOCH=315532800 .venv/bin/pip wheel -q -c docker/constraints.txt -w docker/wheels . >.lab-tools/wheels.log 2>&1
then
  grep -v "^WARNING: Location" .lab-tools/wheels.log | tail -20 >&2; exit 1
fi

export FTPALG_BASE=$base FTPALG_PIP_SOURCE=wheels
status=0
passed=0 failed=0
count() {  # the table's last line, "ftpalg: 24/24 ok"; a run with no table counts as 1 failed
  local line
  line=$(grep -E '^ftpalg: [0-9]+/[0-9]+ ok$' "$1" | tail -1 || true)
  if [ -z "$line" ]; then failed=$((failed + 1)); return; fi
  line=${line#ftpalg: }; line=${line% ok}
  passed=$((passed + ${line%/*})); failed=$((failed + ${line#*/} - ${line%/*}))
}
say "ftpalg lab --containers with podman-compose"
# Builds on the host's network: a RUN step's apt-get then needs no bridge or NAT of podman's
# default network (whose 10.88.0.0/16 may still be routed to a CNI bridge from before).
.venv/bin/ftpalg lab --containers --compose "podman-compose --podman-build-args=--network=host" \
  "$@" | tee "$tools/podman.out" || status=$?
count "$tools/podman.out"
podman image prune -f --filter label=ftpalg.image >/dev/null || true  # earlier builds' layers

# The same compose files with Debian's docker-compose (1.29, which rejects a top-level
# `name:`), here driving podman through its Docker API: the images built above, both labs
# again. FTPALG_COMPOSE_LAB_DOCKER_COMPOSE=0 skips this pass.
if [ "${FTPALG_COMPOSE_LAB_DOCKER_COMPOSE:-1}" = 1 ]; then
  if ! command -v docker-compose >/dev/null; then
    say "installing docker-compose"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
  fi
  sock="$PWD/$tools/podman.sock"
  rm -f "$sock"
  podman system service --time=0 "unix://$sock" >"$tools/podman-service.log" 2>&1 &
  service=$!
  trap 'kill "$service" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  say "ftpalg lab --containers with docker-compose (podman's Docker API)"
  DOCKER_HOST="unix://$sock" .venv/bin/ftpalg lab --containers --compose docker-compose \
    --no-build "$@" | tee "$tools/docker-compose.out" || status=$?
  count "$tools/docker-compose.out"
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  trap - EXIT
  rm -f "$sock"
fi
say "done, exit $status"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || [ "$status" -ne 0 ] || status=1
exit "$status"
