/**
 * systemd socket activation: LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES describe
 * listening sockets inherited from the service manager, starting at fd 3.
 * Names map to roles: "nbd" (or any name starting with "nbd") is an NBD
 * listener, "qmp" (or "qmp*", "monitor*") a QMP monitor.
 */
export const SD_LISTEN_FDS_START = 3;

export interface InheritedSocket { fd: number; name: string; role: 'nbd' | 'qmp' }

/** Reads and then clears the activation variables (children must not inherit them). */
export function takeInheritedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): InheritedSocket[] {
  const listenPid = env.LISTEN_PID;
  const count = Number(env.LISTEN_FDS ?? 0);
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_PID; delete env.LISTEN_FDS; delete env.LISTEN_FDNAMES;
  if (!listenPid || Number(listenPid) !== pid || !Number.isInteger(count) || count <= 0) return [];
  const out: InheritedSocket[] = [];
  for (let i = 0; i < count; i++) {
    const name = names[i] || (i === 0 ? 'nbd' : `fd${i}`);
    const role = /^(qmp|monitor)/.test(name) ? 'qmp' : /^nbd/.test(name) || count === 1 ? 'nbd' : undefined;
    if (!role) throw new Error(`inherited socket ${SD_LISTEN_FDS_START + i} has name '${name}': expected 'nbd' or 'qmp'`);
    out.push({ fd: SD_LISTEN_FDS_START + i, name, role });
  }
  return out;
}
