/** Every fuzz target, in the order npm test and npm run fuzz run them. */
import type { FuzzTarget } from '../harness.ts';
import { nbdHandshake } from './nbd-handshake.ts';
import { nbdTransmission } from './nbd-transmission.ts';
import { qmpJson } from './qmp-json.ts';
import { qmpCommands } from './qmp-commands.ts';
import { keyval } from './keyval.ts';
import { qcow2Header } from './qcow2-header.ts';
import { qcow2Tables } from './qcow2-tables.ts';
import { luksHeader } from './luks-header.ts';
import { throttleLimits } from './throttle-limits.ts';

/** Targets whose check returns a promise (run with fc.asyncProperty). */
export const ASYNC_TARGETS = new Set(['qmp-commands', 'luks-header']);

export const TARGETS: FuzzTarget<never>[] = [
  nbdHandshake, nbdTransmission, qmpJson, qmpCommands, keyval, qcow2Header, qcow2Tables, luksHeader, throttleLimits,
] as unknown as FuzzTarget<never>[];
