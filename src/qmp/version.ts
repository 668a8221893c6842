/** What query-version and the QMP greeting report: QEMU 7.2.22's version (the qsd blockd follows) and blockd's own. */
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

export const BLOCKD_VERSION = pkg.version;

export function versionInfo(): { qemu: { major: number; minor: number; micro: number }; package: string } {
  return { qemu: { major: 7, minor: 2, micro: 22 }, package: `blockd ${BLOCKD_VERSION}` };
}

export function greeting(): Record<string, unknown> {
  return { version: versionInfo(), capabilities: ['oob'] };
}
