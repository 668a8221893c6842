/**
 * The pure parts of the ringbuf chardev: the ring (QEMU's overwrite-oldest
 * semantics, checked against a plain model over seeded random sequences),
 * QEMU's sizes, modified UTF-8 both ways, and GLib's base64 decoding.
 */
import { describe, expect, it } from 'vitest';
import { RingBuffer } from '../../src/qmp/chardevs/ring-buffer.ts';
import { fromQemuCString, toModifiedUtf8 } from '../../src/qmp/chardevs/qemu-utf8.ts';
import { glibBase64Decode } from '../../src/qmp/chardevs/glib-base64.ts';

describe('RingBuffer', () => {
  it('keeps the last size bytes, reads the oldest first (against a model, random sequences)', () => {
    let seed = 7;
    const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    for (const size of [1, 2, 8, 64, 4096]) {
      const ring = new RingBuffer(size);
      let model: number[] = [];
      let byte = 0;
      for (let step = 0; step < 2000; step++) {
        if (rand(2) === 0) {
          const data = Buffer.alloc(rand(size * 2 + 2), 0).map(() => (byte++ & 0xff));
          ring.write(data);
          model = [...model, ...data].slice(-size);
        } else {
          const n = rand(size + 3);
          expect([...ring.read(n)]).toEqual(model.slice(0, n));
          model = model.slice(n);
        }
        expect(ring.count).toBe(model.length);
      }
    }
  });

  it('size 0 keeps nothing; sizes are checked as QEMU does (a power of two as uint64, or 0)', () => {
    const r = new RingBuffer(0);
    r.write(Buffer.from('abc'));
    expect(r.read(3).length).toBe(0);
    for (const ok of [0, 1, 2, 65536, 2 ** 32, -(2 ** 63)]) expect(RingBuffer.validSize(BigInt(ok)), String(ok)).toBe(true);
    for (const bad of [3, 15, -4, -1, 65535]) expect(RingBuffer.validSize(bad), String(bad)).toBe(false);
  });
});

describe("QEMU's modified UTF-8", () => {
  it('writes U+0000 as C0 80, everything else as UTF-8', () => {
    expect([...toModifiedUtf8('a\u0000b')]).toEqual([0x61, 0xc0, 0x80, 0x62]);
    expect(toModifiedUtf8('é😀').toString('hex')).toBe('c3a9f09f9880');
  });

  it('reads as QEMU\'s JSON writer does: to the first NUL, each invalid sequence one U+FFFD', () => {
    const r = (hex: string) => fromQemuCString(Buffer.from(hex, 'hex'));
    expect(r('61c08062')).toBe('a\u0000b');
    expect(r('610062')).toBe('a');
    expect(r('c3a9e282')).toBe('é\ufffd'); // a cut sequence
    expect(r('ac')).toBe('\ufffd'); // a continuation byte alone
    expect(r('ff41')).toBe('\ufffdA');
    expect(r('efbfbf')).toBe('\ufffd'); // a noncharacter
    expect(r('c0a1')).toBe('\ufffd'); // overlong
    expect(r('eda080')).toBe('\ufffd'); // a surrogate
    expect(r('f09f9880')).toBe('😀');
  });
});

describe("GLib's base64 decoding", () => {
  it('decodes whole groups, drops a partial one, and pads with =', () => {
    const d = (s: string) => glibBase64Decode(s).toString('hex');
    expect(d('aGVsbG8=')).toBe(Buffer.from('hello').toString('hex'));
    expect(d('QQ==')).toBe('41');
    expect(d('QUJD=x')).toBe('414243');
    expect(d('Q')).toBe('');
    expect(d('')).toBe('');
    expect(d('QQ=Q')).toBe('4110'); // '=' inside a group drops the byte it stands for
  });
});
