/**
 * PBKDF2 (RFC 8018) through node:crypto, which runs it on the thread pool,
 * and QEMU's iteration calibration (crypto/pbkdf.c qcrypto_pbkdf2_count_iters):
 * how many iterations one second of this machine's time buys, so that
 * blockdev-create's iter-time means what it means to qemu-img.
 */
import { pbkdf2 as nodePbkdf2 } from 'node:crypto';
import type { HashAlg } from './cipher-spec.ts';

export function pbkdf2(hash: HashAlg, password: Buffer, salt: Buffer, iterations: number, keyLen: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    nodePbkdf2(password, salt, iterations, keyLen, hash, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/**
 * Iterations per second, found as QEMU finds them: from 2^15 iterations, a
 * run under 100 ms is retried with ten times as many, a longer one with as
 * many as should take a second, until one takes over 500 ms. (QEMU times the
 * thread's CPU in milliseconds, and fails with "Unable to get accurate CPU
 * usage" when a run shows 0 ms; the thread pool's run is timed here on the
 * wall clock in nanoseconds, which cannot be 0.)
 */
export async function pbkdf2IterationsPerSecond(hash: HashAlg, password: Buffer, salt: Buffer, keyLen: number): Promise<number> {
  let iterations = 1 << 15;
  for (;;) {
    const start = process.hrtime.bigint();
    (await pbkdf2(hash, password, salt, iterations, keyLen)).fill(0);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (ms > 500) return Math.floor((iterations * 1000) / ms);
    iterations = ms < 100 ? iterations * 10 : Math.ceil((iterations * 1000) / ms);
  }
}
