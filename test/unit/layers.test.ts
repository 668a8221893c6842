/**
 * The layer rules (.dependency-cruiser.cjs) hold for src/, and they are not
 * vacuous: a forbidden import in a scratch tree is reported.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '../..');
const depcruise = join(root, 'node_modules/.bin/depcruise');

function cruise(cwd: string, extra: string[] = []) {
  return spawnSync(depcruise, ['src', '--config', join(root, '.dependency-cruiser.cjs'), ...extra], { cwd, encoding: 'utf8', timeout: 60_000 });
}

describe('layer rules', () => {
  it('hold for src/ (the known-violations list only shrinks)', () => {
    const r = cruise(root, ['--ignore-known']);
    expect(r.stdout + r.stderr).toMatch(/no dependency violations found/);
    expect(r.status).toBe(0);
  });

  // One scratch tree holding one forbidden import per rule, cruised once.
  const probes: [from: string, stmt: string, to: string, rule: string][] = [
    ['src/blockdev/drivers/a.ts', "import '../../qmp/a.ts';", 'src/qmp/a.ts', 'blockdev-knows-no-export-server-or-control-plane'],
    ['src/blockdev/drivers/b.ts', "import '../jobs/b.ts';", 'src/blockdev/jobs/b.ts', 'drivers-know-no-jobs'],
    ['src/nbd/c.ts', "import '../qmp/c.ts';", 'src/qmp/c.ts', 'servers-know-no-control-plane'],
    ['src/qmp/d.ts', "import '../daemon/d.ts';", 'src/daemon/d.ts', 'nothing-imports-daemon'],
    ['src/qapi/e.ts', "import '../blockdev/e.ts';", 'src/blockdev/e.ts', 'schema-at-the-bottom'],
    ['src/nbd-protocol/f.ts', "import '../platform/f.ts';", 'src/platform/f.ts', 'nbd-codecs-are-pure'],
    ['src/export/g.ts', "import '../nbd/g.ts';", 'src/nbd/g.ts', 'export-layer-knows-no-server'],
    ['src/util/h.ts', "import './i.ts';", 'src/util/i.ts', 'no-circular'],
    ['src/crypto/j.ts', "import '../blockdev/j.ts';", 'src/blockdev/j.ts', 'crypto-beside-util'],
    ['src/fuse/k.ts', "import '../nbd-protocol/k.ts';", 'src/nbd-protocol/k.ts', 'fuse-is-not-nbd'],
    ['src/fuse/protocol/l.ts', "import '../../platform/l.ts';", 'src/platform/l.ts', 'fuse-codecs-are-pure'],
    ['src/nbd/m.ts', "import '../fuse/m.ts';", 'src/fuse/m.ts', 'servers-are-separate'],
  ];

  it('report a forbidden import of each kind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'blockd-layers-'));
    try {
      copyFileSync(join(root, 'tsconfig.json'), join(dir, 'tsconfig.json'));
      for (const [from, stmt, to, rule] of probes) {
        for (const f of [from, to]) mkdirSync(join(dir, f, '..'), { recursive: true });
        writeFileSync(join(dir, from), `${stmt}\nexport const x = 1;\n`);
        // The cycle case: the target imports the first file back.
        writeFileSync(join(dir, to), rule === 'no-circular' ? "import './h.ts';\nexport const y = 1;\n" : 'export const y = 1;\n');
      }
      const r = cruise(dir);
      expect(r.status).not.toBe(0);
      for (const [from, , to, rule] of probes) expect(r.stdout).toMatch(new RegExp(`${rule}: ${from} → \\s*${to}`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
