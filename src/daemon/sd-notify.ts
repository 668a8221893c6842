/**
 * sd_notify(3): readiness and stopping notices for Type=notify services. The
 * notify socket is an AF_UNIX datagram socket, which node:net cannot send to,
 * so the project's native addon does the sendto(). Without NOTIFY_SOCKET this
 * is a no-op.
 */
import { native } from '../platform/native.ts';

export function sdNotify(state: string, env: NodeJS.ProcessEnv = process.env): void {
  const path = env.NOTIFY_SOCKET;
  if (!path) return;
  // An abstract socket is written "@name" in the environment and "\0name" in the address.
  native().sdNotify(path.startsWith('@') ? `\0${path.slice(1)}` : path, state);
}
