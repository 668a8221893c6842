/**
 * A seeded generator of DMG (UDIF) images for tests: nothing in Debian makes
 * them. The layout follows the format as QEMU's block/dmg.c reads it: a data
 * fork of chunks, then the blkx tables ('mish' blocks) either in an XML
 * property list (base64 <data> elements) or in a classic resource fork, then
 * the 512-byte 'koly' trailer. Chunk types: zero (UDZE), raw (UDRW), ignore
 * (UDIG), zlib (UDZO), bzip2 (UDBZ, whose data blockd and Debian's qsd
 * cannot decode: the generator only writes bytes that look like it),
 * comments (UDCM) and the terminator (UDLE). `expected` is the disk as
 * QEMU reads it, and `bzip2` the byte ranges that read as an I/O error.
 */
import { deflateSync } from 'node:zlib';

export const UDZE = 0, UDRW = 1, UDIG = 2, UDZO = 0x80000005, UDBZ = 0x80000006, UDCM = 0x7ffffffe, UDLE = 0xffffffff;

export type ChunkKind = 'zero' | 'raw' | 'ignore' | 'zlib' | 'bzip2';

export interface DmgOptions {
  seed: number;
  /** Where the blkx tables live: 'xml' (koly XMLOffset/XMLLength, no resource fork) or 'rsrc' (a resource fork, with the XML too as real images have). */
  layout: 'xml' | 'rsrc';
  /** Partitions (blkx tables), each a run of chunks. */
  partitions?: number;
  /** Chunks per partition. */
  chunks?: number;
  /** The kinds to draw from. */
  kinds?: ChunkKind[];
  /** Bytes of junk before the data fork (the koly DataForkOffset). */
  dataForkOffset?: number;
}

export interface Dmg {
  image: Buffer;
  /** The disk as QEMU reads it (bzip2 ranges as zeroes: they read as I/O errors). */
  expected: Buffer;
  /** [offset, length] byte ranges of the disk held by bzip2 chunks. */
  bzip2: [number, number][];
  /** Disk size in bytes. */
  size: number;
  /** Where things are in the image: the trailer, the XML, the resource fork and (in it) each mish block [offset, length]. */
  at: { koly: number; xml: [number, number]; rsrc: [number, number]; mish: [number, number][] };
}

export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const u64 = (b: Buffer, at: number, v: number) => b.writeBigUInt64BE(BigInt(v), at);

interface Entry { type: number; sector: number; count: number; offset: number; length: number }

function mish(firstSector: number, sectors: number, dataOffset: number, entries: Entry[]): Buffer {
  const b = Buffer.alloc(204 + 40 * entries.length);
  b.write('mish', 0, 'latin1');
  b.writeUInt32BE(1, 4);
  u64(b, 8, firstSector);
  u64(b, 0x10, sectors);
  u64(b, 0x18, dataOffset);
  b.writeUInt32BE(0x208, 0x20); // buffers needed
  b.writeUInt32BE(entries.length, 200);
  entries.forEach((e, i) => {
    const at = 204 + 40 * i;
    b.writeUInt32BE(e.type, at);
    u64(b, at + 8, e.sector);
    u64(b, at + 0x10, e.count);
    u64(b, at + 0x18, e.offset);
    u64(b, at + 0x20, e.length);
  });
  return b;
}

function plist(blocks: Buffer[], extra: Buffer): Buffer {
  const data = (b: Buffer) => b.toString('base64').replace(/.{1,52}/g, '\t\t\t\t$&\n');
  const entry = (b: Buffer, i: number) => `\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n\t\t\t\t<string>0x0050</string>\n\t\t\t\t<key>CFName</key>\n\t\t\t\t<string>partition ${i}</string>\n\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n${data(b)}\t\t\t\t</data>\n\t\t\t\t<key>ID</key>\n\t\t\t\t<string>${i - 1}</string>\n\t\t\t</dict>\n`;
  const xml = '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    + '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n'
    + blocks.map(entry).join('')
    + `\t\t</array>\n\t\t<key>plst</key>\n\t\t<array>\n\t\t\t<dict>\n\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n${data(extra)}\t\t\t\t</data>\n\t\t\t</dict>\n\t\t</array>\n\t</dict>\n</dict>\n</plist>\n`;
  return Buffer.from(xml, 'latin1');
}

