#!/usr/bin/env python3
"""npm run bench:compress: compressed backup throughput, blockd beside qemu-storage-daemon.

A raw disk of text-like data (words drawn at random, lines of varying length;
BENCH_SIZE, default 1G) is backed up with blockdev-backup sync=full
compress=true into a fresh qcow2 by each daemon in turn (one at a time, same
arguments). The table: seconds from the command to BLOCK_JOB_COMPLETED,
MiB/s of guest data, the target's file size, qemu-img check's result and
compressed share, qemu-img compare against the source. Scratch files are
removed at exit unless BENCH_DIR is given.
"""
import json, os, random, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = int(subprocess.check_output(['numfmt', '--from=iec', os.environ.get('BENCH_SIZE', '1G')]).strip())
SIZE -= SIZE % 512
keep = 'BENCH_DIR' in os.environ
work = os.environ.get('BENCH_DIR') or tempfile.mkdtemp(prefix='bench-compress.')
os.makedirs(work, exist_ok=True)


def text_disk(path):
    """16 MiB of generated text repeated to SIZE (deflate's 4 KiB window never sees the repeat)."""
    rnd = random.Random(12)
    words = ('block device storage daemon cluster qcow2 mirror backup the of and write read '
             'image export node filter job throttle bitmap snapshot commit stream').split()
    chunk = bytearray()
    while len(chunk) < min(SIZE, 16 << 20):
        chunk += (' '.join(rnd.choice(words) for _ in range(rnd.randint(3, 14))) + '\n').encode()
    chunk = bytes(chunk[:min(SIZE, 16 << 20)])
    with open(path, 'wb') as f:
        left = SIZE
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile('rw')
        self.events = []
        self.recv()
        self.cmd('qmp_capabilities')

    def recv(self):
        return json.loads(self.f.readline())

    def cmd(self, name, **args):
        self.f.write(json.dumps({'execute': name, 'arguments': args}) + '\n')
        self.f.flush()
        while True:
            m = self.recv()
            if 'event' in m:
                self.events.append(m)
            elif 'error' in m:
                raise RuntimeError(m['error']['desc'])
            else:
                return m['return']

    def wait(self, event):
        while not any(e['event'] == event for e in self.events):
            self.events.append(self.recv())
        return next(e for e in self.events if e['event'] == event)


def run(who, cmd):
    tgt = os.path.join(work, f'{who}.qcow2')
    subprocess.check_call(['qemu-img', 'create', '-q', '-f', 'qcow2', tgt, str(SIZE)])
    sock = os.path.join(work, f'{who}.qmp')
    log = open(os.path.join(work, f'{who}.log'), 'w')
    p = subprocess.Popen([cmd,
                          '--blockdev', f'driver=raw,node-name=src,file.driver=file,file.filename={src}',
                          '--blockdev', f'driver=qcow2,node-name=tgt,file.driver=file,file.filename={tgt}',
                          '--chardev', f'socket,id=m,path={sock},server=on,wait=off', '--monitor', 'm'],
                         stdout=log, stderr=log)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                try:
                    q = Qmp(sock)
                    break
                except OSError:
                    pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f'{who} did not come up (log in {work})')
        t = time.monotonic()
        q.cmd('blockdev-backup', **{'job-id': 'b', 'device': 'src', 'target': 'tgt', 'sync': 'full', 'compress': True})
        done = q.wait('BLOCK_JOB_COMPLETED')
        secs = time.monotonic() - t
        if 'error' in done['data']:
            raise RuntimeError(f"{who}: {done['data']['error']}")
    finally:
        p.terminate()
        p.wait()
    check = subprocess.run(['qemu-img', 'check', tgt], capture_output=True, text=True)
    pct = next((l.split('%')[0].split()[-1] for l in check.stdout.splitlines() if 'compressed clusters' in l), '?')
    same = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F', 'qcow2', src, tgt]).returncode == 0
    return {'secs': secs, 'size': os.path.getsize(tgt), 'check': 'clean' if check.returncode == 0 else f'rc {check.returncode}',
            'pct': pct, 'compare': 'equal' if same else 'DIFFERENT'}


try:
    src = os.path.join(work, 'src.raw')
    text_disk(src)
    rows = {'blockd': run('blockd', os.path.join(ROOT, 'bin', 'blockd')), 'qsd': run('qsd', 'qemu-storage-daemon')}
    print(f'# compressed backup of {SIZE} bytes of text-like data (blockdev-backup compress=true, sync=full) in {work}')
    print(f"{'daemon':8} {'seconds':>9} {'MiB/s':>8} {'target bytes':>14} {'ratio':>6} {'check':>7} {'compressed':>10} {'compare':>8}")
    for who, r in rows.items():
        print(f"{who:8} {r['secs']:9.2f} {SIZE / r['secs'] / 2**20:8.1f} {r['size']:14} {r['size'] / SIZE:6.3f} {r['check']:>7} {r['pct'] + '%':>10} {r['compare']:>8}")
    b, q = rows['blockd'], rows['qsd']
    print(f"blockd/qsd: throughput {q['secs'] / b['secs']:.2f}, target size {b['size'] / q['size']:.3f}")
finally:
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
