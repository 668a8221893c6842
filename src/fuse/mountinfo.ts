/**
 * /proc/self/mountinfo, parsed (proc(5)): which file systems are mounted
 * where. The FUSE export uses it to recognise a stale FUSE mount (its
 * daemon was killed) on a mountpoint before it mounts there again.
 */
import { readFileSync } from 'node:fs';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** Undoes mountinfo's octal escapes (\040 for a space, \134 for a backslash...). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 7 || sep < 0 || sep + 2 >= f.length) continue;
    out.push({ mountPoint: unescape(f[4]), fsType: unescape(f[sep + 1]), source: unescape(f[sep + 2]) });
  }
  return out;
}

export function readMountInfo(file = '/proc/self/mountinfo'): MountEntry[] {
  return parseMountInfo(readFileSync(file, 'utf8'));
}

/** The topmost FUSE mount on `absPath`, if any. */
export function fuseMountOn(absPath: string, entries = readMountInfo()): MountEntry | undefined {
  return entries.filter((e) => e.mountPoint === absPath && (e.fsType === 'fuse' || e.fsType.startsWith('fuse.'))).pop();
}
