#!/usr/bin/env bash
# npm run iotests -- [check options] TEST...
#
# Runs QEMU's own qemu-iotests (from Debian's qemu source package, the
# version of the installed qemu-storage-daemon) with blockd as the storage
# daemon under test (QSD_PROG=bin/blockd); qemu-img, qemu-io and qemu-nbd are
# the installed ones. Example: npm run iotests -- -qcow2 qsd-jobs graph-changes-while-io
#
# The tree is fetched at run time, never vendored: `apt-get source
# --download-only qemu` through a private deb-src list (the machine's own
# sources are left alone), unpacked with dpkg-source (Debian's patches
# applied) into $BLOCKD_IOTESTS_CACHE (default: $XDG_CACHE_HOME/blockd, else
# ./var/) and kept for the next run. The tests' scratch (TEST_DIR, SOCK_DIR)
# lives in a temporary directory removed at exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BLOCKD_IOTESTS_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/blockd}}
cache=${cache:-$root/var}
# The source version of the installed daemon (the package qemu-storage-daemon comes in).
version=$(dpkg-query -W -f='${source:Version}' qemu-system-common)
# Without the epoch: a colon in the path would split PYTHONPATH, which check sets to it.
tree=$cache/qemu-${version#*:}
iotests=$tree/tests/qemu-iotests

fetch() {
  local work=$cache/qemu-fetch.$$
  rm -rf "$work"; mkdir -p "$work/lists/partial" "$work/src"
  cat > "$work/deb-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local apt=(apt-get -q -o Dir::Etc::sourcelist="$work/deb-src.sources" -o Dir::Etc::sourceparts=-
             -o Dir::State::Lists="$work/lists" -o Debug::NoLocking=1)
  "${apt[@]}" update >&2
  # The installed version if the archive still has it, else the newest of the suite (said on stderr).
  (cd "$work/src" && { "${apt[@]}" source --download-only "qemu=$version" >&2 ||
    { echo "iotests: qemu $version is not in the archive; using the suite's newest" >&2
      "${apt[@]}" source --download-only qemu >&2; }; })
  local dsc; dsc=$(ls "$work/src"/qemu_*.dsc | head -n1)
  (cd "$work/src" && dpkg-source --no-check -x "$(basename "$dsc")" tree >&2)
  rm -rf "$tree"; mv "$work/src/tree" "$tree"
  rm -rf "$work"
}

if [ ! -x "$iotests/check" ]; then
  echo "iotests: fetching Debian's qemu $version source into $tree" >&2
  mkdir -p "$cache"
  fetch
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/blockd-iotests.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/test" "$scratch/sock"

# IOTESTS_QSD_PROG=qemu-storage-daemon runs the same tests against qsd itself, for comparison.
export QSD_PROG=${IOTESTS_QSD_PROG:-$root/bin/blockd}
export QEMU_IMG_PROG=${QEMU_IMG_PROG:-$(command -v qemu-img)}
export QEMU_IO_PROG=${QEMU_IO_PROG:-$(command -v qemu-io)}
export QEMU_NBD_PROG=${QEMU_NBD_PROG:-$(command -v qemu-nbd)}
# check wants a system emulator (it asks it for its machines); Debian's has no qtest accelerator,
# so a VM a test starts runs under tcg (scripts/iotests-qemu.sh).
export QEMU_PROG=${QEMU_PROG:-$root/scripts/iotests-qemu.sh}
export TEST_DIR=$scratch/test SOCK_DIR=$scratch/sock

cd "$iotests"
# Not exec: the trap removes the scratch afterwards.
status=0
python3 ./check "$@" || status=$?
exit $status
