/**
 * The FUSE export side by side with qemu-storage-daemon 7.2's: the same
 * daemon arguments in two scratch directories, the same programs on both
 * mounted files; their outputs (paths taken out) must be equal. stat and
 * statfs results, size, mode, owner; the QMP errors for a missing
 * mountpoint, a directory, a busy mountpoint; chmod/chown/truncate/touch
 * and write refusals; fallocate -p without discard=unmap; block-export-del
 * with the file open.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/temp.ts';
import { BLOCKD } from '../helpers/daemons.ts';
import { run } from '../helpers/tools.ts';
import { commandWithEvents, mountpointFile, runAsync, startWithQmp, unmountAll, type FuseDaemon } from '../helpers/fuse.ts';

const MiB = 1024 * 1024;
type Which = 'blockd' | 'qsd';
let daemons: FuseDaemon[] = [];
let dirs: string[] = [];

afterEach(async () => {
  for (const d of daemons) await d.stop().catch(() => undefined);
  daemons = [];
  for (const dir of dirs) unmountAll(dir);
  dirs = [];
});

interface Side { which: Which; dir: string; d: FuseDaemon }

/** The same set-up for both daemons: dir/disk.img (raw, 8 MiB with data at 1 MiB), dir/ro.img, mountpoints, a directory. */
async function side(which: Which, exports: (dir: string) => string[]): Promise<Side> {
  const dir = tempDir(`fuse-sbs-${which}-`);
  dirs.push(dir);
  for (const name of ['disk.img', 'ro.img']) {
    run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, name), String(8 * MiB)]);
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 1M 1M', join(dir, name)]);
  }
  mountpointFile(dir, 'rw');
  mountpointFile(dir, 'ro');
  mountpointFile(dir, 'spare');
  mkdirSync(join(dir, 'adir'));
  const d = await startWithQmp(which, dir, [
    '--blockdev', `driver=file,node-name=f0,filename=${join(dir, 'disk.img')}`,
    '--blockdev', `driver=file,node-name=f1,filename=${join(dir, 'ro.img')},read-only=on`,
    ...exports(dir),
  ]);
  daemons.push(d);
  return { which, dir, d };
}

const bothExports = (dir: string) => [
  '--export', `type=fuse,id=rw,node-name=f0,mountpoint=${join(dir, 'rw')},writable=on`,
  '--export', `type=fuse,id=ro,node-name=f1,mountpoint=${join(dir, 'ro')}`,
];

/** A shell script's output and status, with the scratch directory written as @DIR@. */
async function sh(s: Side, script: string): Promise<string> {
  const r = await runAsync('sh', ['-c', script], { timeout: 60_000 });
  return `${r.stdout}${r.stderr}status=${r.status}`.split(s.dir).join('@DIR@');
}

async function both(fn: (s: Side) => Promise<string>, setUp: (dir: string) => string[] = bothExports): Promise<[string, string]> {
  const q = await side('qsd', setUp);
  const qOut = await fn(q);
  const b = await side('blockd', setUp);
  const bOut = await fn(b);
  return [bOut, qOut];
}

