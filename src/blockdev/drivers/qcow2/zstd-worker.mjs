// Decodes zstd frames for the qcow2 driver off the main event loop (fzstd is pure JS).
import { parentPort } from 'node:worker_threads';
import { decompress } from 'fzstd';

parentPort.on('message', ({ id, input }) => {
  try {
    const out = decompress(input);
    parentPort.postMessage({ id, out }, [out.buffer]);
  } catch (e) {
    parentPort.postMessage({ id, error: String((e && e.message) || e) });
  }
});
