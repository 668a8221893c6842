#!/usr/bin/env bash
# Iothreads: two fio clients at once, each on its own export of its own raw
# file, with both exports in the main loop, both in one iothread, or each in
# its own iothread; blockd beside qemu-storage-daemon with the same command
# line. Prints the sum of the two clients' IOPS per job and layout.
#
# qsd 7.2 (Debian's build) cannot be measured with iothread exports: it
# aborts when the first client disconnects (blockdev-nbd.c:62,
# nbd_blockdev_client_closed: Assertion `qemu_in_main_thread() &&
# nbd_server' failed), here at the readiness probe; its column then says
# "aborted".
#
#   npm run bench:iothreads [-- --runtime S] [--jobs randwrite-4k-qd32,...]
#
# Run it alone (no test suite, no helper): it measures how far one and two
# event loops go on this machine's cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runtime=8
jobs="randread-4k-qd32,randwrite-4k-qd32"
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
dir="$(mktemp -d /tmp/blockd-bench-iothreads.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for f in a b; do fallocate -l 1G "$dir/$f.raw"; done

# Layouts: where export e-a and e-b run.
layout_args() {
  local objects=() ta= tb=
  case "$1" in
    main) ;;
    one) objects=(--object iothread,id=io0); ta=",iothread=io0"; tb=",iothread=io0" ;;
    two) objects=(--object iothread,id=io0 --object iothread,id=io1); ta=",iothread=io0"; tb=",iothread=io1" ;;
  esac
  echo "${objects[@]}" \
    --blockdev driver=file,node-name=fa,filename="$dir/a.raw",cache.direct=off --blockdev driver=raw,node-name=a,file=fa \
    --blockdev driver=file,node-name=fb,filename="$dir/b.raw",cache.direct=off --blockdev driver=raw,node-name=b,file=fb \
    --export "type=nbd,id=e-a,node-name=a,name=a,writable=on$ta" \
    --export "type=nbd,id=e-b,node-name=b,name=b,writable=on$tb"
}

start() { # who layout: sets $sock and $server
  local who="$1"
  sock="$dir/$1-$2.sock"
  local cmd
  if [ "$who" = blockd ]; then cmd=(node "$here/../bin/blockd"); else cmd=(qemu-storage-daemon); fi
  # shellcheck disable=SC2046
  "${cmd[@]}" --nbd-server addr.type=unix,addr.path="$sock" $(layout_args "$2") >"$dir/$who-$2.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do nbdinfo --size "nbd+unix:///a?socket=$sock" >/dev/null 2>&1 && break; sleep 0.1; done
}

fio_iops() { # socket export rw bs qd
  fio --name=t --ioengine=nbd --uri="nbd+unix:///$2?socket=$1" --rw="$3" --bs="$4" --iodepth="$5" --size=1G \
    --time_based --runtime="$runtime" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0] if "{" in t else None; print(round(j["read"]["iops"]+j["write"]["iops"]) if j else 0)'
}

printf '%-20s %-6s %12s %12s %8s\n' job layout blockd qsd ratio
IFS=, read -ra joblist <<<"$jobs"
for job in "${joblist[@]}"; do
  IFS=- read -r rw bs qd <<<"$job"
  qd="${qd#qd}"
  for layout in main one two; do
    declare -A sum=()
    for who in blockd qsd; do
      start "$who" "$layout"
      fio_iops "$sock" a "$rw" "$bs" "$qd" >"$dir/out-a" & fa=$!
      fio_iops "$sock" b "$rw" "$bs" "$qd" >"$dir/out-b" & fb=$!
      wait $fa $fb || true
      if kill -0 "$server" 2>/dev/null; then
        sum[$who]=$(( $(cat "$dir/out-a") + $(cat "$dir/out-b") ))
        kill "$server"; wait "$server" 2>/dev/null || true
      else
        sum[$who]=aborted
      fi
    done
    ratio=-
    [ "${sum[qsd]}" != aborted ] && ratio=$(python3 -c "print(f'{${sum[blockd]}/max(1,${sum[qsd]}):.2f}')")
    printf '%-20s %-6s %12s %12s %8s\n' "$job" "$layout" "${sum[blockd]}" "${sum[qsd]}" "$ratio"
  done
done