describe('FUSE export side by side with qsd', () => {
  it('the same start-up refusals on the command line (one line, exit status 1)', async () => {
    const dir = tempDir('fuse-sbs-cli-');
    dirs.push(dir);
    mkdirSync(join(dir, 'adir'));
    const mp = mountpointFile(dir, 'mp');
    const node = ['--blockdev', 'driver=null-co,node-name=n0,size=1048576'];
    const cases = [
      [...node, '--export', `type=fuse,id=e,node-name=n0,mountpoint=${join(dir, 'nonexistent')}`],
      [...node, '--export', `type=fuse,id=e,node-name=n0,mountpoint=${join(dir, 'adir')}`],
      [...node, '--export', `type=fuse,id=e,node-name=n0,mountpoint=${mp}`, '--export', `type=fuse,id=f,node-name=n0,mountpoint=${mp}`],
      [...node, '--export', 'type=fuse,id=e,node-name=n0'],
      [...node, '--export', `type=fuse,id=e,node-name=n0,mountpoint=${mp},allow-other=maybe`],
      [...node, '--export', `type=fuse,id=e,node-name=n0,mountpoint=${mp},growable=x`],
    ];
    for (const args of cases) {
      const out: Record<Which, { status: number | null; line: string }> = {} as never;
      for (const which of ['qsd', 'blockd'] as const) {
        const r = await runAsync(which === 'qsd' ? 'qemu-storage-daemon' : BLOCKD, args, { timeout: 30_000 });
        out[which] = { status: r.status, line: r.stderr.trim().replace(/^(qemu-storage-daemon|blockd): /, 'DAEMON: ') };
        unmountAll(dir);
      }
      expect(out.blockd, args.join(' ')).toEqual(out.qsd);
      expect(out.qsd.status).toBe(1);
    }
  });

  it('the same stat and statfs results, for a writable and a read-only export', async () => {
    // Times are "now" (whole seconds) on both sides: atime = mtime = ctime, within a minute of the clock.
    const times = (s: Side) => sh(s, `cd ${s.dir} && for f in rw ro; do stat -c '%X %Y %Z' $f; done; date +%s`);
    const [b, q] = await both(async (s) => {
      const t = (await times(s)).split('\n');
      const now = Number(t[2]);
      for (const line of t.slice(0, 2)) {
        const [a, m, c] = line.split(' ').map(Number);
        expect([m, c]).toEqual([a, a]);
        expect(Math.abs(now - a)).toBeLessThan(60);
      }
      return sh(s, `cd ${s.dir} && for f in rw ro; do stat -c '%n %s %b %B %o %f %a %A %u %g %h %i %F %t %T' $f; stat -f -c '%t %s %S %b %f %a %c %d %l' $f; stat -c '%x' $f | cut -c20-; done`);
    });
    if (process.env.FUSE_SBS_SHOW) console.log(q);
    expect(b).toBe(q);
    expect(q).toContain('rw 8388608');
    expect(q).toContain('-rw-------');
    expect(q).toContain('-r--------');
  });

  it('the same refusals: chmod, chown, touch, truncate and writes on a read-only export; chmod and truncate on a writable one', async () => {
    const script = (s: Side) => sh(s, `cd ${s.dir}
      chmod 0644 ro; echo "chmod ro 644: $?"; chmod 0444 ro; echo "chmod ro 444: $?"; stat -c %A ro
      chmod 0664 rw; echo "chmod rw 664: $?"; stat -c %A rw; chown 1:1 rw; echo "chown: $?"; stat -c '%u %g' rw
      touch rw; echo "touch: $?"; touch -d 2001-01-01 rw; echo "touch -d: $?"
      truncate -s 1M ro; echo "truncate ro: $?"
      dd if=/dev/zero of=ro bs=4k count=1 conv=notrunc status=none; echo "write ro: $?"
      fallocate -z -l 4096 ro; echo "fallocate ro: $?"
      truncate -s 12M rw; echo "truncate rw: $?"; stat -c %s rw disk.img
      dd if=/dev/zero of=rw bs=4k count=1 seek=4000 conv=notrunc status=none; echo "write past EOF: $?"; stat -c %s rw
      fallocate -l 4096 rw; echo "fallocate inside: $?"; stat -c %b disk.img; fallocate -o 12M -l 1M rw; echo "fallocate at EOF: $?"; stat -c %s rw; stat -c %b disk.img
      fallocate -p -o 1M -l 4096 rw; echo "punch: $?"; od -An -tx1 -j 1048576 -N 4 rw
      dd if=rw bs=1M skip=1 count=1 status=none | od -An -tx1 -N 4
      python3 -c "
import os
fd = os.open('rw', os.O_RDONLY)
for w in (os.SEEK_DATA, os.SEEK_HOLE):
    try: print(w, os.lseek(fd, 0, w))
    except OSError as e: print(w, e.strerror)
try: os.lseek(fd, 100 << 20, os.SEEK_DATA)
except OSError as e: print('past EOF', e.strerror)
"`);
    const [b, q] = await both(script);
    if (process.env.FUSE_SBS_SHOW) console.log(q);
    expect(b).toBe(q);
    expect(q).toContain('truncate ro: 1');
  });

  it('the same errors for a missing mountpoint, a directory and a busy mountpoint; a freed mountpoint can be used again', async () => {
    const script = async (s: Side) => {
      const add = (id: string, mountpoint: string, more: Record<string, unknown> = {}) =>
        s.d.qmp.command('block-export-add', { type: 'fuse', id, 'node-name': 'f0', mountpoint, ...more });
      const out = [
        await add('x1', join(s.dir, 'nonexistent')),
        await add('x2', join(s.dir, 'adir')),
        await add('x3', join(s.dir, 'rw')),
        await add('x4', join(s.dir, 'spare'), { 'allow-other': 'off' }),
        await s.d.qmp.command('query-block-exports'),
        await commandWithEvents(s.d.qmp, 'block-export-del', { id: 'x4' }),
        await add('x5', join(s.dir, 'spare'), { 'allow-other': 'on', growable: true }),
        await s.d.qmp.command('blockdev-add', { driver: 'null-co', 'node-name': 'n9', size: 1048576, 'read-only': true }),
        await s.d.qmp.command('block-export-add', { type: 'fuse', id: 'x6', 'node-name': 'n9', mountpoint: join(s.dir, 'adir'), writable: true }),
        await s.d.qmp.command('query-block-exports'),
      ];
      return JSON.stringify(out, null, 1).split(s.dir).join('@DIR@') + await sh(s, `stat -c '%A %s' ${s.dir}/spare`);
    };
    const [b, q] = await both(script);
    if (process.env.FUSE_SBS_SHOW) console.log(q);
    expect(b).toBe(q);
    expect(q).toContain("There already is a FUSE export on '@DIR@/rw'");
    expect(q).toContain("Failed to stat '@DIR@/nonexistent': No such file or directory");
    expect(q).toContain("'@DIR@/adir' is not a regular file");
  });

  it('block-export-del with the file open: the same reply and event, and the same error on the open descriptor', async () => {
    const script = async (s: Side) => {
      const py = join(s.dir, 'hold.py');
      const ready = join(s.dir, 'ready');
      const go = join(s.dir, 'go');
      writeFileSync(py, `
import os, time
fd = os.open(${JSON.stringify(join(s.dir, 'rw'))}, os.O_RDWR)
print('first read', os.pread(fd, 4, 1 << 20).hex(), flush=True)
open(${JSON.stringify(ready)}, 'w').close()
while not os.path.exists(${JSON.stringify(go)}): time.sleep(0.02)
for what, f in (('read', lambda: os.pread(fd, 4, 1 << 20)), ('write', lambda: os.pwrite(fd, b'x', 0)), ('fsync', lambda: os.fsync(fd)), ('stat', lambda: os.fstat(fd).st_size)):
    try: print(what, f())
    except OSError as e: print(what, e.strerror)
try: os.close(fd); print('close ok')
except OSError as e: print('close', e.strerror)
`);
      const holder = runAsync('/usr/bin/python3', [py]);
      for (let i = 0; i < 500 && !(await import('node:fs')).existsSync(ready); i++) await new Promise((r) => setTimeout(r, 20));
      const del = await commandWithEvents(s.d.qmp, 'block-export-del', { id: 'rw' });
      const after = await s.d.qmp.command('query-block-exports');
      writeFileSync(go, '');
      const h = await holder;
      return JSON.stringify({ del, after }) + h.stdout + h.stderr + (await sh(s, `stat -c %s ${s.dir}/rw; grep -c ${s.dir}/rw /proc/self/mountinfo`));
    };
    const [b, q] = await both(script);
    if (process.env.FUSE_SBS_SHOW) console.log(q);
    expect(b).toBe(q);
    expect(q).toContain('"event":"BLOCK_EXPORT_DELETED"');
  });
});
