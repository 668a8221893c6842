/**
 * blkdebug in the block layer, in process, over a recording child: the rule
 * engine (state, active set replaced per event, order, once, sector and
 * iotype matching), QEMU's config-file syntax, how write-zeroes and discard
 * are cut at opt-* boundaries and max-* sizes (short write-zeroes pieces
 * become writes), the events BlockNode and raw raise, the limits checks,
 * the refusal of events blockd never raises and of errnos it cannot carry,
 * and the child permissions take-/unshare-child-perms change.
 */
import { describe, it, expect } from 'vitest';
import { BlockGraph } from '../../src/blockdev/graph.ts';
import { registerDrivers } from '../../src/blockdev/drivers/index.ts';
import { ObjectRegistry } from '../../src/objects/registry.ts';
import { obj, opt } from '../../src/qapi/types.ts';
import type { Driver } from '../../src/blockdev/driver.ts';
import { BlkdebugRules } from '../../src/blockdev/filters/blkdebug/rules.ts';
import { parseConfig, ConfigFileError } from '../../src/blockdev/filters/blkdebug/config-file.ts';
import { cutRequest } from '../../src/blockdev/filters/blkdebug/split.ts';
import { RAISED_EVENTS, BLKDEBUG_EVENTS } from '../../src/blockdev/debug-events.ts';

const SIZE = 1 << 20;

/** A protocol node that records what reaches it. */
function recorder(): Driver & { log: string[] } {
  const log: string[] = [];
  return {
    log,
    name: 'rec',
    kind: 'protocol',
    options: obj('Rec', [opt('size', 'int')]),
    async open() {
      const data = Buffer.alloc(SIZE);
      return {
        length: () => SIZE,
        read: async (o, b) => { log.push(`read ${o} ${b.length}`); data.copy(b, 0, o, o + b.length); },
        write: async (o, b) => { log.push(`write ${o} ${b.length}`); b.copy(data, o); },
        writeZeroes: async (o, l) => { log.push(`zero ${o} ${l}`); data.fill(0, o, o + l); },
        discard: async (o, l) => { log.push(`discard ${o} ${l}`); },
        flush: async () => { log.push('flush'); },
      };
    },
  };
}

async function setup(blkdebug: Record<string, unknown>, withRaw = false) {
  const graph = new BlockGraph({ objects: new ObjectRegistry() });
  registerDrivers(graph);
  const rec = recorder();
  graph.register(rec);
  await graph.add({ driver: 'rec', 'node-name': 'r0' });
  const dbg = await graph.add({ driver: 'blkdebug', 'node-name': 'dbg', image: 'r0', ...blkdebug });
  const top = withRaw ? await graph.add({ driver: 'raw', 'node-name': 'fmt', file: 'dbg' }) : dbg;
  return { graph, log: rec.log, dbg, top };
}

const code = (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string }) => e.code);

describe('blkdebug rule engine', () => {
  it('activates an event\'s inject rules, replacing the active set; state rules pick the next state', () => {
    const r = new BlkdebugRules();
    r.addInjectError({ event: 'read_aio', state: 0, errno: 5, once: false, immediately: false });
    r.addInjectError({ event: 'write_aio', state: 2, errno: 28, once: false, immediately: false, offset: 4096 });
    r.addSetState({ event: 'read_aio', state: 1, newState: 2 });
    expect(r.check(0, 512, 'read')).toBeUndefined();
    r.event('read_aio');
    expect(r.state).toBe(2);
    expect(r.check(0, 512, 'read')?.errno).toBe(5);
    expect(r.check(0, 0, 'flush')?.errno).toBe(5);
    // block-status is not among the default I/O types.
    expect(r.check(0, 512, 'block-status')).toBeUndefined();
    // write_aio in state 2: its rule replaces the read rule.
    r.event('write_aio');
    expect(r.check(0, 512, 'read')).toBeUndefined();
    expect(r.check(4096, 512, 'write')?.errno).toBe(28);
    expect(r.check(4096 - 512, 512, 'write')).toBeUndefined();
    // A flush covers no sector, so a rule with one never matches it.
    expect(r.check(0, 0, 'flush')).toBeUndefined();
    // An event with only set-state rules (or none matching the state) keeps the active set.
    r.event('read_aio');
    expect(r.state).toBe(2);
  });

  it('once removes the rule for good; the first added of two active rules wins; errno 0 passes', () => {
    const r = new BlkdebugRules();
    r.addInjectError({ event: 'none', state: 0, errno: 5, once: true, immediately: true });
    r.addInjectError({ event: 'none', state: 0, errno: 28, once: false, immediately: true });
    r.addInjectError({ event: 'pwritev', state: 0, errno: 0, once: false, immediately: true });
    r.event('none');
    expect(r.check(0, 512, 'read')?.errno).toBe(5);
    expect(r.check(0, 512, 'read')?.errno).toBe(28);
    r.event('none');
    expect(r.check(0, 512, 'read')?.errno).toBe(28);
    r.event('pwritev');
    expect(r.check(0, 512, 'write')).toBeUndefined();
  });
});

