#!/usr/bin/env bash
# npm run bench:rbd -- [--runtime S] [--repeat N] [--jobs a,b]: the fio matrix on Ceph RBD images
# through blockd's and qemu-storage-daemon's driver=rbd in one run, on one single-node cluster
# started here (ceph-mon + a memstore ceph-osd, auth none, pool size 1, as test/helpers/ceph.ts).
# Each daemon gets its own image, filled with the same random data (rbd import). The OSD keeps
# everything in memory: about 3x BENCH_SIZE of RAM. Scratch files and the cluster go at exit.
# Env: BENCH_SIZE (default 1G; also fio's --size unless one is given), BENCH_DIR (kept if given),
#      FIO_NBD (default ../shared/bench/fio-nbd.py next to the project).
# Smoke run: BENCH_SIZE=64M bash bench/rbd.sh --runtime 1 --repeat 1
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0;; esac
fio_nbd=${FIO_NBD:-$root/../shared/bench/fio-nbd.py}
# Checked before a cluster is started for nothing.
[ -f "$fio_nbd" ] || { echo "bench/rbd.sh: no fio matrix at $fio_nbd (set FIO_NBD)" >&2; exit 1; }
size=${BENCH_SIZE:-1G}
# fio's --size follows the image's (fio-nbd.py's own default is 1G); a later --size wins.
extra=(--size "$size" "$@")
dir=${BENCH_DIR:-$(mktemp -d /tmp/bench-rbd.XXXXXX)}
cleanup() {
  local pids=() f p i
  for f in "$dir"/*.pid "$dir"/run/*.pid; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The OSD takes a while to stop; it must be gone before its directory is.
  for p in "${pids[@]}"; do for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done
  if [ -z "${BENCH_DIR:-}" ]; then sleep 1; rm -rf "$dir"; fi
}
trap cleanup EXIT

bytes=$(numfmt --from=iec "$size")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fsid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$dir/run"
conf="$dir/ceph.conf"
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
osd pool default pg autoscale mode = off
osd class update on start = false
osd crush update on start = false
osd objectstore = memstore
memstore device bytes = $((bytes * 3 + (512 << 20)))
run dir = $dir/run
log file = $dir/\$name.log
mon cluster log file = $dir/cluster.log
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
mon data = $dir/mon.\$id
osd data = $dir/osd.\$id
keyring = /dev/null
ms bind ipv6 = false
CONF
c=(-c "$conf")
monmaptool --create --clobber --addv a "[v1:127.0.0.1:$port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon "${c[@]}" --mkfs -i a --monmap "$dir/monmap"
ceph-mon "${c[@]}" -i a
uuid=$(cat /proc/sys/kernel/random/uuid)
id=$(ceph "${c[@]}" osd new "$uuid")
mkdir -p "$dir/osd.$id"
ceph-osd "${c[@]}" -i "$id" --mkfs --osd-uuid "$uuid" 2>/dev/null
ceph "${c[@]}" osd crush add "osd.$id" 1.0 root=default >/dev/null 2>&1
ceph-osd "${c[@]}" -i "$id" 2>/dev/null
ceph "${c[@]}" osd pool create rbd 32 >/dev/null 2>&1
ceph "${c[@]}" osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1
rbd "${c[@]}" pool init rbd
head -c "$bytes" /dev/urandom >"$dir/seed.raw"
for who in sut ref; do rbd "${c[@]}" import --no-progress "$dir/seed.raw" "rbd/$who"; done
rm -f "$dir/seed.raw"

start() { # who cmd...
  local who=$1; shift
  "$@" --blockdev "driver=rbd,node-name=r,pool=rbd,image=$who,conf=$conf,cache.direct=on" \
    --nbd-server "addr.type=unix,addr.path=$dir/$who.sock" \
    --export type=nbd,id=e,node-name=r,name=rbd,writable=on >"$dir/$who.log" 2>&1 &
  echo $! >"$dir/$who.pid"
}
start sut "$root/bin/blockd"
start ref qemu-storage-daemon
uri() { echo "nbd+unix:///rbd?socket=$dir/$1.sock"; }
for i in $(seq 1 100); do
  if nbdinfo --size "$(uri sut)" >/dev/null 2>&1 && nbdinfo --size "$(uri ref)" >/dev/null 2>&1; then break; fi
  sleep 0.2
  [ "$i" = 100 ] && { echo "a daemon did not come up; logs in $dir" >&2; tail -5 "$dir"/*.log >&2; exit 1; }
done
echo "# rbd images: $size of random data on a memstore OSD in $dir; cache.direct=on; transport: unix"
"$fio_nbd" "${extra[@]}" "project=$(uri sut)" "qsd=$(uri ref)"
