#!/usr/bin/env bash
# FUSE export benchmark: blockd against qemu-storage-daemon 7.2, both
# started with the same qsd-style command line, each exporting its own copy
# of the same images (raw and qcow2) through --export type=fuse, measured by
# fio on the mounted files in one run (O_DIRECT, libaio; 4k random read and
# write at queue depth 1 and 32, 1 MiB sequential read and write at 8).
#
# Usage:  npm run bench:fuse -- [raw|qcow2|all] [--runtime S] [--repeat N] [--jobs a,b]
# Env: BLOCKD_CMD (default ./bin/blockd), REF_CMD (default qemu-storage-daemon),
#      BENCH_SIZE (default 1G), BENCH_DIR (scratch, default a new temp dir, removed at exit).
# Needs root (FUSE mounts), qemu-utils, qemu-system-common, fio, python3.
# Output: one table per image, IOPS and MiB/s per daemon (median of N rounds,
# the daemons interleaved); ratio = blockd/qsd (above 1.00: blockd faster).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=all; runtime=5; repeat=3; jobs=""
while [ $# -gt 0 ]; do
  case "$1" in
    raw|qcow2|all) target=$1 ;;
    --runtime) runtime=$2; shift ;;
    --repeat) repeat=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
read -r -a sut <<<"${BLOCKD_CMD:-$root/bin/blockd}"
read -r -a ref <<<"${REF_CMD:-qemu-storage-daemon}"
size=${BENCH_SIZE:-1G}
dir=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bench-fuse.XXXXXX")}
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  sleep 1
  for m in "$dir"/*.mnt; do [ -e "$m" ] || continue; grep -q " $m " /proc/self/mountinfo && umount -l "$m"; done
  if [ -z "${BENCH_DIR:-}" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

head -c "$(numfmt --from=iec "$size")" /dev/urandom >"$dir/seed.raw"
for who in blockd qsd; do
  cp --sparse=never "$dir/seed.raw" "$dir/$who.raw"
  qemu-img convert -q -f raw -O qcow2 "$dir/seed.raw" "$dir/$who.qcow2"
  : >"$dir/$who-raw.mnt"; : >"$dir/$who-qcow2.mnt"
done

start() { # who cmd...
  local who=$1; shift
  "$@" \
    --blockdev "driver=file,node-name=rawf,filename=$dir/$who.raw,cache.direct=on,aio=native" \
    --blockdev "driver=raw,node-name=raw0,file=rawf" \
    --blockdev "driver=file,node-name=qf,filename=$dir/$who.qcow2,cache.direct=on,aio=native" \
    --blockdev "driver=qcow2,node-name=qcow0,file=qf" \
    --export "type=fuse,id=e-raw,node-name=raw0,mountpoint=$dir/$who-raw.mnt,writable=on" \
    --export "type=fuse,id=e-qcow2,node-name=qcow0,mountpoint=$dir/$who-qcow2.mnt,writable=on" \
    >"$dir/$who.log" 2>&1 &
  echo $! >"$dir/$who.pid"
}
start blockd "${sut[@]}"
start qsd "${ref[@]}"
want=$(stat -c %s "$dir/seed.raw")
for i in $(seq 1 100); do
  ok=1
  for m in blockd-raw blockd-qcow2 qsd-raw qsd-qcow2; do
    [ "$(stat -c %s "$dir/$m.mnt" 2>/dev/null)" = "$want" ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.2
  [ "$i" = 100 ] && { echo "a daemon did not come up; logs:" >&2; tail -5 "$dir"/*.log >&2; exit 1; }
done

echo "# images: $size in $dir; fio libaio, O_DIRECT, on the FUSE files; runtime ${runtime}s x $repeat"
for t in raw qcow2; do
  [ "$target" = all ] || [ "$target" = "$t" ] || continue
  echo "## $t"
  python3 - "$runtime" "$repeat" "$jobs" "blockd=$dir/blockd-$t.mnt" "qsd=$dir/qsd-$t.mnt" <<'PY'
import json, subprocess, sys
JOBS = {
    "randread-4k-qd1":   ("randread", "4k", 1),
    "randwrite-4k-qd1":  ("randwrite", "4k", 1),
    "randread-4k-qd32":  ("randread", "4k", 32),
    "randwrite-4k-qd32": ("randwrite", "4k", 32),
    "read-1m-qd8":       ("read", "1m", 8),
    "write-1m-qd8":      ("write", "1m", 8),
}
runtime, repeat, only = int(sys.argv[1]), int(sys.argv[2]), [j for j in sys.argv[3].split(",") if j]
targets = [a.split("=", 1) for a in sys.argv[4:]]
def run(path, rw, bs, qd):
    cmd = ["fio", "--name=t", f"--filename={path}", "--ioengine=libaio", "--direct=1", f"--rw={rw}", f"--bs={bs}",
           f"--iodepth={qd}", "--time_based", f"--runtime={runtime}", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["fio failed"])[-1]
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["read"] if j["read"]["io_bytes"] else j["write"]
    return (side["iops"], side["bw"] / 1024.0), None
print(f"{'job':20}" + "".join(f"{l:>26}" for l, _ in targets) + "   ratio")
for name, (rw, bs, qd) in JOBS.items():
    if only and name not in only: continue
    samples = {l: [] for l, _ in targets}; errors = {}
    for _ in range(repeat):
        for l, p in targets:
            res, err = run(p, rw, bs, qd)
            if res is None: errors[l] = err
            else: samples[l].append(res)
    row, vals = f"{name:20}", []
    for l, _ in targets:
        got = sorted(samples[l])
        if not got:
            row += f"{'ERR ' + errors.get(l, '')[:21]:>26}"; vals.append(None)
        else:
            med = got[len(got) // 2]
            row += f"{med[0]:>12.0f} iops {med[1]:>7.0f} MiB/s"; vals.append(med[0])
    row += f"   {vals[0] / vals[1]:5.2f}" if vals[0] and vals[1] else "     n/a"
    print(row, flush=True)
PY
done