describe('blkdebug config file', () => {
  const G = { 'inject-error': { event: 'string', errno: 'number', once: 'bool' }, 'set-state': { event: 'string', new_state: 'number' } } as const;
  it('parses sections, ids, C numbers and QemuOpts booleans', () => {
    const s = parseConfig('# c\n[inject-error "x"]\nevent = "read_aio"\n  errno = "0x1c"\nonce = "yes"\n\n[set-state]\nevent = "none"\nnew_state = "010"', G);
    expect(s).toEqual([
      { group: 'inject-error', values: { event: 'read_aio', errno: 28, once: true } },
      { group: 'set-state', values: { event: 'none', new_state: 8 } },
    ]);
  });
  it('fails as QEMU does', () => {
    const err = (t: string) => { try { parseConfig(t, G); return 'parsed'; } catch (e) { expect(e).toBeInstanceOf(ConfigFileError); return (e as Error).message; } };
    expect(err('event = "x"\n')).toBe('no group defined');
    expect(err('[inject-error]\n \n')).toBe('parse error');
    expect(err('[inject-error]\nevent="x"\n')).toBe('Invalid parameter \'event="x"\'');
    expect(err('[inject-error]\nerrno = ""\n')).toBe("Parameter 'errno' expects a number");
    expect(err('[inject-error]\nerrno = "99999999999999999999"\n')).toBe("Value '99999999999999999999' is too large for parameter 'errno'");
    expect(err('[x]\n')).toBe("There is no option group 'x'");
    expect(err('[inject-error "1a"]\n')).toBe("Parameter 'id' expects an identifier");
  });
});

describe('QEMU\'s cutting of write-zeroes and discard', () => {
  it('head to the boundary, pieces of at most max, the tail', () => {
    expect(cutRequest(1000, 10000, 4096, 0)).toEqual([[1000, 3096], [4096, 4096], [8192, 2808]]);
    expect(cutRequest(4096, 16384, 4096, 8192)).toEqual([[4096, 8192], [12288, 8192]]);
    expect(cutRequest(0, 20000, 4096, 6000)).toEqual([[0, 4096], [4096, 4096], [8192, 4096], [12288, 4096], [16384, 3616]]);
    expect(cutRequest(100, 200, 4096, 0)).toEqual([[100, 200]]);
  });
});

