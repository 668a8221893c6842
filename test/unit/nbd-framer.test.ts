/** The transmission-phase framer, fed the same stream split at every byte boundary. */
import { describe, it, expect } from 'vitest';
import { RequestFramer, type Frame } from '../../src/nbd-protocol/request-framer.ts';
import { cookieOf } from '../../src/nbd-protocol/requests.ts';
import { Cmd, REQUEST_MAGIC } from '../../src/nbd-protocol/constants.ts';

function header(type: number, offset: number | bigint, length: number, cookie: bigint, flags = 0, magic = REQUEST_MAGIC): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(magic, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

const payload = Buffer.from(Array.from({ length: 37 }, (_, i) => i + 1));

/** READ, WRITE with payload, zero-length WRITE, FLUSH, BLOCK_STATUS with flags and a 64-bit offset. */
const stream = Buffer.concat([
  header(Cmd.READ, 4096, 512, 1n),
  header(Cmd.WRITE, 100, payload.length, 2n, 1),
  payload,
  header(Cmd.WRITE, 0, 0, 3n),
  header(Cmd.FLUSH, 0, 0, 0xffffffffffffffffn),
  header(Cmd.BLOCK_STATUS, 2n ** 40n + 7n, 65536, 5n, 8),
]);

function summary(frames: Frame[]): unknown[] {
  return frames.map((f) => {
    if (f.kind === 'bad-magic') return { bad: f.magic, cookie: cookieOf(f.req).toString() };
    if (f.kind === 'payload-too-big') return { tooBig: f.req.length, cookie: cookieOf(f.req).toString() };
    const { cookieHi: _hi, cookieLo: _lo, ...rest } = f.req;
    return { ...rest, cookie: cookieOf(f.req).toString(), payload: f.payload?.toString('hex'), discarded: f.discarded };
  });
}

function drain(fr: RequestFramer, out: Frame[]): void {
  for (let f = fr.next(); f; f = fr.next()) out.push(f);
}

function feed(pieces: Buffer[]): Frame[] {
  const fr = new RequestFramer();
  const out: Frame[] = [];
  for (const p of pieces) { fr.push(p); drain(fr, out); }
  return out;
}

describe('RequestFramer', () => {
  const whole = summary(feed([stream]));

  it('parses every field', () => {
    expect(whole).toEqual([
      { flags: 0, type: Cmd.READ, cookie: '1', offset: 4096, length: 512, payload: undefined, discarded: undefined },
      { flags: 1, type: Cmd.WRITE, cookie: '2', offset: 100, length: 37, payload: payload.toString('hex'), discarded: undefined },
      { flags: 0, type: Cmd.WRITE, cookie: '3', offset: 0, length: 0, payload: '', discarded: undefined },
      { flags: 0, type: Cmd.FLUSH, cookie: '18446744073709551615', offset: 0, length: 0, payload: undefined, discarded: undefined },
      { flags: 8, type: Cmd.BLOCK_STATUS, cookie: '5', offset: 2 ** 40 + 7, length: 65536, payload: undefined, discarded: undefined },
    ]);
  });

  it('gives the same frames for every split into two pieces', () => {
    for (let i = 0; i <= stream.length; i++) {
      expect(summary(feed([stream.subarray(0, i), stream.subarray(i)])), `split at ${i}`).toEqual(whole);
    }
  });

  it('gives the same frames for every split into three pieces', () => {
    for (let i = 0; i <= stream.length; i += 3) {
      for (let j = i; j <= stream.length; j += 5) {
        expect(summary(feed([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)])), `split at ${i},${j}`).toEqual(whole);
      }
    }
  });

  it('moves to a new framer at any point (a connection going to another event loop): taken only at a boundary, the frames are the same', () => {
    // Fed in two pieces split at i; the first framer hands over after its first `k` frames and
    // whatever it completes while a payload is half in (never inside one); the second takes the rest.
    for (let i = 0; i <= stream.length; i++) {
      for (let k = 0; k <= 5; k++) {
        for (const transient of [false, true]) {
          const a = new RequestFramer({ transient });
          const out: Frame[] = [];
          const pieces = [stream.subarray(0, i), stream.subarray(i)];
          let moved: RequestFramer | undefined;
          for (const p of pieces) {
            const fr = moved ?? a;
            fr.push(p);
            for (let f = fr.next(); f; f = fr.atBoundary && !moved && out.length + 1 > k ? undefined : fr.next()) out.push(f);
            if (transient && fr === a) a.retainUnconsumed();
            if (!moved && a.atBoundary && out.length >= k) {
              const b = new RequestFramer({ transient });
              b.push(a.takeBuffered());
              expect(a.buffered).toBe(0);
              moved = b;
              drain(b, out);
            }
          }
          if (!moved) drain(a, out);
          expect(summary(out), `split at ${i}, move after ${k} frames, transient ${transient}`).toEqual(whole);
        }
      }
    }
  });

  it('gives the same frames fed one byte at a time', () => {
    const pieces = [...stream].map((b) => Buffer.from([b]));
    expect(summary(feed(pieces))).toEqual(whole);
  });

  it('hands out a payload inside one chunk as a view of that chunk (no copy)', () => {
    const fr = new RequestFramer();
    const chunk = Buffer.concat([header(Cmd.WRITE, 0, payload.length, 9n), payload]);
    fr.push(chunk);
    const f = fr.next();
    expect(f?.kind).toBe('request');
    const p = (f as { payload: Buffer }).payload;
    expect(p.buffer).toBe(chunk.buffer);
    expect(p.byteOffset).toBe(chunk.byteOffset + 28);
  });

  it('assembles a payload split over chunks into one buffer', () => {
    const fr = new RequestFramer();
    fr.push(header(Cmd.WRITE, 0, payload.length, 9n));
    expect(fr.next()).toBeUndefined();
    fr.push(payload.subarray(0, 10));
    expect(fr.next()).toBeUndefined();
    fr.push(payload.subarray(10));
    const f = fr.next() as { payload: Buffer };
    expect(f.payload.equals(payload)).toBe(true);
  });

  it('does not wait for more than it needs and keeps what follows', () => {
    const fr = new RequestFramer();
    fr.push(stream.subarray(0, 27));
    expect(fr.next()).toBeUndefined();
    expect(fr.buffered).toBe(27);
    expect(fr.midFrame).toBe(true);
    fr.push(stream.subarray(27, 28));
    expect(fr.next()?.kind).toBe('request');
    expect(fr.midFrame).toBe(false);
  });

  it('skips an oversize WRITE payload without buffering it, then yields it flagged', () => {
    const fr = new RequestFramer({ maxPayload: 16 });
    const big = Buffer.alloc(40, 0xaa);
    const s = Buffer.concat([header(Cmd.WRITE, 0, big.length, 7n), big, header(Cmd.FLUSH, 0, 0, 8n)]);
    const out: Frame[] = [];
    for (let i = 0; i < s.length; i += 6) {
      fr.push(s.subarray(i, i + 6));
      expect(fr.buffered).toBeLessThanOrEqual(28 + 6);
      drain(fr, out);
    }
    expect(summary(out)).toEqual([
      { flags: 0, type: Cmd.WRITE, cookie: '7', offset: 0, length: 40, payload: undefined, discarded: true },
      { flags: 0, type: Cmd.FLUSH, cookie: '8', offset: 0, length: 0, payload: undefined, discarded: undefined },
    ]);
  });

  it('stops at a bad magic, after the good frames before it, and stays stopped', () => {
    const bad = Buffer.concat([header(Cmd.READ, 0, 1, 1n), header(Cmd.READ, 0, 1, 2n, 0, 0xdeadbeef), header(Cmd.READ, 0, 1, 3n)]);
    for (let i = 0; i <= bad.length; i++) {
      const out = summary(feed([bad.subarray(0, i), bad.subarray(i)]));
      expect(out.length, `split at ${i}`).toBe(2);
      expect(out[1]).toEqual({ bad: 0xdeadbeef, cookie: '2' });
    }
    const fr = new RequestFramer();
    fr.push(header(Cmd.READ, 0, 1, 2n, 0, 0x12345678));
    expect(fr.next()?.kind).toBe('bad-magic');
    fr.push(header(Cmd.READ, 0, 1, 3n));
    expect(fr.next()).toBeUndefined();
  });

  it('reads 64-bit offsets above 2^53 as numbers larger than any export', () => {
    const out = summary(feed([header(Cmd.READ, 2n ** 64n - 1n, 1, 1n)]));
    expect((out[0] as { offset: number }).offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });
});

describe('RequestFramer with transient chunks (one reused socket read buffer)', () => {
  it('never hands out views of a pushed chunk, and keeps what it has not handed out', () => {
    const payloads = [Buffer.alloc(5000, 0x41), Buffer.alloc(300, 0x42), Buffer.alloc(70_000, 0x43)];
    const stream = Buffer.concat(payloads.flatMap((p, i) => [header(Cmd.WRITE, i * 100_000, p.length, BigInt(i)), p]).concat(header(Cmd.FLUSH, 0, 0, 9n)));
    for (const size of [1, 7, 28, 4096, 65536]) {
      const f = new RequestFramer({ transient: true });
      const reused = Buffer.alloc(size);
      const frames: Frame[] = [];
      for (let at = 0; at < stream.length; at += size) {
        const n = Math.min(size, stream.length - at);
        stream.copy(reused, 0, at, at + n);
        f.push(reused.subarray(0, n));
        // Take at most one frame per read, as a connection under backpressure would.
        const fr = f.next();
        if (fr) frames.push(fr);
        f.retainUnconsumed();
        reused.fill(0xee); // the socket reuses its buffer for the next read
      }
      for (let fr = f.next(); fr; fr = f.next()) frames.push(fr);
      expect(frames.length, `chunk size ${size}`).toBe(4);
      frames.slice(0, 3).forEach((fr, i) => {
        expect(fr.kind).toBe('request');
        if (fr.kind === 'request') expect(fr.payload!.equals(payloads[i]), `payload ${i}, chunk size ${size}`).toBe(true);
      });
    }
  });
});
