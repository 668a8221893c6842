#!/usr/bin/env bash
# qcow2 benchmarks beyond vs-qsd.sh, side by side with qemu-storage-daemon:
#   alloc: 4k random writes into an EMPTY qcow2 (every write allocates a cluster)
#   chain: 4k random reads through a 3-deep backing chain (base has the data)
# Usage (from the project's root): bench/qcow2-alloc-chain.sh [--runtime S] [--repeat N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fio_nbd=${FIO_NBD:-$root/../shared/bench/fio-nbd.py}
dir=$(mktemp -d /tmp/qcow2-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$dir"; }
trap cleanup EXIT
size=1G
head -c 256M /dev/urandom > "$dir/seed.raw"
for who in sut ref; do
  mkdir -p "$dir/$who"
  qemu-img create -q -f qcow2 "$dir/$who/empty.qcow2" $size
  qemu-img convert -q -f raw -O qcow2 "$dir/seed.raw" "$dir/$who/base.qcow2"
  qemu-img resize -q "$dir/$who/base.qcow2" $size
  qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 "$dir/$who/mid.qcow2"
  qemu-img create -q -f qcow2 -F qcow2 -b mid.qcow2 "$dir/$who/top.qcow2"
done
start() { # who cmd...
  local who=$1; shift
  "$@" \
    --blockdev "driver=file,node-name=ef,filename=$dir/$who/empty.qcow2" --blockdev driver=qcow2,node-name=empty,file=ef \
    --blockdev "driver=file,node-name=tf,filename=$dir/$who/top.qcow2" --blockdev driver=qcow2,node-name=top,file=tf \
    --nbd-server "addr.type=unix,addr.path=$dir/$who.sock" \
    --export type=nbd,id=e1,node-name=empty,writable=on --export type=nbd,id=e2,node-name=top \
    >"$dir/$who.log" 2>&1 &
  pids+=($!)
}
start sut "$root/bin/blockd"
start ref qemu-storage-daemon
for i in $(seq 1 100); do
  [ -S "$dir/sut.sock" ] && [ -S "$dir/ref.sock" ] && break; sleep 0.2
done
u() { echo "nbd+unix:///$2?socket=$dir/$1.sock"; }
echo "## alloc: random 4k writes into an empty qcow2"
python3 "$fio_nbd" "$@" --size 1G --jobs randwrite-4k-qd32 "project=$(u sut empty)" "qsd=$(u ref empty)"
echo "## chain: random 4k reads through a 3-deep backing chain (data in the base, first 256 MiB)"
python3 "$fio_nbd" "$@" --size 256M --jobs randread-4k-qd1,randread-4k-qd32 "project=$(u sut top)" "qsd=$(u ref top)"
