#!/bin/sh
# Sequential read of an image over HTTP (npm run bench:http): driver=http in
# bin/blockd and in qemu-storage-daemon 7.2 (curl), and nbdkit's curl plugin,
# each exporting the node over NBD on a Unix socket, read whole by
# `nbdcopy URI null:`. The web server is bench/http-serve.mjs (node:http,
# byte ranges streamed from the file) on 127.0.0.1, the same for all three.
# Cells are MB/s, medians of the runs, the three interleaved run by run.
# Usage: bench/http.sh [size-MiB] [runs]
# Smoke run: sh bench/http.sh 8 1
set -eu
case "${1:-}" in -h|--help) sed -n '2,/^set -eu/{/^set -eu/d;s/^# \{0,1\}//;p}' "$0"; exit 0;; esac
SIZE_MB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/blockd-bench-http-XXXXXX")
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
# sh runs the EXIT trap on a signal only through exit.
trap 'exit 143' TERM
trap 'exit 130' INT

head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$DIR/disk.raw"
node "$ROOT/bench/http-serve.mjs" "$DIR/disk.raw" "$DIR/port" &
SERVER=$!
for _ in $(seq 100); do [ -s "$DIR/port" ] && break; sleep 0.05; done
URL="http://127.0.0.1:$(cat "$DIR/port")/disk.raw"

python3 - "$ROOT" "$DIR" "$URL" "$SIZE_MB" "$RUNS" <<'PY'
import os, signal, statistics, subprocess, sys, time
# A signal ends the run through the finally below, which stops the daemon it started.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
root, d, url, mb, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
BLOCKD = os.environ.get('BLOCKD_CMD', f'{root}/bin/blockd').split()

def wait_sock(path, p):
    for _ in range(400):
        if p.poll() is not None: raise RuntimeError(f'{p.args[0]} exited')
        if os.path.exists(path): return
        time.sleep(0.05)
    raise RuntimeError(f'{path} did not appear')

def one(which):
    sock = f'{d}/nbd.sock'
    if os.path.exists(sock): os.unlink(sock)
    node = ['--blockdev', f'driver=http,node-name=web,url={url},read-only=on',
            '--nbd-server', f'addr.type=unix,addr.path={sock}', '--export', 'type=nbd,id=e,node-name=web,name=web']
    if which == 'nbdkit':
        p = subprocess.Popen(['nbdkit', '-f', '-r', '-U', sock, '-e', 'web', 'curl', f'url={url}'])
    elif which == 'blockd':
        p = subprocess.Popen(BLOCKD + ['--log-level', 'warn'] + node)
    else:
        p = subprocess.Popen(['qemu-storage-daemon'] + node)
    try:
        wait_sock(sock, p)
        time.sleep(0.2)
        t0 = time.monotonic()
        subprocess.run(['nbdcopy', f'nbd+unix:///web?socket={sock}', 'null:'], check=True)
        return mb * 1048576 / (time.monotonic() - t0) / 1e6
    finally:
        p.terminate()
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill(); p.wait()

names = ['blockd', 'qsd', 'nbdkit']
res = {n: [] for n in names}
for _ in range(runs):
    for n in names: res[n].append(one(n))
med = {n: statistics.median(v) for n, v in res.items()}
print(f'\nSequential read over HTTP, {mb} MiB, median of {runs} (MB/s)\n')
print('| reader | MB/s | vs qsd |')
print('| --- | --- | --- |')
for n in names: print(f'| {n} | {med[n]:.0f} | {med[n] / med["qsd"]:.2f} |')
PY
