/**
 * A QMP chardev in client mode over an inherited, connected socket
 * (`--chardev socket,id=m0,fd=N` without server=on), side by side with qsd:
 * the parent makes a socketpair, passes one end to the daemon and speaks QMP
 * on the other; the greeting's members, the replies (qmp_capabilities,
 * query-jobs, a bad command, quit), the SHUTDOWN event and the exit status
 * equal qsd's. blockd refused such an fd ("an inherited fd is a listening
 * socket for blockd").
 */
import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BLOCKD } from '../helpers/daemons.ts';
import { SYSTEM_PYTHON, requireTool } from '../helpers/tools.ts';

const SCRIPT = `
import socket, subprocess, sys, json
a, b = socket.socketpair()
p = subprocess.Popen([sys.argv[1], '--chardev', f'socket,id=m0,fd={b.fileno()}', '--monitor', 'm0'],
                     pass_fds=[b.fileno()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
b.close()
a.settimeout(20)
f = a.makefile('rwb')
out = {"greeting": sorted(json.loads(f.readline())["QMP"].keys())}
def ask(cmd):
    f.write((json.dumps(cmd) + "\\n").encode()); f.flush()
    while True:
        m = json.loads(f.readline())
        if "event" in m: out.setdefault("events", []).append(m["event"]); continue
        return m
out["caps"] = ask({"execute": "qmp_capabilities"})
out["jobs"] = ask({"execute": "query-jobs"})
out["bad"] = ask({"execute": "no-such-command"})
out["quit"] = ask({"execute": "quit"})
try:
    for line in f:
        m = json.loads(line)
        if "event" in m: out.setdefault("events", []).append(m["event"])
except ConnectionResetError:
    pass  # qsd may reset its end as it exits
out["status"] = p.wait(20)
out["stderr"] = p.stderr.read().decode()
print(json.dumps(out))
`;

describe('QMP client mode over an inherited connected socket, side by side with qsd', () => {
  it('greeting, replies, SHUTDOWN and exit status as qsd', async () => {
    const run = async (prog: string) => JSON.parse((await promisify(execFile)(SYSTEM_PYTHON, ['-c', SCRIPT, prog], { timeout: 60_000 })).stdout);
    const theirs = await run(requireTool('qemu-storage-daemon'));
    expect(theirs.caps).toEqual({ return: {} });
    expect(await run(BLOCKD)).toEqual(theirs);
  }, 90_000);
});
