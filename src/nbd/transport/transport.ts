/**
 * What an NBD connection reads from and writes to. The connection knows
 * nothing below this interface: the plain socket (plain.ts) is one
 * implementation; a TLS socket (after NBD_OPT_STARTTLS) will be another,
 * swapped in mid-negotiation (see NbdConnection's upgrade).
 */

/** What a transport tells its connection. */
export interface TransportEvents {
  /**
   * Bytes arrived. With `transientReads` the chunk is valid only during the
   * call (the transport reads into one reused buffer). Returning false stops
   * reading until resume() (reading may also be paused from inside the call).
   */
  data(chunk: Buffer): boolean;
  /** The peer half-closed: no more data will come. */
  end(): void;
  error(err: Error): void;
  /** The stream is closed both ways; no more events follow. */
  close(): void;
  /** Queued writes went out below the high-water mark. */
  drain(): void;
}

export interface Transport {
  /** Chunks passed to data() are only valid during the call (see TransportEvents.data). */
  readonly transientReads: boolean;
  /** Whether trySend() can ever send (a TLS transport has no fast path). */
  readonly fastPath: boolean;
  /** For logs: "address:port", or "unix". */
  readonly peer: string;
  /** Bytes written but not yet handed to the kernel. */
  readonly writableLength: number;
  /** False once the stream is destroyed or our side ended: writes are dropped. */
  readonly writable: boolean;
  readonly destroyed: boolean;

  /** Starts delivering events to `events` (reading stays as pause()/resume() left it). */
  attach(events: TransportEvents): void;
  /** Stops delivering events and stops reading, leaving the stream open (before an upgrade hands it on). */
  detach(): void;
  pause(): void;
  resume(): void;

  /** Queues `buf`; `done` runs once it is written (or dropped because the stream died). */
  write(buf: Buffer, done?: () => void): void;
  /** Holds writes back until uncork(), so that several leave in one writev. */
  cork(): void;
  uncork(): void;
  /**
   * Sends at once, without queuing, as much of `buf` as the kernel takes;
   * returns how many bytes that was (0 when it would block, or when the
   * transport has no fast path). Only valid with nothing queued
   * (writableLength 0, not corked): the caller writes the rest with write().
   */
  trySend(buf: Buffer): number;

  /**
   * Hands the connection on to another event loop: a duplicate of the
   * socket's descriptor, after which this transport is detached and closed
   * (the connection stays open through the duplicate). Only with nothing
   * queued (writableLength 0). Absent where the connection's state is more
   * than a descriptor (a TLS session).
   */
  moveOut?(): number;

  /** Ends our side once queued writes are out. */
  end(): void;
  /** Closes now; queued writes are dropped. */
  destroy(): void;
}
