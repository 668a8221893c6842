/** External tools the tests drive. A missing tool fails the test that needs it: it never skips. */
import { execFileSync, spawnSync } from 'node:child_process';

export function requireTool(name: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  if (r.status !== 0 || !path) throw new Error(`required tool '${name}' is not installed (see README: apt-get install ...)`);
  return path;
}

/** Runs a tool and returns its stdout; throws with stderr on failure. */
export function run(cmd: string, args: string[], opts: { input?: string | Buffer; timeout?: number; env?: NodeJS.ProcessEnv } = {}): string {
  requireTool(cmd);
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: opts.timeout ?? 60_000, input: opts.input, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

/** Like run but returns status and both streams instead of throwing. */
export function tryRun(cmd: string, args: string[], opts: { input?: string; timeout?: number } = {}): { status: number | null; stdout: string; stderr: string } {
  requireTool(cmd);
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: opts.timeout ?? 60_000, input: opts.input });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** The libnbd Python binding imports under Debian's own python3 only. */
export const SYSTEM_PYTHON = '/usr/bin/python3';

export function nbdsh(script: string, timeout = 60_000): string {
  return run(SYSTEM_PYTHON, ['-c', `import nbd\n${script}`], { timeout });
}
