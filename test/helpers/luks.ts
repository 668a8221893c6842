/** Making LUKS images with qemu-img for the tests. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { requireTool } from './tools.ts';

const execFileP = promisify(execFile);

/**
 * `qemu-img create -f luks` with `opts` (key-secret=s is set, the secret read
 * from `passwordFile`). Asynchronous: qemu-img spends seconds of CPU
 * calibrating PBKDF2, and a test worker blocked that long misses vitest's
 * RPC deadlines on a busy machine. qemu-img times the calibration on the
 * thread's CPU clock, which can show 0 ms for a run; it then fails with
 * "Unable to get accurate CPU usage", so that one failure is retried.
 */
export async function qemuImgCreateLuks(file: string, passwordFile: string, opts: string[], size: string): Promise<void> {
  requireTool('qemu-img');
  for (let attempt = 0; ; attempt++) {
    try {
      await execFileP('qemu-img', ['create', '-q', '-f', 'luks', '--object', `secret,id=s,file=${passwordFile}`, '-o', ['key-secret=s', ...opts].join(','), file, size], { timeout: 120_000 });
      return;
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      if (attempt >= 5 || !/Unable to get accurate CPU usage/.test(err.stderr ?? '')) throw new Error(`qemu-img create -f luks ${file} failed: ${err.stderr || err.message}`);
    }
  }
}

/**
 * Any qemu-img command that derives LUKS keys (create or convert of an
 * encrypted qcow2, qemu-io's writes do not): asynchronous, with the same
 * retry of qemu-img's "Unable to get accurate CPU usage" calibration failure.
 */
export async function qemuImgCalibrating(args: string[]): Promise<string> {
  requireTool('qemu-img');
  for (let attempt = 0; ; attempt++) {
    try {
      return (await execFileP('qemu-img', args, { timeout: 120_000 })).stdout;
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      if (attempt >= 5 || !/Unable to get accurate CPU usage/.test(err.stderr ?? '')) throw new Error(`qemu-img ${args.join(' ')} failed: ${err.stderr || err.message}`);
    }
  }
}
