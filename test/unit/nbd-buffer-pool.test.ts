/** The data-path buffer pool: exact sizes, reuse only after release, bounded idle memory. */
import { describe, it, expect } from 'vitest';
import { BufferPool } from '../../src/util/buffer-pool.ts';

describe('BufferPool', () => {
  it('hands out buffers of exactly the size asked for', () => {
    const p = new BufferPool();
    for (const n of [0, 1, 4096, 65535, 65536, 65537, 1 << 20, (32 << 20)]) expect(p.acquire(n).length).toBe(n);
  });

  it('reuses a released buffer of the same class, never one still lent', () => {
    const p = new BufferPool();
    const a = p.acquire(100_000);
    const b = p.acquire(100_000);
    expect(a.buffer).not.toBe(b.buffer);
    p.release(a);
    const c = p.acquire(70_000);
    expect(c.buffer).toBe(a.buffer);
    expect(c.buffer).not.toBe(b.buffer);
  });

  it('ignores foreign buffers, small buffers and double releases', () => {
    const p = new BufferPool();
    p.release(Buffer.alloc(1 << 20));
    p.release(new BufferPool().acquire(1 << 20));
    p.release(p.acquire(10));
    p.release(undefined);
    expect(p.idle).toBe(0);
    const a = p.acquire(1 << 20);
    p.release(a);
    p.release(a);
    expect(p.idle).toBe(1 << 20);
    const x = p.acquire(1 << 20);
    const y = p.acquire(1 << 20);
    expect(x.buffer).not.toBe(y.buffer);
  });

  it('keeps at most maxPooledBytes idle', () => {
    const p = new BufferPool(3 << 20);
    const bufs = Array.from({ length: 10 }, () => p.acquire(1 << 20));
    for (const b of bufs) p.release(b);
    expect(p.idle).toBe(3 << 20);
  });
});
