/**
 * The chardev commands (qapi/char.json): chardev-add, chardev-change,
 * chardev-remove, chardev-send-break, query-chardev, query-chardev-backends,
 * ringbuf-write and ringbuf-read, with qsd 7.2's replies and texts. As in
 * qsd, a chardev added at run time has no frontend: a socket one listens
 * (or connects) and holds its peer, and that is all; only --monitor makes a
 * monitor. query-chardev-backends lists the backends blockd opens (qsd's,
 * less serial, parallel, pty, mux and stdio), in qsd's order.
 */
import { obj, opt, req } from '../../qapi/types.ts';
import { genericError } from '../errors.ts';
import type { CommandDef, QmpHost } from '../command.ts';
import { ChardevBackend, ChardevBackendInfoList, ChardevInfoList, ChardevReturn, DataFormat, type ChardevBackendValue } from '../chardevs/schema.ts';
import { BLOCKD_BACKENDS, QSD_BACKENDS, openChardev } from '../chardevs/open.ts';
import { fromQemuCString, toModifiedUtf8 } from '../chardevs/qemu-utf8.ts';
import { glibBase64Decode } from '../chardevs/glib-base64.ts';

const idArg = (name: string) => obj(name, [req('id', 'str', 'the chardev\'s ID, must exist')]);
const addArgs = (name: string) => obj(name, [
  req('id', 'str', 'the chardev\'s ID, must be unique'),
  req('backend', ChardevBackend, 'backend type and parameters'),
]);

async function add(host: QmpHost, id: string, backend: ChardevBackendValue): Promise<Record<string, never>> {
  const reg = host.chardevs();
  if (reg.has(id)) throw genericError(`Chardev with id '${id}' already exists`);
  try {
    const chr = await openChardev(id, backend, {
      objects: host.objects,
      report: (line) => process.stderr.write(`blockd: ${line}\n`),
    });
    // A chardev-add of the same id that finished first (a socket waiting for its client) wins, as the id check above.
    if (reg.has(id)) { await chr.close(); throw new Error(`Chardev with id '${id}' already exists`); }
    reg.add(chr);
  } catch (e) {
    throw genericError(`Failed to add chardev '${id}': ${(e as Error).message}`);
  }
  return {};
}

function ringOf(host: QmpHost, device: string) {
  const chr = host.chardevs().get(device);
  if (!chr) throw genericError(`Device '${device}' not found`);
  if (!chr.ring) throw genericError(`${device} is not a ringbuf device`);
  return chr.ring;
}

/** qbase64_decode's check before it decodes. */
const BASE64 = /^[A-Za-z0-9+/=]*$/;

export const chardevCommands: CommandDef[] = [
  {
    name: 'query-chardev',
    returns: ChardevInfoList,
    doc: 'Returns information about current character devices.',
    handler: (_a, ctx) => ctx.host.chardevs().list().map((c) => ({ label: c.id, filename: c.filename(), 'frontend-open': c.frontend })),
  },
  {
    name: 'query-chardev-backends',
    returns: ChardevBackendInfoList,
    doc: 'Returns information about character device backends (blockd: the ones it opens).',
    handler: () => QSD_BACKENDS.filter((b) => BLOCKD_BACKENDS.has(b)).map((name) => ({ name })),
  },
  {
    name: 'ringbuf-write',
    args: obj('q_obj_ringbuf-write-arg', [
      req('device', 'str', 'the ring buffer character device name'),
      req('data', 'str', 'data to write'),
      opt('format', DataFormat, 'data encoding (default \'utf8\')'),
    ]),
    doc: 'Write to a ring buffer character device.',
    handler({ device, data, format }: { device: string; data: string; format?: string }, ctx) {
      const ring = ringOf(ctx.host, device);
      if (format === 'base64') {
        if (!BASE64.test(data)) throw genericError('Base64 data contains invalid characters');
        ring.write(glibBase64Decode(data));
      } else {
        // The bytes QEMU holds for the string, up to a NUL (there is none: U+0000 is C0 80).
        ring.write(toModifiedUtf8(data));
      }
    },
  },
  {
    name: 'ringbuf-read',
    args: obj('q_obj_ringbuf-read-arg', [
      req('device', 'str', 'the ring buffer character device name'),
      req('size', 'int', 'how many bytes to read at most'),
      opt('format', DataFormat, 'data encoding (default \'utf8\')'),
    ]),
    returns: 'str',
    doc: 'Read from a ring buffer character device. In utf8 format the bytes are read as QEMU reads a C string: to the first NUL, invalid sequences as U+FFFD.',
    handler({ device, size, format }: { device: string; size: number; format?: string }, ctx) {
      const ring = ringOf(ctx.host, device);
      if (size <= 0) throw genericError('size must be greater than zero');
      const bytes = ring.read(size);
      return format === 'base64' ? bytes.toString('base64') : fromQemuCString(bytes);
    },
  },
  {
    name: 'chardev-add',
    args: addArgs('q_obj_chardev-add-arg'),
    returns: ChardevReturn,
    doc: 'Add a character device backend (blockd: null, ringbuf, memory, file, pipe, socket, udp; no frontend is attached).',
    handler: ({ id, backend }: { id: string; backend: ChardevBackendValue }, ctx) => add(ctx.host, id, backend),
  },
  {
    name: 'chardev-change',
    args: addArgs('q_obj_chardev-change-arg'),
    returns: ChardevReturn,
    doc: 'Change a character device backend. A monitor\'s chardev cannot be changed; any other is closed, then the new one is added (if that fails, the old one is gone, as in qsd).',
    async handler({ id, backend }: { id: string; backend: ChardevBackendValue }, ctx) {
      const reg = ctx.host.chardevs();
      const chr = reg.get(id);
      if (!chr) throw genericError(`Chardev '${id}' does not exist`);
      if (chr.frontend) throw genericError('Chardev user does not support chardev hotswap');
      await reg.remove(id);
      return add(ctx.host, id, backend);
    },
  },
  {
    name: 'chardev-remove',
    args: idArg('q_obj_chardev-remove-arg'),
    doc: 'Remove a character device backend.',
    async handler({ id }: { id: string }, ctx) {
      const reg = ctx.host.chardevs();
      const chr = reg.get(id);
      if (!chr) throw genericError(`Chardev '${id}' not found`);
      if (chr.frontend) throw genericError(`Chardev '${id}' is busy`);
      await reg.remove(id);
    },
  },
  {
    name: 'chardev-send-break',
    args: idArg('q_obj_chardev-send-break-arg'),
    doc: 'Send a break to a character device (its frontend hears it; a QMP monitor and a chardev without frontend ignore it, as in qsd).',
    handler({ id }: { id: string }, ctx) {
      if (!ctx.host.chardevs().has(id)) throw genericError(`Chardev '${id}' not found`);
    },
  },
];
