#!/bin/sh
# blockdev-mirror of an image to a remote NBD target through driver=nbd,
# bin/blockd and qemu-storage-daemon 7.2 as the source (npm run bench:nbd-client).
#
# The source is a fully allocated raw image (incompressible data); the remote
# is nbdkit's file plugin on a new sparse raw file (the same server for both
# daemons). Each run: the source daemon adds an nbd node for the remote, runs
# blockdev-mirror sync=full (buf-size 16 MiB) and is timed to BLOCK_JOB_READY;
# block-job-cancel then ends the job in sync, and the target is checked with
# qemu-img compare. blockd also runs with multi-conn=4 (nbdkit file advertises
# it; qsd 7.2 has no such option). Cells are medians, qsd and blockd interleaved run by run.
# Usage: bench/nbd-client.sh [size-MiB] [runs]
set -eu
SIZE_MB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/blockd-bench-nbdc-XXXXXX")
trap 'rm -rf "$DIR"' EXIT

qemu-img create -q -f raw "$DIR/src.raw" "${SIZE_MB}M"
python3 - "$DIR/src.raw" "$SIZE_MB" <<'PY'
import sys, os
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, 'r+b') as f:
    for i in range(mb):
        f.write(block[i % 251:] + block[:i % 251])
PY

python3 - "$ROOT" "$DIR" "$SIZE_MB" "$RUNS" <<'PY'
import json, os, socket, statistics, subprocess, sys, time
root, d, mb, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
BLOCKD = os.environ.get('BLOCKD_CMD', f'{root}/bin/blockd').split()

class Q:
    def __init__(s, path):
        s.s = socket.socket(socket.AF_UNIX); s.s.connect(path); s.buf = b''
        s.read(); s.cmd('qmp_capabilities')
    def read(s):
        while b'\n' not in s.buf:
            data = s.s.recv(65536)
            if not data: raise EOFError
            s.buf += data
        line, s.buf = s.buf.split(b'\n', 1); return json.loads(line)
    def cmd(s, execute, **args):
        s.s.sendall((json.dumps({'execute': execute, 'arguments': args}) + '\n').encode())
        while True:
            m = s.read()
            if 'event' not in m:
                if 'error' in m: raise RuntimeError(f'{execute}: {m["error"]}')
                return m['return']
    def wait(s, pred):
        while True:
            m = s.read()
            if 'event' in m and pred(m): return m

def wait_sock(path, p):
    for _ in range(400):
        if p.poll() is not None: raise RuntimeError(f'{p.args[0]} exited')
        if os.path.exists(path): return
        time.sleep(0.05)
    raise RuntimeError(f'{path} did not appear')

def one(which, mc=1):
    tgt, nsock, qsock = f'{d}/tgt.raw', f'{d}/tgt.sock', f'{d}/qmp.sock'
    for f in (tgt, nsock, qsock):
        if os.path.exists(f): os.unlink(f)
    subprocess.run(['truncate', '-s', f'{mb}M', tgt], check=True)
    k = subprocess.Popen(['nbdkit', '-f', '-U', nsock, 'file', tgt])
    wait_sock(nsock, k)
    cmd = BLOCKD + ['--log-level', 'warn'] if which == 'blockd' else ['qemu-storage-daemon']
    p = subprocess.Popen(cmd + ['--blockdev', f'driver=file,node-name=f,filename={d}/src.raw', '--blockdev', 'driver=raw,node-name=disk,file=f',
                                '--chardev', f'socket,id=m,path={qsock},server=on,wait=off', '--monitor', 'm'])
    try:
        wait_sock(qsock, p)
        q = Q(qsock)
        extra = {'multi-conn': mc} if mc > 1 else {}
        q.cmd('blockdev-add', driver='nbd', **{'node-name': 'remote'}, server={'type': 'unix', 'path': nsock}, **extra)
        t0 = time.monotonic()
        q.cmd('blockdev-mirror', **{'job-id': 'm0', 'buf-size': 16 << 20}, device='disk', target='remote', sync='full')
        q.wait(lambda m: m['event'] == 'BLOCK_JOB_READY')
        secs = time.monotonic() - t0
        q.cmd('block-job-cancel', device='m0')
        q.wait(lambda m: m['event'] == 'JOB_STATUS_CHANGE' and m['data']['status'] == 'null')
        q.cmd('blockdev-del', **{'node-name': 'remote'})
    finally:
        p.terminate(); p.wait()
        k.terminate(); k.wait()
    subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F', 'raw', f'{d}/src.raw', tgt], check=True)
    return mb / secs

res = {'qsd': [], 'blockd': [], 'mc': []}
for _ in range(runs):
    res['qsd'].append(one('qsd'))
    res['blockd'].append(one('blockd'))
    res['mc'].append(one('blockd', 4))
q, b, m = (statistics.median(res[k]) for k in ('qsd', 'blockd', 'mc'))
print(f'blockdev-mirror of {mb} MiB to a remote NBD target (nbdkit file), median of {runs}')
print('| source | MiB/s | vs qsd |\n| --- | --- | --- |')
print(f'| qsd 7.2 (one connection) | {q:.0f} | 1.00 |\n| blockd | {b:.0f} | {b / q:.2f} |\n| blockd multi-conn=4 | {m:.0f} | {m / q:.2f} |')
PY
