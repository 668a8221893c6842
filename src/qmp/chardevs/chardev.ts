/**
 * A character device as query-chardev, qom-list and the chardev commands see
 * it. In qsd a chardev added at run time has no frontend (only --monitor
 * attaches one), so nothing ever reads from or writes to it but the
 * ringbuf commands; blockd's are the same. The chardev of a monitor has a
 * frontend: it is busy (chardev-remove) and cannot be swapped
 * (chardev-change).
 */
import { closeSync } from 'node:fs';
import type { RingBuffer } from './ring-buffer.ts';

export interface Chardev {
  readonly id: string;
  /** Its QOM type: 'chardev-socket', 'chardev-ringbuf', ... */
  readonly qomType: string;
  /** query-chardev's filename, as qsd words it. */
  filename(): string;
  /** A monitor is attached (query-chardev's frontend-open). */
  readonly frontend: boolean;
  /** A socket chardev's QOM properties `connected` and `addr` (its SocketAddress: the one bound when listening). */
  socketProperties?(): { connected: boolean; addr: Record<string, unknown> } | undefined;
  /** The ring of a ringbuf or memory chardev. */
  readonly ring?: RingBuffer;
  /** Releases what it holds (sockets, listeners, files). Idempotent. */
  close(): Promise<void>;
}

/** A chardev that holds only open files (null, file, pipe, ringbuf: their log file and their own). */
export class FileChardev implements Chardev {
  readonly frontend = false;
  private closed = false;

  constructor(readonly id: string, readonly qomType: string, private readonly name: string, private readonly fds: number[], readonly ring?: RingBuffer) {}

  filename(): string { return this.name; }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      for (const fd of new Set(this.fds)) closeSync(fd);
    }
    return Promise.resolve();
  }
}