describe('blkdebug node', () => {
  it('refuses events blockd never raises and errnos it cannot carry; every QEMU event is known', async () => {
    expect(RAISED_EVENTS.size).toBeGreaterThan(5);
    for (const e of RAISED_EVENTS) expect(BLKDEBUG_EVENTS).toContain(e);
    await expect(setup({ 'inject-error': [{ event: 'reftable_grow' }] })).rejects.toThrow("blockd never raises the event 'reftable_grow'");
    await expect(setup({ 'set-state': [{ event: 'refblock_alloc', new_state: 2 }] })).rejects.toThrow('never raises');
    await expect(setup({ 'inject-error': [{ event: 'none', errno: 7 }] })).rejects.toThrow('errno 7 cannot be passed on');
    await expect(setup({ 'take-child-perms': ['write-unchanged'] })).rejects.toThrow("no 'write-unchanged' permission");
  });

  it('none fires at open; raw raises read_aio and write_aio on its file; the error reaches the caller with its code', async () => {
    const { top, log } = await setup({
      'inject-error': [{ event: 'none', iotype: 'flush', errno: 1, once: true }, { event: 'write_aio', sector: 2, errno: 28 }],
    }, true);
    expect(await code(top.flush())).toBe('ok'); // nothing written yet: the flush does not reach blkdebug (QEMU's write generations)
    expect(await code(top.write(0, Buffer.alloc(512), 0))).toBe('ok'); // write_aio: its rule replaced the flush rule
    expect(await code(top.write(1024, Buffer.alloc(512), 0))).toBe('ENOSPC');
    // read_aio has no inject rules, so the write_aio rule stays active, and without an iotype it covers reads too.
    expect(await code(top.read(1024, Buffer.alloc(512), 0))).toBe('ENOSPC');
    expect(await code(top.read(0, Buffer.alloc(512), 0))).toBe('ok');
    // Written now: the flush reaches blkdebug, and a flush covers no sector.
    expect(await code(top.flush())).toBe('ok');
    expect(log).toEqual(['flush', 'write 0 512', 'read 0 512', 'flush']);
  });

  it('flush_to_os/flush_to_disk, pwritev and pwritev_done, the rmw events drive state changes', async () => {
    const { dbg } = await setup({
      align: 4096,
      'set-state': [
        { event: 'pwritev_rmw_head', state: 1, new_state: 2 },
        { event: 'pwritev_rmw_after_tail', state: 2, new_state: 3 },
        { event: 'pwritev', state: 3, new_state: 4 },
      ],
      'inject-error': [{ event: 'pwritev_done', state: 4, errno: 5, iotype: 'read' }],
    });
    expect(await code(dbg.read(0, Buffer.alloc(512), 0))).toBe('ok');
    // An unaligned write: head and tail reads, then the aligned write.
    expect(await code(dbg.write(100, Buffer.alloc(100), 0))).toBe('ok');
    expect(await code(dbg.read(0, Buffer.alloc(512), 0))).toBe('EIO');
  });

  it('a flush of the node above raises flush_to_os and flush_to_disk on blkdebug (not flush_to_disk with cache.no-flush)', async () => {
    const rules = { 'inject-error': [{ event: 'flush_to_disk', iotype: 'read', errno: 5 }, { event: 'flush_to_os', iotype: 'read', errno: 28 }] };
    const { top } = await setup(rules, true);
    expect(await code(top.read(0, Buffer.alloc(512), 0))).toBe('ok');
    await top.flush();
    expect(await code(top.read(0, Buffer.alloc(512), 0))).toBe('EIO');
    const g = await setup(rules);
    const raw = await g.graph.add({ driver: 'raw', 'node-name': 'nf', file: 'dbg', cache: { 'no-flush': true } });
    await raw.flush();
    expect(await code(raw.read(0, Buffer.alloc(512), 0))).toBe('ENOSPC');
  });

  it('cuts write-zeroes at opt-write-zero and max-write-zero, short pieces written as zeroes; discard at opt-discard/max-discard', async () => {
    const { dbg, log } = await setup({ 'opt-write-zero': 4096, 'max-write-zero': 8192, 'opt-discard': 4096, 'max-discard': 4096 });
    await dbg.writeZeroes(1024, 20480, 0);
    expect(log.splice(0)).toEqual(['write 1024 3072', 'zero 4096 8192', 'zero 12288 8192', 'write 20480 1024']);
    await dbg.discard(1024, 12288);
    expect(log.splice(0)).toEqual(['discard 1024 3072', 'discard 4096 4096', 'discard 8192 4096', 'discard 12288 1024']);
  });

  it('align and max-transfer reach BlockNode; a sector rule catches a piece of a split request', async () => {
    const { dbg, log } = await setup({ align: 4096, 'max-transfer': 8192, 'inject-error': [{ event: 'none', sector: 40, iotype: 'read' }] });
    expect(dbg.limits.alignment).toBe(4096);
    expect(dbg.limits.maxTransfer).toBe(8192);
    expect(await code(dbg.read(0, Buffer.alloc(16384), 0))).toBe('ok');
    expect(await code(dbg.read(0, Buffer.alloc(16384 + 8192), 0))).toBe('EIO');
    expect(log).toEqual(['read 0 8192', 'read 8192 8192', 'read 0 8192', 'read 8192 8192']);
    // A write of 100 bytes: the aligned block read and written back.
    log.length = 0;
    await dbg.write(100, Buffer.alloc(100, 1), 0);
    expect(log).toEqual(['read 0 4096', 'write 0 4096']);
  });

  it('take-child-perms adds to what it takes on the image, unshare-child-perms keeps others out', async () => {
    const { graph } = await setup({ 'take-child-perms': ['resize'], 'unshare-child-perms': ['write'] });
    const edge = graph.find('r0').parents.find((e) => e.role === 'image')!;
    expect(edge.perm.resize).toBe(true);
    expect(edge.shared.write).toBe(false);
    await expect(graph.add({ driver: 'raw', 'node-name': 'w', file: 'r0' })).rejects.toThrow(/write/);
  });
});
