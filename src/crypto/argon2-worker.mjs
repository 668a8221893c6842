// Argon2 key derivation for LUKS2 key slots, off the main event loop (hash-wasm's
// argon2 is WebAssembly: seconds of CPU and up to a GiB of memory per slot).
import { parentPort, workerData } from 'node:worker_threads';
import { argon2i, argon2id } from 'hash-wasm';

const { type, password, salt, iterations, memorySize, parallelism, hashLength } = workerData;
const fn = type === 'argon2i' ? argon2i : argon2id;
fn({ password, salt, iterations, memorySize, parallelism, hashLength, outputType: 'binary' }).then(
  (key) => parentPort.postMessage({ key }, [key.buffer]),
  (e) => parentPort.postMessage({ error: String((e && e.message) || e) }),
);
