#!/bin/sh
# Mirror and backup throughput, bin/blockd side by side with qemu-storage-daemon 7.2.
# A 1 GiB fully allocated raw source (non-zero data) is copied to a new qcow2
# image, and to a new (sparse) raw file: blockdev-mirror (time to BLOCK_JOB_READY) and blockdev-backup
# sync=full (time to BLOCK_JOB_COMPLETED); each daemon runs alone, with the
# page cache warm for the source. Usage: bench/live-jobs.sh [size-MiB] [runs]
set -eu
SIZE_MB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/blockd-bench-live-XXXXXX")
trap 'rm -rf "$DIR"' EXIT

# Allocated, incompressible-ish data: a pattern per MiB (qemu-io is fast and deterministic).
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
import json, os, socket, subprocess, sys, time
root, d, mb, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

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
    def cmd(s, name, **args):
        s.s.sendall((json.dumps({'execute': name, 'arguments': args}) + '\n').encode())
        while True:
            m = s.read()
            if 'event' not in m:
                if 'error' in m: raise RuntimeError(f'{name}: {m["error"]}')
                return m['return']
    def wait(s, pred):
        while True:
            m = s.read()
            if 'event' in m and pred(m): return m

def daemon(which):
    sock = f'{d}/qmp-{which}.sock'
    if os.path.exists(sock): os.unlink(sock)
    cmd = [f'{root}/bin/blockd', '--log-level', 'warn'] if which == 'blockd' else ['qemu-storage-daemon']
    p = subprocess.Popen(cmd + ['--chardev', f'socket,id=m,path={sock},server=on,wait=off', '--monitor', 'm'])
    for _ in range(400):
        if os.path.exists(sock):
            try: return p, Q(sock)
            except OSError: pass
        time.sleep(0.05)
    raise RuntimeError(f'{which} did not start')

def one(which, job, fmt):
    tgt = f'{d}/tgt-{which}.{fmt}'
    subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, tgt, f'{mb}M'], check=True)
    p, q = daemon(which)
    try:
        q.cmd('blockdev-add', driver='raw', **{'node-name': 'src'}, file={'driver': 'file', 'filename': f'{d}/src.raw'})
        q.cmd('blockdev-add', driver=fmt, **{'node-name': 'tgt'}, file={'driver': 'file', 'filename': tgt})
        t0 = time.perf_counter()
        if job == 'mirror':
            q.cmd('blockdev-mirror', **{'job-id': 'j'}, device='src', target='tgt', sync='full')
            q.wait(lambda m: m['event'] == 'BLOCK_JOB_READY')
            dt = time.perf_counter() - t0
            q.cmd('block-job-cancel', device='j')
        else:
            q.cmd('blockdev-backup', **{'job-id': 'j'}, device='src', target='tgt', sync='full')
            q.wait(lambda m: m['event'] in ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'))
            dt = time.perf_counter() - t0
        q.wait(lambda m: m['event'] == 'JOB_STATUS_CHANGE' and m['data']['status'] == 'null')
        q.cmd('quit')
    finally:
        p.wait(timeout=30)
    r = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F', fmt, f'{d}/src.raw', tgt])
    os.unlink(tgt)
    if r.returncode != 0: raise RuntimeError(f'{which} {job}: target differs from source')
    return mb / dt

subprocess.run(['cat', f'{d}/src.raw'], stdout=subprocess.DEVNULL, check=True)
print(f'{mb} MiB allocated raw source, best of {runs} (MiB/s; every target verified with qemu-img compare)')
print(f'{"job":8} {"target":7} {"qsd 7.2":>10} {"blockd":>10} {"ratio":>7}')
for fmt in ('qcow2', 'raw'):
    for job in ('mirror', 'backup'):
        res = {}
        for which in ('qsd', 'blockd'):
            res[which] = max(one(which, job, fmt) for _ in range(runs))
        print(f'{job:8} {fmt:7} {res["qsd"]:10.0f} {res["blockd"]:10.0f} {res["blockd"] / res["qsd"]:6.2f}x', flush=True)
PY
