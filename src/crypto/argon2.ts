/**
 * Argon2i / Argon2id (RFC 9106) for LUKS2 key slots, through hash-wasm in a
 * worker thread: Node 20's crypto has no Argon2, and a derivation takes
 * seconds of CPU and up to a GiB of memory, which must not stall the daemon.
 */
import { Worker } from 'node:worker_threads';
import { BlockError } from '../util/errors.ts';

export interface Argon2Params {
  type: 'argon2i' | 'argon2id';
  /** Passes over memory (LUKS2 `time`). */
  iterations: number;
  /** KiB (LUKS2 `memory`). */
  memorySize: number;
  /** Lanes (LUKS2 `cpus`). */
  parallelism: number;
}

/** The `length`-byte key for `password` and `salt`. The worker's copy of the password goes with the worker. */
export function argon2(p: Argon2Params, password: Buffer, salt: Buffer, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./argon2-worker.mjs', import.meta.url), {
      workerData: { ...p, password: new Uint8Array(password), salt: new Uint8Array(salt), hashLength: length },
    });
    w.once('message', (m: { key?: Uint8Array; error?: string }) => {
      void w.terminate();
      if (m.key) resolve(Buffer.from(m.key.buffer, m.key.byteOffset, m.key.byteLength));
      else reject(new BlockError('EINVAL', `Argon2 key derivation failed: ${m.error}`));
    });
    w.once('error', (e) => reject(new BlockError('EIO', `Argon2 key derivation failed: ${e.message}`)));
  });
}
