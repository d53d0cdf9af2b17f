#!/usr/bin/env bash
# Make this machine able to run docker-compose.yml under podman, with no registry of container images: install
# podman, runc, debootstrap (Debian's packages) and check that a container starts; build the local stand-in
# images (a Python base made by debootstrap, PostgreSQL and Redis from Debian's packages, moto's S3 server from
# PyPI); lay out a local package index holding CPU torch and its dependencies for the image build. What exists
# already is kept, so a second run takes seconds. README.md ("Deploy with Docker") says why each piece is there.
#
#   deploy/podman/setup.sh            # then source "$SEPCONV_PODMAN_CACHE/env" for the variables below
#
# Exit 0: ready; the last line of stdout is the env file's path. Exit 3: this machine cannot run containers this
# way (the reason is the last line on stderr, and tests skip with it). Anything else: a real failure.
#
# Settings (environment): SEPCONV_PODMAN_CACHE (default /var/cache/sepconv-podman: the wheel index, and a
# debootstrap folder while the base is made), TORCH_VERSION (2.13.0), DEBIAN_MIRROR (the one apt uses here).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${SEPCONV_PODMAN_CACHE:-/var/cache/sepconv-podman}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SUITE=bookworm
STANDIN=localhost/sepconv-standin
# The stand-ins are tagged with a hash of their recipes (standins/): a changed recipe builds them again, and
# images of other recipes are removed.
RECIPE="$(cat "$HERE"/standins/* | sha256sum | cut -c1-12)"
BASE="$STANDIN/python:3.11-$SUITE-$RECIPE"
export CONTAINERS_CONF="$HERE/containers.conf"

skip() { echo "sepconv-podman: cannot run containers here: $*" >&2; exit 3; }
step() { echo "== $*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  sudo -n true 2>/dev/null || skip "needs root (or password-less sudo) to install podman and run rootful containers"
  SUDO="sudo -n --preserve-env=CONTAINERS_CONF"
fi
podman() { $SUDO command podman "$@"; }

# -- the tools --------------------------------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "${missing[*]} missing and no apt-get to install them"
  step "installing ${missing[*]} from Debian's packages"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      podman runc debootstrap; } >"/tmp/sepconv-podman-apt.log" 2>&1 \
    || skip "apt-get install podman runc debootstrap failed: $(tail -n 1 /tmp/sepconv-podman-apt.log)"
fi
podman info >/dev/null 2>&1 || skip "podman info failed: $(podman info 2>&1 | tail -n 1)"
mkdir -p "$CACHE"
for image in $(podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$STANDIN/*"); do
  [ "${image##*[:-]}" = "$RECIPE" ] || podman rmi -f "$image" >/dev/null 2>&1 || true
done

# -- the Python base (stand-in for python:3.11-slim-bookworm) --------------------------------------------------
if ! podman image exists "$BASE"; then
  step "making $BASE with debootstrap"
  mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$CACHE/rootfs"
  rc=0; $SUDO bash "$HERE/standins/python-rootfs.sh" "$rootfs" "$SUITE" "$mirror" || rc=$?
  [ "$rc" -ne 3 ] || skip "debootstrap $SUITE from $mirror failed: $(tail -n 1 "$rootfs.log")"
  [ "$rc" -eq 0 ] || { echo "making the base's root file system failed ($rc)" >&2; exit 1; }
  $SUDO tar -C "$rootfs" -c . | podman import --change 'ENV=LANG=C.UTF-8' --change 'CMD=["python3"]' - "$BASE" \
      >/dev/null
  $SUDO rm -rf "$rootfs"
fi
podman run --rm "$BASE" python -c 'import venv, ssl' >/dev/null 2>"$CACHE/run.log" \
  || skip "a container does not start: $(tail -n 1 "$CACHE/run.log")"

# -- PostgreSQL, Redis, S3 ----------------------------------------------------------------------------------------
for name in postgres redis s3; do
  if ! podman image exists "$STANDIN/$name:$RECIPE"; then
    step "building $STANDIN/$name"
    podman build --network host --build-arg "BASE=$BASE" -f "$HERE/standins/$name.Containerfile" \
        -t "$STANDIN/$name:$RECIPE" "$HERE/standins" >"$CACHE/build-$name.log" 2>&1 \
      || { tail -n 20 "$CACHE/build-$name.log" >&2; echo "building the $name stand-in failed" >&2; exit 1; }
  fi
done

# -- CPU torch for the image build --------------------------------------------------------------------------------
# A simple index (PEP 503, as folders and index.html files) of torch==TORCH_VERSION and its dependencies, taken
# by this machine's pip: where a CPU wheel lies on disk (pip's find-links here) pip prefers it, so the build
# does not pull CUDA wheels of several GB. Mounted into the build at /wheels (TORCH_INDEX_URL=file:///wheels/simple).
wheels="$CACHE/wheels-$TORCH_VERSION"
if [ ! -f "$wheels/simple/index.html" ]; then
  step "laying out a package index of torch==$TORCH_VERSION"
  python3 -m pip download --quiet --only-binary=:all: --dest "$wheels/files" "torch==$TORCH_VERSION" \
      2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) \
    || { echo "pip download torch==$TORCH_VERSION failed" >&2; exit 1; }
  python3 "$HERE/simple_index.py" "$wheels/files" "$wheels/simple"
fi

cat >"$CACHE/env" <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export SEPCONV_PODMAN_BASE=$BASE
export SEPCONV_PODMAN_STANDIN=$STANDIN
export SEPCONV_PODMAN_TAG=$RECIPE
export SEPCONV_PODMAN_WHEELS=$wheels
EOF
echo "$CACHE/env"
