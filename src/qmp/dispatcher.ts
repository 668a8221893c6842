/**
 * The dispatcher: one parsed QMP input in, one response out.
 *
 *   envelope (QEMU's member checks, in QEMU's key order)
 *   → lookup (CommandNotFound; before negotiation only qmp_capabilities exists)
 *   → exec-oob check → argument validation (GenericError, the visitor's texts)
 *   → handler → { return, id } or { error, id }
 *
 * Commands of all clients run one at a time (as under QEMU's big lock): a
 * handler sees the graph as it left it and no other command interleaves.
 */
import { fromJson } from '../qapi/visit.ts';
import { JsonNumber } from '../qapi/keyval.ts';
import { qdictOrder } from './json-writer.ts';
import { QmpError, genericError, isUserError, toQmpError } from './errors.ts';
import { argsType, type CommandContext, type CommandTable, type QmpHost, type SessionState } from './command.ts';

export type QmpResponse = Record<string, unknown>;

const isDict = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof JsonNumber);

export class Dispatcher {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(readonly host: QmpHost, readonly table: CommandTable) {}

  /** Handles one input of a client; never throws. */
  async handle(input: unknown, session: SessionState): Promise<QmpResponse> {
    if (!isDict(input)) return { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } };
    const id = Object.hasOwn(input, 'id') ? input.id : undefined;
    const reply = (r: QmpResponse): QmpResponse => (id === undefined ? r : { ...r, id });
    try {
      const { name, oob, args } = checkEnvelope(input, session);
      const def = this.table.get(name);
      if (!session.negotiated && !def?.allowedBeforeNegotiation) {
        throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      }
      if (!def) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
      if (oob && !def.allowOob) throw genericError(`The command ${name} does not support OOB`);
      const value = await this.exclusive(async () => {
        const gate = this.host.commandGate;
        await gate?.before(name);
        try {
          return await this.run(name, args, session);
        } finally {
          gate?.after(name);
        }
      });
      return reply({ return: value });
    } catch (e) {
      if (!isUserError(e)) this.host.log.error({ err: e }, 'QMP command failed unexpectedly');
      return reply({ error: toQmpError(e) });
    }
  }

  /** Validates and runs a command by name (lookup already done or not needed); throws on failure. */
  async run(name: string, args: Record<string, unknown>, session: SessionState): Promise<unknown> {
    const def = this.table.get(name);
    if (!def) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
    const validated = fromJson(argsType(def, this.host.graph), args);
    const ctx: CommandContext = { graph: this.host.graph, jobs: this.host.jobs, host: this.host, session, table: this.table };
    this.host.log.debug({ command: name }, 'QMP command');
    const result = await def.handler(validated, ctx);
    return result === undefined ? {} : result;
  }

  /** Runs `fn` after every command started before it has finished. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}

/** QEMU's checks of the request object, member by member in its dictionary order. */
function checkEnvelope(input: Record<string, unknown>, session: SessionState): { name: string; oob: boolean; args: Record<string, unknown> } {
  for (const key of qdictOrder(Object.keys(input))) {
    const v = input[key];
    switch (key) {
      case 'execute':
        if (typeof v !== 'string') throw genericError("QMP input member 'execute' must be a string");
        break;
      case 'exec-oob':
        if (!session.oob) throw genericError("QMP input member 'exec-oob' is unexpected");
        if (typeof v !== 'string') throw genericError("QMP input member 'exec-oob' must be a string");
        break;
      case 'arguments':
        if (!isDict(v)) throw genericError("QMP input member 'arguments' must be an object");
        break;
      case 'id':
        break;
      default:
        throw genericError(`QMP input member '${key}' is unexpected`);
    }
  }
  const exec = input.execute as string | undefined;
  const oob = input['exec-oob'] as string | undefined;
  if (exec !== undefined && oob !== undefined) throw genericError("QMP input member 'execute' clashes with 'exec-oob'");
  if (exec === undefined && oob === undefined) throw genericError("QMP input lacks member 'execute'");
  return { name: (exec ?? oob)!, oob: oob !== undefined, args: (input.arguments as Record<string, unknown> | undefined) ?? {} };
}
