/**
 * The rules of a blkdebug node, from its config file and its options, in
 * QEMU's order (read_config: the file's sections, then the options; all
 * inject-error rules before all set-state rules) and with QEMU's checks and
 * texts. Two more refusals are blockd's own: an event blockd never raises
 * (the rule could never fire) and an errno blockd cannot carry to a client.
 */
import { readFileSync } from 'node:fs';
import { BlockError } from '../../../util/errors.ts';
import { BLKDEBUG_EVENTS, BLKDEBUG_IO_TYPES, RAISED_EVENTS, type BlkdebugEvent, type BlkdebugIoType } from '../../debug-events.ts';
import { BlkdebugRules } from './rules.ts';
import { ConfigFileError, parseConfig, type GroupSchema } from './config-file.ts';

const GROUPS: GroupSchema = {
  'inject-error': { event: 'string', state: 'number', iotype: 'string', errno: 'number', sector: 'number', once: 'bool', immediately: 'bool' },
  'set-state': { event: 'string', state: 'number', new_state: 'number' },
};

/** The errnos (Linux numbers) whose code blockd's errors carry to NBD, QMP and the jobs' policies. */
export const ERRNO_CODES: Readonly<Record<number, BlockError['code']>> = {
  1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 12: 'ENOMEM', 16: 'EBUSY', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN',
};

type Raw = Record<string, unknown>;

export function loadRules(options: Raw): BlkdebugRules {
  const fromFile = { inject: [] as Raw[], set: [] as Raw[] };
  const config = options.config as string | undefined;
  if (config !== undefined) {
    let text: string;
    try {
      text = readFileSync(config, 'latin1');
    } catch (e) {
      throw new BlockError('EINVAL', `Could not read blkdebug config file: ${strerror(e)}`);
    }
    try {
      for (const s of parseConfig(text, GROUPS)) (s.group === 'inject-error' ? fromFile.inject : fromFile.set).push(s.values);
    } catch (e) {
      if (e instanceof ConfigFileError) throw new BlockError('EINVAL', e.message);
      throw e;
    }
  }
  const rules = new BlkdebugRules();
  for (const r of [...fromFile.inject, ...((options['inject-error'] as Raw[] | undefined) ?? [])]) {
    const event = eventOf(r);
    const iotype = r.iotype as string | undefined;
    if (iotype !== undefined && !(BLKDEBUG_IO_TYPES as readonly string[]).includes(iotype)) {
      throw new BlockError('EINVAL', `invalid parameter value: ${iotype}`);
    }
    const errno = toInt(r.errno ?? 5);
    if (errno !== 0 && !ERRNO_CODES[errno]) {
      throw new BlockError('EINVAL', `blkdebug: errno ${errno} cannot be passed on by blockd (it can inject ${Object.keys(ERRNO_CODES).join(', ')})`);
    }
    const sector = r.sector === undefined ? -1 : Number(r.sector);
    rules.addInjectError({
      event, state: toInt(r.state ?? 0), iotype: iotype as BlkdebugIoType | undefined, errno,
      offset: sector === -1 ? undefined : sector * 512,
      once: r.once === true, immediately: r.immediately === true,
    });
  }
  for (const r of [...fromFile.set, ...((options['set-state'] as Raw[] | undefined) ?? [])]) {
    rules.addSetState({ event: eventOf(r), state: toInt(r.state ?? 0), newState: toInt(r.new_state ?? 0) });
  }
  return rules;
}

function eventOf(r: Raw): BlkdebugEvent {
  const name = r.event as string | undefined;
  if (name === undefined) throw new BlockError('EINVAL', 'Missing event name for rule');
  if (!(BLKDEBUG_EVENTS as readonly string[]).includes(name)) throw new BlockError('EINVAL', `invalid parameter value: ${name}`);
  const event = name as BlkdebugEvent;
  if (!RAISED_EVENTS.has(event)) {
    throw new BlockError('ENOTSUP', `blkdebug: blockd never raises the event '${event}' (it raises ${[...RAISED_EVENTS].join(', ')})`);
  }
  return event;
}

/** What C's int conversion of QEMU's number gives (state, errno and new_state are ints). */
function toInt(v: unknown): number {
  return Number(v) | 0;
}

function strerror(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'No such file or directory';
  if (code === 'EACCES') return 'Permission denied';
  if (code === 'EISDIR') return 'Is a directory';
  return (e as Error).message;
}
