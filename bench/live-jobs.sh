#!/bin/sh
# Live block jobs, bin/blockd side by side with qemu-storage-daemon 7.2 (npm run bench:live).
#
# 1. Throughput: a 1 GiB fully allocated raw source (non-zero data) is copied
#    to a new qcow2 image and to a new (sparse) raw file: blockdev-mirror
#    (time to BLOCK_JOB_READY, buf-size 16 MiB for both) and blockdev-backup
#    sync=full (time to BLOCK_JOB_COMPLETED). Each daemon runs alone, with the
#    page cache warm for the source; every target is checked with qemu-img
#    compare. Also block-stream (an empty overlay pulling a 1 GiB allocated
#    qcow2 base) and an intermediate block-commit (a 1 GiB allocated middle
#    layer into an empty base), to BLOCK_JOB_COMPLETED.
# 2. What a client sees during a mirror: fio (nbd engine) random 4k reads and
#    writes against the source's NBD export, with no job running and while a
#    blockdev-mirror to a new qcow2 copies in its bulk phase (speed-limited so
#    it outlasts the fio run; the rate the mirror reached meanwhile is shown).
#
# Cells are medians of the runs, qsd and blockd interleaved run by run (the
# machine is shared and noisy).
# Usage: bench/live-jobs.sh [size-MiB] [runs] [--no-throughput|--no-client-io]
set -eu
SIZE_MB=${1:-1024}
RUNS=${2:-3}
ONLY=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/blockd-bench-live-XXXXXX")
trap 'rm -rf "$DIR"' EXIT

# Allocated, incompressible-ish data: a random MiB, rotated per MiB.
qemu-img create -q -f raw "$DIR/src.raw" "${SIZE_MB}M"
python3 - "$DIR/src.raw" "$SIZE_MB" <<'PY'
import sys, os
path, mb = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with open(path, 'r+b') as f:
    for i in range(mb):
        f.write(block[i % 251:] + block[:i % 251])
PY

python3 - "$ROOT" "$DIR" "$SIZE_MB" "$RUNS" "$ONLY" <<'PY'
import json, os, socket, statistics, subprocess, sys, time
root, d, mb, runs, only = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
BUF_SIZE = 16 << 20
MIRROR_SPEED = 100 << 20   # client-I/O section: slow enough to outlast fio
FIO_RUNTIME = 4
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

def daemon(which):
    sock = f'{d}/qmp-{which}.sock'
    if os.path.exists(sock): os.unlink(sock)
    cmd = BLOCKD + ['--log-level', 'warn'] if which == 'blockd' else ['qemu-storage-daemon']
    p = subprocess.Popen(cmd + ['--chardev', f'socket,id=m,path={sock},server=on,wait=off', '--monitor', 'm'])
    for _ in range(400):
        if os.path.exists(sock):
            try: return p, Q(sock)
            except OSError: pass
        time.sleep(0.05)
    raise RuntimeError(f'{which} did not start')

def stop(p, q):
    q.cmd('quit')
    p.wait(timeout=60)

def add_nodes(q, fmt, tgt):
    q.cmd('blockdev-add', driver='raw', **{'node-name': 'src'}, file={'driver': 'file', 'filename': f'{d}/src.raw'})
    q.cmd('blockdev-add', driver=fmt, **{'node-name': 'tgt'}, file={'driver': 'file', 'filename': tgt})

def wait_null(q):
    q.wait(lambda m: m['event'] == 'JOB_STATUS_CHANGE' and m['data']['status'] == 'null')

def throughput(which, job, fmt):
    tgt = f'{d}/tgt-{which}.{fmt}'
    subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, tgt, f'{mb}M'], check=True)
    p, q = daemon(which)
    try:
        add_nodes(q, fmt, tgt)
        t0 = time.perf_counter()
        if job == 'mirror':
            q.cmd('blockdev-mirror', **{'job-id': 'j', 'buf-size': BUF_SIZE}, device='src', target='tgt', sync='full')
            q.wait(lambda m: m['event'] == 'BLOCK_JOB_READY')
            dt = time.perf_counter() - t0
            q.cmd('block-job-cancel', device='j')
        else:
            q.cmd('blockdev-backup', **{'job-id': 'j'}, device='src', target='tgt', sync='full')
            q.wait(lambda m: m['event'] in ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'))
            dt = time.perf_counter() - t0
        wait_null(q)
        stop(p, q)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    r = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F', fmt, f'{d}/src.raw', tgt])
    os.unlink(tgt)
    if r.returncode != 0: raise RuntimeError(f'{which} {job}: target differs from source')
    return mb / dt

def chain_job(which, kind):
    """block-stream of an empty overlay over an allocated base, or block-commit of an allocated
    middle layer into an empty base (under an empty top): MiB/s to BLOCK_JOB_COMPLETED."""
    base, mid, top = f'{d}/c-base.qcow2', f'{d}/c-mid.qcow2', f'{d}/c-top.qcow2'
    if kind == 'stream':
        subprocess.run(['cp', f'{d}/src.qcow2', base], check=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top], check=True)
    else:
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', base, f'{mb}M'], check=True)
        subprocess.run(['cp', f'{d}/src.qcow2', mid], check=True)
        subprocess.run(['qemu-img', 'rebase', '-u', '-b', base, '-F', 'qcow2', mid], check=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top], check=True)
    p, q = daemon(which)
    try:
        q.cmd('blockdev-add', driver='qcow2', **{'node-name': 'top'}, file={'driver': 'file', 'filename': top})
        t0 = time.perf_counter()
        if kind == 'stream': q.cmd('block-stream', **{'job-id': 'j'}, device='top')
        else: q.cmd('block-commit', **{'job-id': 'j'}, device='top', top=mid, base=base)
        q.wait(lambda m: m['event'] == 'BLOCK_JOB_COMPLETED')
        dt = time.perf_counter() - t0
        wait_null(q)
        stop(p, q)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    r = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F', 'qcow2', f'{d}/src.raw', top])
    for f in (base, mid, top):
        if os.path.exists(f): os.unlink(f)
    if r.returncode != 0: raise RuntimeError(f'{which} {kind}: the chain differs from the source')
    return mb / dt

