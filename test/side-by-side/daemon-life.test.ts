/**
 * The daemon's life as a process: command-line errors, --pidfile,
 * --daemonize, SIGTERM, sd_notify readiness and systemd socket activation.
 */
import { describe, it, expect } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCKD, startDaemon, tempDir } from '../helpers/daemons.ts';
import { run, requireTool, SYSTEM_PYTHON } from '../helpers/tools.ts';

const NULL_NODE = ['--blockdev', 'driver=null-co,node-name=n0,size=1048576'];

function blockdSync(args: string[]) {
  return spawnSync(BLOCKD, args, { encoding: 'utf8', timeout: 30_000 });
}

describe('command line', () => {
  it('prints help and version', () => {
    expect(blockdSync(['-h']).stdout).toMatch(/--blockdev/);
    expect(blockdSync(['-V']).stdout).toMatch(/^blockd version/);
  });

  it('--object help lists the object types, TYPE,help their properties', () => {
    expect(blockdSync(['--object', 'help']).stdout).toBe('List of user creatable objects:\n  authz-list\n  authz-list-file\n  authz-simple\n' +
      '  iothread\n  secret\n  throttle-group\n  tls-creds-anon\n  tls-creds-psk\n  tls-creds-x509\n');
    // The TLS and authz types' properties are listed as qsd lists them.
    for (const t of ['tls-creds-x509', 'tls-creds-psk', 'tls-creds-anon', 'authz-list', 'authz-simple', 'authz-list-file']) {
      expect(blockdSync(['--object', `${t},help`]).stdout, t).toBe(spawnSync(requireTool('qemu-storage-daemon'), ['--object', `${t},help`], { encoding: 'utf8' }).stdout);
    }
    const r = blockdSync(['--object', 'secret,help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^secret options:\n  data=<string>\n  file=<string>\n/);
  });

  it('refuses bad options with one line naming the option, exit 1, as qsd', () => {
    const cases: [string[], string][] = [
      [['--foo'], "blockd: unrecognized option '--foo'"],
      [['--blockdev', 'driver=file'], "blockd: --blockdev driver=file: Parameter 'filename' is missing"],
      [['--blockdev', 'driver=null-co,size=abc'], "blockd: --blockdev driver=null-co,size=abc: Parameter 'size' expects integer"],
      [[...NULL_NODE, '--export', 'type=nbd,id=e,node-name=n0'], 'blockd: --export type=nbd,id=e,node-name=n0: NBD server not running'],
      [['--nbd-server', 'addr.type=inet,addr.host=127.0.0.1'], "blockd: --nbd-server addr.type=inet,addr.host=127.0.0.1: Parameter 'addr.port' is missing"],
    ];
    for (const [args, line] of cases) {
      const r = blockdSync(args);
      expect(r.status).toBe(1);
      expect(r.stderr.trim()).toBe(line);
    }
  });
});

describe('process life', () => {
  it('writes the pidfile only once started, removes it on SIGTERM, exits 0', async () => {
    const dir = tempDir();
    const pid = join(dir, 'blockd.pid');
    const sock = join(dir, 's.sock');
    const d = await startDaemon('blockd', [...NULL_NODE, '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=n0', '--pidfile', pid], sock);
    for (let i = 0; i < 50 && !existsSync(pid); i++) await new Promise((r) => setTimeout(r, 50));
    expect(Number(readFileSync(pid, 'utf8'))).toBe(d.proc.pid);
    expect(await d.stop('SIGTERM')).toBe(0);
    expect(existsSync(pid)).toBe(false);
  });

  it('with nothing to serve (only --blockdev) it runs until SIGTERM and holds its image locks, as qsd', async () => {
    const dir = tempDir();
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const qemuIo = (args: string[]) => {
      const r = spawnSync('qemu-io', args, { encoding: 'utf8' });
      return `${r.status} ${r.stdout}${r.stderr}`.replace(/\(.*\/sec and .* ops\/sec\)/, '');
    };
    const seen: Record<string, unknown> = {};
    for (const who of ['qsd', 'blockd'] as const) {
      const pid = join(dir, `${who}.pid`);
      const args = ['--blockdev', `driver=file,node-name=f1,filename=${top}`, '--blockdev', 'driver=qcow2,node-name=q1,file=f1', '--pidfile', pid];
      const proc = spawn(who === 'qsd' ? requireTool('qemu-storage-daemon') : BLOCKD, args, { stdio: 'ignore' });
      const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
      for (let i = 0; i < 200 && !existsSync(pid); i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 500));
      seen[who] = {
        running: proc.exitCode === null,
        writeTop: qemuIo(['-f', 'qcow2', '-c', 'write 0 4k', top]),
        writeBase: qemuIo(['-f', 'qcow2', '-c', 'write 0 4k', base]),
        readBase: qemuIo(['-r', '-f', 'qcow2', '-c', 'read 0 4k', base]),
      };
      proc.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    expect(seen.blockd).toEqual(seen.qsd);
    expect(seen.blockd).toMatchObject({ running: true, writeTop: expect.stringContaining('Failed to get "write" lock') });
  });

  it('does not write the pidfile when start-up fails', () => {
    const dir = tempDir();
    const pid = join(dir, 'blockd.pid');
    const r = blockdSync(['--blockdev', 'driver=file,filename=/nonexistent', '--pidfile', pid]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Could not open '\/nonexistent'/);
    expect(existsSync(pid)).toBe(false);
  });

  it('--daemonize: the parent exits 0 once the child serves, or 1 with the child error', async () => {
    const dir = tempDir();
    const pid = join(dir, 'blockd.pid');
    const sock = join(dir, 's.sock');
    const ok = blockdSync([...NULL_NODE, '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=n0', '--pidfile', pid, '--daemonize']);
    expect(ok.status).toBe(0);
    expect(existsSync(sock)).toBe(true);
    const child = Number(readFileSync(pid, 'utf8'));
    expect(run('nbdinfo', ['--size', `nbd+unix:///n0?socket=${sock}`]).trim()).toBe('1048576');
    process.kill(child, 'SIGTERM');
    for (let i = 0; i < 100 && existsSync(pid); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(pid)).toBe(false);
    const bad = blockdSync(['--blockdev', 'driver=file,filename=/nonexistent', '--daemonize']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/Could not open '\/nonexistent'/);
  });

  it('Type=notify: sends READY=1 once listening and STOPPING=1 on SIGTERM', async () => {
    const dir = tempDir();
    const notify = join(dir, 'notify.sock');
    const sock = join(dir, 's.sock');
    // A datagram listener in Debian's python (node:net has no AF_UNIX datagrams).
    const listener = spawn(SYSTEM_PYTHON, ['-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
print("bound", flush=True)
for _ in range(2):
    print(s.recv(4096).decode().replace("\\n", " "), flush=True)
`, notify], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    listener.stdout!.on('data', (d) => (out += d));
    for (let i = 0; i < 100 && !out.includes('bound'); i++) await new Promise((r) => setTimeout(r, 50));
    const d = spawn(BLOCKD, [...NULL_NODE, '--nbd-server', `addr.type=unix,addr.path=${sock}`, '--export', 'type=nbd,id=e,node-name=n0'], { env: { ...process.env, NOTIFY_SOCKET: notify }, stdio: 'ignore' });
    for (let i = 0; i < 200 && !out.includes('READY=1'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).toMatch(/READY=1/);
    expect(existsSync(sock)).toBe(true);
    d.kill('SIGTERM');
    await new Promise((r) => d.once('exit', r));
    for (let i = 0; i < 100 && !out.includes('STOPPING=1'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).toMatch(/STOPPING=1/);
    listener.kill();
  });

  it('socket activation: serves NBD and QMP on the sockets systemd-socket-activate passes in', async () => {
    requireTool('systemd-socket-activate');
    const dir = tempDir();
    const sock = join(dir, 'act.sock');
    const qmp = join(dir, 'qmp.sock');
    const act = spawn('systemd-socket-activate', ['-l', sock, '-l', qmp, '--fdname=nbd:qmp', BLOCKD, ...NULL_NODE, '--export', 'type=nbd,id=e,node-name=n0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    act.stderr!.on('data', (d) => (err += d));
    try {
      for (let i = 0; i < 100 && !existsSync(qmp); i++) await new Promise((r) => setTimeout(r, 50));
      // The daemon starts on the first connection; nbdinfo is that connection.
      const size = run('nbdinfo', ['--size', `nbd+unix:///n0?socket=${sock}`], { timeout: 30_000 }).trim();
      expect(size).toBe('1048576');
      const exports = JSON.parse(run(join(import.meta.dirname, '../../bin/blockctl'), ['-s', qmp, '--json', 'query-block-exports']));
      expect(exports).toEqual([{ 'shutting-down': false, type: 'nbd', id: 'e', 'node-name': 'n0' }]);
    } finally {
      act.kill('SIGTERM');
    }
    expect(err).not.toMatch(/error/i);
  });

  it('the embedded default (no options) creates and serves a qcow2 disk0 on TCP, a Unix socket and a QMP monitor', async () => {
    const dir = tempDir();
    const d = spawn(BLOCKD, [], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    d.stdout!.on('data', (x) => (out += x));
    d.stderr!.on('data', (x) => (err += x));
    try {
      const sock = join(dir, 'var/nbd.sock');
      // Up to 30 s: on a loaded machine the start (it creates a 1 GiB qcow2 first) can take a while.
      for (let i = 0; i < 600 && !out.includes('Stop with') && d.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      expect(out, `stderr: ${err}`).toMatch(/nbdinfo nbd:\/\/127\.0\.0\.1:10809\/disk0/);
      expect(run('nbdinfo', ['--size', `nbd+unix:///disk0?socket=${sock}`]).trim()).toBe(String(1 << 30));
      expect(run('nbdinfo', ['--size', 'nbd://127.0.0.1:10809/disk0']).trim()).toBe(String(1 << 30));
      run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 65536', `nbd+unix:///disk0?socket=${sock}`]);
      const nodes = JSON.parse(run(join(import.meta.dirname, '../../bin/blockctl'), ['-s', join(dir, 'var/qmp.sock'), '--json', 'query-named-block-nodes']));
      expect(nodes.find((n: { 'node-name': string }) => n['node-name'] === 'disk0').drv).toBe('qcow2');
    } finally {
      d.kill('SIGTERM');
      await new Promise((r) => d.once('exit', r));
    }
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', join(dir, 'var/disk0.qcow2')]));
    expect(info.format).toBe('qcow2');
    run('qemu-img', ['check', join(dir, 'var/disk0.qcow2')]);
  });

  it('systemd units pass systemd-analyze verify', () => {
    requireTool('systemd-analyze');
    const dir = tempDir();
    const unitDir = join(import.meta.dirname, '../../systemd');
    for (const u of ['blockd.service', 'blockd.socket', 'blockd-unix.socket', 'blockd-qmp.socket']) {
      let text = readFileSync(join(unitDir, u), 'utf8');
      text = text.replaceAll('/opt/blockd/bin/blockd', BLOCKD);
      writeFileSync(join(dir, u), text);
    }
    const r = spawnSync('systemd-analyze', ['verify', ...['blockd.service', 'blockd.socket', 'blockd-unix.socket', 'blockd-qmp.socket'].map((u) => join(dir, u))], { encoding: 'utf8' });
    expect(r.stderr.split('\n').filter((l) => l.includes('blockd')).join('\n')).toBe('');
    expect(r.status).toBe(0);
    void copyFileSync;
  });
});
