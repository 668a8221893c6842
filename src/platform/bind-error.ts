/**
 * QEMU's text for a listening socket that could not be bound
 * (socket_listen's "Failed to bind socket[ to PATH]: <strerror>"), shared by
 * the NBD server and the QMP monitor sockets.
 */
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { errorText } from './native.ts';

export function bindErrorText(e: unknown, unixPath?: string): string {
  if (unixPath === undefined) return `Failed to bind socket: ${errorText(e)}`;
  // libuv reports EACCES for a path whose directory does not exist; QEMU's bind(2) says ENOENT.
  const text = existsSync(dirname(unixPath)) ? errorText(e) : 'No such file or directory';
  return `Failed to bind socket to ${unixPath}: ${text}`;
}
