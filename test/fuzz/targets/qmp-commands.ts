/**
 * QMP command arguments through the dispatcher (src/qmp/dispatcher.ts and the
 * command handlers behind it), in a daemon of its own per input with a few
 * null-co/raw nodes.
 *
 * Input: a command (any but those that create files, listen, mount or quit:
 * those take host paths, and a random path is a write outside the sandbox),
 * arguments built from the command's schema members with values of any type
 * (node names that exist or not, numbers at boundaries, strings, nested JSON),
 * now and then an unknown member or a malformed envelope.
 *
 * Properties: every input gets one reply within 10 s; a reply is
 * {"return": ...} or {"error": {"class", "desc"}} with a QMP class and a
 * non-empty text; no handler fails in a way the dispatcher has to call
 * unexpected (an internal error: TypeError and the like).
 */
import fc from 'fast-check';
import pino from 'pino';
import { Daemon } from '../../../src/daemon/daemon.ts';
import type { FuzzTarget } from '../harness.ts';

/** Commands that take host paths (creating files, sockets, mounts) or end the daemon: not fuzzed here. */
const EXCLUDED = new Set(['quit', 'blockdev-create', 'nbd-server-start', 'block-export-add', 'drive-mirror', 'drive-backup',
  'blockdev-snapshot-sync', 'object-add', 'nbd-server-add', 'blockdev-add', 'x-blockdev-amend']);
const CLASSES = new Set(['GenericError', 'CommandNotFound', 'DeviceNotFound', 'DeviceNotActive', 'KVMMissingCap']);

/** Command name -> argument member names, from query-qmp-schema (read once). */
let members: Map<string, string[]> | undefined;

const BLOCKDEVS = [
  'null-co,node-name=n0,size=1048576', 'driver=raw,node-name=r0,file=n0', 'null-co,node-name=n1,size=1048576',
  'null-co,node-name=n2,size=4096,read-zeroes=on',
];

async function newDaemon(errors: string[]): Promise<Daemon> {
  const log = pino({ level: 'error' }, { write: (line: string) => { errors.push(line); } });
  const d = new Daemon(log);
  d.onQuit = () => undefined;
  await d.start({
    objects: [], chardevs: [], monitors: [], nbdServers: [], exports: [], commands: [], daemonize: false, logLevel: 'silent',
    blockdevs: BLOCKDEVS.map((value) => ({ option: 'blockdev', value })),
  });
  return d;
}

const valueArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('n0', 'r0', 'n1', 'n2', 'nope', '', 'job0', 'b0') },
  { weight: 2, arbitrary: fc.constantFrom(0, 1, -1, 512, 2 ** 31, 2 ** 53 - 1, -(2 ** 63), 1.5, true, false, null) },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 1, arbitrary: fc.array(fc.constantFrom('n0', 'r0', 'n1', { node: 'n0', name: 'b0' }), { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom('node', 'name', 'type', 'data', 'driver', 'node-name', 'file', 'size'), fc.constantFrom('n0', 'b0', 'r0', 'null-co', 1, true)) },
);

export interface QmpCommandInput {
  command: number;
  picks: { member: number; value: unknown }[];
  unknown: boolean;
  envelope: number;
}

export const qmpCommands: FuzzTarget<QmpCommandInput> = {
  name: 'qmp-commands',
  about: 'QMP commands with schema-shaped arguments of any type, unknown members, malformed envelopes',
  runs: 300,
  async setup() {
    const d = await newDaemon([]);
    try {
      const schema = (await d.qmp.dispatcher.handle({ execute: 'query-qmp-schema' }, { negotiated: true, oob: false })).return as Record<string, unknown>[];
      const byName = new Map(schema.map((e) => [e.name as string, e]));
      members = new Map();
      for (const e of schema) {
        if (e['meta-type'] !== 'command' || EXCLUDED.has(e.name as string)) continue;
        const arg = byName.get(e['arg-type'] as string);
        const names = new Set<string>(((arg?.members as { name: string }[] | undefined) ?? []).map((m) => m.name));
        for (const v of (arg?.variants as { type: string }[] | undefined) ?? []) {
          for (const m of (byName.get(v.type)?.members as { name: string }[] | undefined) ?? []) names.add(m.name);
        }
        members.set(e.name as string, [...names]);
      }
    } finally {
      await d.shutdown();
    }
  },
  arbitrary: () => fc.record({
    command: fc.nat(),
    picks: fc.array(fc.record({ member: fc.nat(), value: valueArb }), { maxLength: 6 }),
    unknown: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    envelope: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 4 }) }),
  }),
  async check(x) {
    if (!members) throw new Error('qmp-commands: setup() not run');
    const names = [...members.keys()].sort();
    const name = names[x.command % names.length]!;
    const ms = members.get(name)!;
    const args: Record<string, unknown> = {};
    for (const p of x.picks) if (ms.length) args[ms[p.member % ms.length]!] = p.value;
    if (x.unknown) args['no-such-member'] = 1;
    const input: unknown = [
      { execute: name, arguments: args },
      { execute: name, arguments: [args] },
      { execute: 42 },
      { execute: name, arguments: args, extra: true },
      [name],
    ][x.envelope];
    const errors: string[] = [];
    const d = await newDaemon(errors);
    try {
      let timer: NodeJS.Timeout | undefined;
      const reply = await Promise.race([
        d.qmp.dispatcher.handle(input, { negotiated: true, oob: false }),
        new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${name} gave no reply in 10 s`)), 10_000); }),
      ]).finally(() => clearTimeout(timer));
      const keys = Object.keys(reply).filter((k) => k !== 'id');
      if (keys.length !== 1 || (keys[0] !== 'return' && keys[0] !== 'error')) throw new Error(`malformed reply ${JSON.stringify(reply)}`);
      if (reply.error) {
        const e = reply.error as { class?: unknown; desc?: unknown };
        if (!CLASSES.has(e.class as string) || typeof e.desc !== 'string' || !e.desc) throw new Error(`bad error ${JSON.stringify(e)}`);
      }
      const internal = errors.filter((l) => l.includes('failed unexpectedly'));
      if (internal.length) throw new Error(`${name} ${JSON.stringify(args)}: internal error: ${internal[0]!.slice(0, 800)}`);
    } finally {
      await d.shutdown();
    }
  },
};
