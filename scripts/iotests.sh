#!/usr/bin/env bash
# npm run iotests -- [check options] TEST...
#
# Runs QEMU's own qemu-iotests (from Debian's qemu source package, the
# version of the installed qemu-storage-daemon) with blockd as the storage
# daemon under test (QSD_PROG=bin/blockd); qemu-img, qemu-io and qemu-nbd are
# the installed ones. Example: npm run iotests -- -qcow2 qsd-jobs graph-changes-while-io
# FUSE mode (every test image exported through --export type=fuse by QSD_PROG):
#   npm run iotests -- -fuse -qcow2 025 028 ...   (as root)
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
# A test that fails half-way can leave its storage daemons running and, in
# -fuse mode, their mounts (a later test then finds the image locked): at exit
# the daemons started on this scratch are stopped and its mounts removed.
cleanup() {
  local pids
  pids=$(pgrep -f -- "$scratch/" || true)
  [ -n "$pids" ] && kill $pids 2>/dev/null && sleep 1
  pids=$(pgrep -f -- "$scratch/" || true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  awk -v d="$scratch/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
  done
  rm -rf "$scratch"
}
trap cleanup EXIT
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

run_dir=$iotests
case " $* " in
  *" -fuse "*)
    # FUSE mode: common.rc starts the daemon in the background and goes on as
    # soon as the daemon's pid is known, before it has mounted the export; qsd
    # usually wins that race, a node process does not. The tests run from a
    # copy of the test directory (in the scratch, the cached tree untouched)
    # whose common.rc also waits until the export is mounted (or the daemon died).
    mkdir -p "$scratch/tree/tests"
    cp -r "$iotests" "$scratch/tree/tests/"
    ln -s "$tree/python" "$scratch/tree/python"
    rc=$scratch/tree/tests/qemu-iotests/common.rc
    grep -q 'FUSE_EXPORTS+=("$export_mp")' "$rc" || { echo "iotests: common.rc has changed; cannot add the FUSE mount wait" >&2; exit 1; }
    sed -i 's|^\( *\)FUSE_EXPORTS+=("$export_mp")|&\n\1while ! grep -qF " $export_mp " /proc/self/mountinfo \&\& kill -0 "$pid" 2>/dev/null; do sleep 0.1; done|' "$rc"
    run_dir=$scratch/tree/tests/qemu-iotests
    ;;
esac
cd "$run_dir"
# Not exec: the trap removes the scratch afterwards.
status=0
python3 ./check "$@" || status=$?
exit $status