/** A classic resource fork: 16-byte header, data (each resource a 32-bit length and its bytes), a map QEMU ignores. */
function resourceFork(blocks: Buffer[], where: [number, number][], base: number): Buffer {
  let at = base + 256;
  for (const b of blocks) { where.push([at + 4, b.length]); at += 4 + b.length; }
  const data = Buffer.concat(blocks.flatMap((b) => { const l = Buffer.alloc(4); l.writeUInt32BE(b.length); return [l, b]; }));
  const map = Buffer.alloc(50, 0);
  const head = Buffer.alloc(256);
  head.writeUInt32BE(256, 0);
  head.writeUInt32BE(256 + data.length, 4);
  head.writeUInt32BE(data.length, 8);
  head.writeUInt32BE(map.length, 12);
  return Buffer.concat([head, data, map]);
}

export function makeDmg(o: DmgOptions): Dmg {
  const r = rng(o.seed);
  const kinds = o.kinds ?? ['zero', 'raw', 'ignore', 'zlib'];
  const forkOff = o.dataForkOffset ?? 0;
  const fork: Buffer[] = [Buffer.alloc(forkOff, 0x5a)];
  let forkLen = forkOff;
  const disk: Buffer[] = [];
  const bzip2: [number, number][] = [];
  const blocks: Buffer[] = [];
  let sector = 0;
  for (let p = 0; p < (o.partitions ?? 3); p++) {
    const first = sector;
    // Chunk offsets are relative to the partition's DataOffset (from the data fork's start).
    const dataOffset = forkLen - forkOff;
    const entries: Entry[] = [];
    let rel = 0;
    for (let c = 0; c < (o.chunks ?? 6); c++) {
      const kind = kinds[Math.floor(r() * kinds.length)];
      const count = 1 + Math.floor(r() * 300);
      const bytes = count * 512;
      const content = Buffer.alloc(bytes);
      if (kind === 'raw' || kind === 'zlib' || kind === 'bzip2') {
        // Compressible: runs of one byte with random stretches.
        for (let i = 0; i < bytes;) {
          const n = Math.min(bytes - i, 1 + Math.floor(r() * 2000));
          if (r() < 0.3) for (let k = 0; k < n; k++) content[i + k] = Math.floor(r() * 256);
          else content.fill(Math.floor(r() * 256), i, i + n);
          i += n;
        }
      }
      let stored = Buffer.alloc(0);
      let type = UDZE;
      if (kind === 'raw') { type = UDRW; stored = content; }
      if (kind === 'zlib') { type = UDZO; stored = deflateSync(content); }
      if (kind === 'bzip2') { type = UDBZ; stored = Buffer.concat([Buffer.from('BZh91AY&SY'), content.subarray(0, 200)]); }
      if (kind === 'ignore') type = UDIG;
      if (kind === 'bzip2') bzip2.push([sector * 512, bytes]);
      entries.push({ type, sector: rel, count, offset: stored.length ? forkLen - forkOff - dataOffset : 0, length: stored.length });
      if (r() < 0.3) entries.push({ type: UDCM, sector: rel, count: 0, offset: 0, length: 0 });
      fork.push(stored);
      forkLen += stored.length;
      disk.push(kind === 'bzip2' ? Buffer.alloc(bytes) : content);
      rel += count;
      sector += count;
    }
    entries.push({ type: UDLE, sector: rel, count: 0, offset: 0, length: 0 });
    blocks.push(mish(first, rel, dataOffset, entries));
  }
  const dataFork = Buffer.concat(fork);
  const xml = plist(blocks, Buffer.from('not a mish block, as the plst resource of real images'));
  const mishAt: [number, number][] = [];
  const rsrc = o.layout === 'rsrc' ? resourceFork(blocks, mishAt, dataFork.length) : Buffer.alloc(0);
  const koly = Buffer.alloc(512);
  koly.write('koly', 0, 'latin1');
  koly.writeUInt32BE(4, 4);
  koly.writeUInt32BE(512, 8);
  koly.writeUInt32BE(1, 0x0c);
  u64(koly, 0x18, forkOff);
  u64(koly, 0x20, dataFork.length - forkOff);
  u64(koly, 0x28, rsrc.length ? dataFork.length : 0);
  u64(koly, 0x30, rsrc.length);
  koly.writeUInt32BE(1, 0x38);
  koly.writeUInt32BE(1, 0x3c);
  u64(koly, 0xd8, dataFork.length + rsrc.length);
  u64(koly, 0xe0, xml.length);
  koly.writeUInt32BE(1, 0x1e8);
  u64(koly, 0x1ec, sector);
  const at = { koly: dataFork.length + rsrc.length + xml.length, xml: [dataFork.length + rsrc.length, xml.length] as [number, number],
    rsrc: [dataFork.length, rsrc.length] as [number, number], mish: mishAt };
  return { image: Buffer.concat([dataFork, rsrc, xml, koly]), expected: Buffer.concat(disk), bzip2, size: sector * 512, at };
}
