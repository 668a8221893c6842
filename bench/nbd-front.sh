#!/usr/bin/env bash
# npm run bench:nbd-front -- [--runtime S] [--repeat N] [--jobs a,b] [--multi-conn N] [--direct]:
# the fio matrix (../shared/bench/fio-nbd.py) through an nbd node that fronts an nbdkit
# memory export, blockd vs qemu-storage-daemon 7.2 in one run (issue 14's last table).
#
# Each daemon gets its own nbdkit (memory plugin, BENCH_SIZE, default 1G) filled with the
# same random data (nbdcopy), and is started with the same arguments: an nbd node on
# nbdkit's Unix socket (driver=nbd,server.type=unix), exported again over NBD on a Unix
# socket of its own; fio's nbd engine then runs against both exports, interleaved, medians
# of --repeat. So every request crosses two NBD hops: fio → daemon (server) → nbdkit (the
# daemon's nbd client). nbdkit 1.32 has no extended headers: both daemons talk compact
# headers with structured replies to it.
#   --multi-conn N  adds a column: blockd with multi-conn=N (nbdkit memory advertises
#                   NBD_FLAG_CAN_MULTI_CONN; qsd 7.2 has no such option), its own nbdkit too.
#   --direct        adds a column: fio straight to a third nbdkit (no daemon in front), the floor.
# Env: BENCH_SIZE (default 1G), BENCH_DIR (kept if given), BLOCKD_CMD, REF_CMD,
#      FIO_NBD (default ../shared/bench/fio-nbd.py next to the project).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fio_nbd=${FIO_NBD:-$root/../shared/bench/fio-nbd.py}
read -r -a sut <<<"${BLOCKD_CMD:-$root/bin/blockd}"
read -r -a ref <<<"${REF_CMD:-qemu-storage-daemon}"
extra=(); mc=0; direct=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime|--jobs|--repeat|--size) extra+=("$1" "$2"); shift ;;
    --multi-conn) mc=$2; shift ;;
    --direct) direct=1 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$fio_nbd" ] || { echo "fio-nbd.py not found at $fio_nbd (set FIO_NBD)" >&2; exit 2; }
size=${BENCH_SIZE:-1G}
dir=${BENCH_DIR:-$(mktemp -d /tmp/bench-nbdfront.XXXXXX)}
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  if [ -z "${BENCH_DIR:-}" ]; then sleep 1; rm -rf "$dir"; fi
}
trap cleanup EXIT

head -c "$(numfmt --from=iec "$size")" /dev/urandom >"$dir/seed.raw"

fronts=(sut ref)
[ "$mc" != 0 ] && fronts+=(mc)
kits=("${fronts[@]}")
[ "$direct" = 1 ] && kits+=(direct)

# One nbdkit memory export per column, each filled with the same data.
for who in "${kits[@]}"; do
  rm -f "$dir/k-$who.sock"
  nbdkit -U "$dir/k-$who.sock" -P "$dir/k-$who.pid" memory "$size"
  for i in $(seq 1 100); do [ -S "$dir/k-$who.sock" ] && break; sleep 0.1; done
  nbdcopy "$dir/seed.raw" "nbd+unix:///?socket=$dir/k-$who.sock"
done
rm -f "$dir/seed.raw"

start() { # who extra-nbd-options cmd...
  local who=$1 opts=$2; shift 2
  rm -f "$dir/$who.sock"
  "$@" \
    --blockdev "driver=nbd,node-name=remote,server.type=unix,server.path=$dir/k-$who.sock$opts" \
    --nbd-server "addr.type=unix,addr.path=$dir/$who.sock" \
    --export type=nbd,id=e0,node-name=remote,name=front,writable=on \
    >"$dir/$who.log" 2>&1 &
  echo $! >"$dir/$who.pid"
}
start sut "" "${sut[@]}"
start ref "" "${ref[@]}"
[ "$mc" != 0 ] && start mc ",multi-conn=$mc" "${sut[@]}"
uri() { echo "nbd+unix:///front?socket=$dir/$1.sock"; }
for i in $(seq 1 100); do
  up=1
  for who in "${fronts[@]}"; do nbdinfo --size "$(uri "$who")" >/dev/null 2>&1 || up=0; done
  [ $up = 1 ] && break
  sleep 0.2
  [ "$i" = 100 ] && { echo "a daemon did not come up; logs in $dir" >&2; tail -5 "$dir"/*.log >&2; exit 1; }
done

cols=("blockd=$(uri sut)" "qsd=$(uri ref)")
[ "$mc" != 0 ] && cols+=("blockd-mc$mc=$(uri mc)")
[ "$direct" = 1 ] && cols+=("nbdkit-direct=nbd+unix:///?socket=$dir/k-direct.sock")
echo "# fio through an nbd node fronting nbdkit memory ($size of random data), transport: unix, in $dir"
echo "# ratio: blockd/qsd (above 1.00: blockd faster)"
"$fio_nbd" "${extra[@]}" "${cols[@]}"