def fio(uri, rw):
    out = subprocess.run(['fio', '--name=t', '--ioengine=nbd', f'--uri={uri}', f'--rw={rw}', '--bs=4k', '--iodepth=16',
                          f'--size={mb}M', '--time_based', f'--runtime={FIO_RUNTIME}', '--output-format=json'],
                         capture_output=True, text=True)
    if out.returncode != 0: raise RuntimeError(f'fio: {out.stderr.strip()}')
    j = json.loads(out.stdout[out.stdout.index('{'):])['jobs'][0]
    return (j['read'] if rw == 'randread' else j['write'])['iops']

def job_offset(q):
    j = [x for x in q.cmd('query-block-jobs') if x['device'] == 'j']
    if not j: raise RuntimeError('mirror ended during the fio run')
    if j[0]['ready']: raise RuntimeError('mirror reached READY during the fio run: raise the size or lower MIRROR_SPEED')
    return j[0]['offset']

def client_io(which, rw):
    """IOPS with no job, IOPS during a mirror's bulk phase, the mirror's MiB/s meanwhile."""
    tgt = f'{d}/io-{which}.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', tgt, f'{mb}M'], check=True)
    nbd = f'{d}/nbd-{which}.sock'
    p, q = daemon(which)
    try:
        add_nodes(q, 'qcow2', tgt)
        q.cmd('nbd-server-start', addr={'type': 'unix', 'data': {'path': nbd}})
        q.cmd('block-export-add', type='nbd', id='e', **{'node-name': 'src'}, name='disk', writable=True)
        uri = f'nbd+unix:///disk?socket={nbd}'
        alone = fio(uri, rw)
        q.cmd('blockdev-mirror', **{'job-id': 'j', 'buf-size': BUF_SIZE}, device='src', target='tgt', sync='full', speed=MIRROR_SPEED)
        time.sleep(0.3)
        o0, t0 = job_offset(q), time.perf_counter()
        during = fio(uri, rw)
        o1, t1 = job_offset(q), time.perf_counter()
        q.cmd('block-job-cancel', device='j', force=True)
        wait_null(q)
        stop(p, q)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    os.unlink(tgt)
    return alone, during, (o1 - o0) / (t1 - t0) / (1 << 20)

med = statistics.median
subprocess.run(['cat', f'{d}/src.raw'], stdout=subprocess.DEVNULL, check=True)

if only != '--no-throughput':
    print(f'## throughput: {mb} MiB allocated raw source, median of {runs} (MiB/s; every target verified with qemu-img compare)')
    print(f'{"job":8} {"target":7} {"qsd 7.2":>10} {"blockd":>10} {"ratio":>7}')
    for fmt in ('qcow2', 'raw'):
        for job in ('mirror', 'backup'):
            res = {'qsd': [], 'blockd': []}
            for _ in range(runs):
                for which in ('qsd', 'blockd'):
                    res[which].append(throughput(which, job, fmt))
            a, b = med(res['qsd']), med(res['blockd'])
            print(f'{job:8} {fmt:7} {a:10.0f} {b:10.0f} {b / a:6.2f}x', flush=True)
    subprocess.run(['qemu-img', 'convert', '-O', 'qcow2', f'{d}/src.raw', f'{d}/src.qcow2'], check=True)
    for kind in ('stream', 'commit'):
        res = {'qsd': [], 'blockd': []}
        for _ in range(runs):
            for which in ('qsd', 'blockd'):
                res[which].append(chain_job(which, kind))
        a, b = med(res['qsd']), med(res['blockd'])
        print(f'{kind:8} {"qcow2":7} {a:10.0f} {b:10.0f} {b / a:6.2f}x', flush=True)
    os.unlink(f'{d}/src.qcow2')

if only != '--no-client-io':
    print()
    print(f'## client I/O on the source export: fio 4k qd16 {FIO_RUNTIME}s, no job vs during blockdev-mirror to a new qcow2')
    print(f'## (speed {MIRROR_SPEED >> 20} MiB/s, buf-size {BUF_SIZE >> 20} MiB); IOPS, median of {runs}')
    print(f'{"rw":10} {"daemon":7} {"no job":>9} {"mirror":>9} {"kept":>6} {"mirror MiB/s":>13}')
    for rw in ('randread', 'randwrite'):
        res = {'qsd': [], 'blockd': []}
        for _ in range(runs):
            for which in ('qsd', 'blockd'):
                res[which].append(client_io(which, rw))
        for which in ('qsd', 'blockd'):
            alone, during, rate = (med([r[i] for r in res[which]]) for i in range(3))
            print(f'{rw:10} {which:7} {alone:9.0f} {during:9.0f} {during / alone:5.0%} {rate:13.0f}', flush=True)
PY
