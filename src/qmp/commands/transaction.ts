/**
 * transaction (qapi/transaction.json, QEMU 7.2 blockdev.c): several actions,
 * all or none. Each action is prepared in order; if one fails, those already
 * prepared are aborted in reverse order and its error is the reply;
 * otherwise each is committed in order. Then every prepared action is
 * cleaned up.
 *
 * The actions are the commands of the table that have an `action` (their
 * prepare step), plus `abort`; each takes its command's own argument type,
 * wrapped as QAPI's `{ type, data }` union branch. So validation,
 * query-qmp-schema and help follow the command table.
 *
 * properties.completion-mode 'grouped' puts the backup jobs the actions
 * create into one job transaction: they finalise together, and one failing
 * or cancelled cancels the others. Bitmap and snapshot actions refuse it
 * (they create no jobs), as in QEMU.
 *
 * Unlike QEMU, the actions are not prepared under one drain of everything:
 * each takes its own point in time, in order. A bitmap cleared before a
 * backup in the same transaction may so also record a write that lands
 * between the two (the backup copies it as well), never miss one.
 */
import { JobTxn } from '../../blockdev/jobs/txn.ts';
import { arr, enm, obj, opt, req, type ObjectType } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import { argsType, type ActionContext, type CommandDef, type CompletionMode, type PreparedAction } from '../command.ts';
import type { BlockGraph } from '../../blockdev/graph.ts';

/** QAPI's TransactionActionKind: the actions and their order in the schema. */
const ACTION_KINDS = [
  'abort', 'block-dirty-bitmap-add', 'block-dirty-bitmap-remove', 'block-dirty-bitmap-clear',
  'block-dirty-bitmap-enable', 'block-dirty-bitmap-disable', 'block-dirty-bitmap-merge', 'blockdev-backup',
  'blockdev-snapshot', 'blockdev-snapshot-internal-sync', 'blockdev-snapshot-sync', 'drive-backup',
] as const;

const Abort = obj('Abort', [], { doc: 'This action can be used to test transaction failure.' });

/** The `abort` action: always fails, so the transaction is rolled back. */
function abortAction(): Promise<PreparedAction> {
  throw genericError('Transaction aborted using Abort action');
}

const ActionCompletionMode = enm('ActionCompletionMode', ['individual', 'grouped'],
  'An enumeration of Transactional completion modes.');
const TransactionProperties = obj('TransactionProperties', [
  opt('completion-mode', ActionCompletionMode, 'Controls how jobs launched asynchronously by Actions will complete or fail as a group. See ActionCompletionMode for details.'),
], { doc: 'Optional arguments to modify the behavior of a Transaction.' });

/** The `transaction` command over the action commands of `commands` (the rest of the table). */
export function transactionCommand(commands: readonly CommandDef[]): CommandDef {
  const byName = new Map<string, CommandDef>();
  for (const c of commands) if (c.action) byName.set(c.name, c);
  const missing = ACTION_KINDS.filter((k) => k !== 'abort' && !byName.has(k));
  const extra = [...byName.keys()].filter((k) => !(ACTION_KINDS as readonly string[]).includes(k));
  if (missing.length || extra.length) {
    throw new Error(`assertion failed: transaction actions and the command table differ (missing: ${missing.join(', ')}; not in TransactionActionKind: ${extra.join(', ')})`);
  }

  // One wrapper per argument type: actions sharing a type (remove/clear/enable/disable) share it, as in QEMU.
  const wrappers = new Map<ObjectType, ObjectType>();
  const wrap = (data: ObjectType): ObjectType => {
    let w = wrappers.get(data);
    if (!w) {
      w = obj(`${data.name}Wrapper`, [req('data', data)]);
      wrappers.set(data, w);
    }
    return w;
  };
  const actionArgs = (kind: string, graph: BlockGraph): ObjectType => (kind === 'abort' ? Abort : argsType(byName.get(kind)!, graph));

  const argTypes = ({ graph }: { graph: BlockGraph }): ObjectType => {
    const TransactionActionKind = enm('TransactionActionKind', [...ACTION_KINDS]);
    TransactionActionKind.valueFeatures = Object.fromEntries(ACTION_KINDS.filter((k) => byName.get(k)?.features?.includes('deprecated')).map((k) => [k, ['deprecated']]));
    const TransactionAction = obj('TransactionAction', [req('type', TransactionActionKind, 'the operation to be performed')], {
      union: { discriminator: 'type', variants: Object.fromEntries(ACTION_KINDS.map((k) => [k, wrap(actionArgs(k, graph))])) },
      doc: 'A discriminated record of operations that can be performed with transaction.',
    });
    return obj('q_obj_transaction-arg', [
      req('actions', arr(TransactionAction), 'List of TransactionAction; information needed for the respective operations.'),
      opt('properties', TransactionProperties, 'structure of additional options to control the execution of the transaction.'),
    ]);
  };

  return {
    name: 'transaction',
    args: argTypes,
    doc: 'Executes a number of transactionable QMP commands atomically. If any operation fails, then the entire set of actions will be abandoned and the appropriate error returned.',
    async handler(a: { actions: { type: string; data: Record<string, unknown> }[]; properties?: { 'completion-mode'?: CompletionMode } }, ctx) {
      const completionMode = a.properties?.['completion-mode'] ?? 'individual';
      const actx: ActionContext = { ...ctx, completionMode, jobTxn: completionMode === 'grouped' ? new JobTxn() : undefined };
      const prepared: PreparedAction[] = [];
      let failure: unknown;
      for (const act of a.actions) {
        try {
          prepared.push(await (act.type === 'abort' ? abortAction() : byName.get(act.type)!.action!(act.data, actx)));
        } catch (e) {
          failure = e;
          break;
        }
      }
      if (failure === undefined) {
        for (const p of prepared) await p.commit?.();
      } else {
        for (const p of [...prepared].reverse()) await p.abort?.();
      }
      for (const p of prepared) await p.clean?.();
      if (failure !== undefined) throw failure;
    },
  };
}
