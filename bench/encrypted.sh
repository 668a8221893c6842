#!/usr/bin/env bash
# npm run bench:encrypted -- [--runtime S] [--repeat N] [--jobs a,b]: fio through encrypted
# exports, blockd and qemu-storage-daemon in one run, with the same arguments: a LUKS1 volume,
# a qcow2 with encrypt.format=luks (both aes-256-xts-plain64, as qemu-img makes them), and the
# unencrypted raw and qcow2 images of the same data for the "share of its own plain throughput"
# figure (LUKS against raw, qcow2+LUKS against qcow2).
# Each daemon gets its own copy of every image. Scratch files are removed at exit.
# Env: BENCH_SIZE (default 1G), BENCH_DIR (kept if given).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fio_nbd="$root/../shared/bench/fio-nbd.py"
extra=("$@")
size=${BENCH_SIZE:-1G}
dir=${BENCH_DIR:-$(mktemp -d /tmp/bench-enc.XXXXXX)}
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  if [ -z "${BENCH_DIR:-}" ]; then sleep 1; rm -rf "$dir"; fi
}
trap cleanup EXIT

printf 'bench passphrase' >"$dir/pw"
sec=(--object "secret,id=k,file=$dir/pw")
bytes=$(numfmt --from=iec "$size")
head -c "$bytes" /dev/urandom >"$dir/seed.raw"
# qemu-img's PBKDF2 calibration fails now and then on a busy machine ('Unable to get accurate CPU usage').
retry() { local i; for i in 1 2 3 4 5; do "$@" && return 0; sleep 0.2; done; return 1; }
for who in sut ref; do
  cp --sparse=never "$dir/seed.raw" "$dir/$who.raw"
  retry qemu-img convert -q -f raw -O luks "${sec[@]}" -o key-secret=k,iter-time=10 "$dir/seed.raw" "$dir/$who.luks"
  qemu-img convert -q -f raw -O qcow2 "$dir/seed.raw" "$dir/$who.plain.qcow2"
  retry qemu-img convert -q -f raw -O qcow2 "${sec[@]}" -o encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10 "$dir/seed.raw" "$dir/$who.qcow2"
done

start() { # who cmd...
  local who=$1; shift
  rm -f "$dir/$who.sock"
  "$@" "${sec[@]}" \
    --blockdev "driver=file,node-name=rawf,filename=$dir/$who.raw" --blockdev "driver=raw,node-name=raw0,file=rawf" \
    --blockdev "driver=file,node-name=lf,filename=$dir/$who.luks" --blockdev "driver=luks,node-name=luks0,file=lf,key-secret=k" \
    --blockdev "driver=file,node-name=pf,filename=$dir/$who.plain.qcow2" --blockdev "driver=qcow2,node-name=plainq,file=pf" \
    --blockdev "driver=file,node-name=qf,filename=$dir/$who.qcow2" \
    --blockdev "driver=qcow2,node-name=qcow0,file=qf,encrypt.format=luks,encrypt.key-secret=k" \
    --nbd-server "addr.type=unix,addr.path=$dir/$who.sock" \
    --export type=nbd,id=e-raw,node-name=raw0,name=raw,writable=on \
    --export type=nbd,id=e-luks,node-name=luks0,name=luks,writable=on \
    --export type=nbd,id=e-qcow2-plain,node-name=plainq,name=qcow2,writable=on \
    --export type=nbd,id=e-qcow2,node-name=qcow0,name=qcow2-luks,writable=on \
    >"$dir/$who.log" 2>&1 &
  echo $! >"$dir/$who.pid"
}
start sut "$root/bin/blockd"
start ref qemu-storage-daemon
uri() { echo "nbd+unix:///$2?socket=$dir/$1.sock"; }
for i in $(seq 1 100); do
  if nbdinfo --size "$(uri sut luks)" >/dev/null 2>&1 && nbdinfo --size "$(uri ref luks)" >/dev/null 2>&1; then break; fi
  sleep 0.2
  [ "$i" = 100 ] && { echo "a daemon did not come up; logs in $dir" >&2; tail -5 "$dir"/*.log >&2; exit 1; }
done
echo "# encrypted exports: $size of random data in $dir; transport: unix"
for t in raw luks qcow2 qcow2-luks; do
  echo "## $t"
  "$fio_nbd" "${extra[@]}" "project=$(uri sut $t)" "qsd=$(uri ref $t)"
done
