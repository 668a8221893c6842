/**
 * User-creatable objects (--object, object-add, object-del): what qsd calls
 * QOM objects. blockd has two kinds:
 *
 * - secret: a password or key (data=, file=, format=raw|base64, optionally
 *   AES-256-CBC encrypted with another secret: keyid= and iv=), looked up by
 *   id by the drivers that need one (LUKS).
 * - iothread: accepted and kept, but a no-op: blockd runs every node in its
 *   one event loop (file I/O already goes to libuv's thread pool), so there
 *   is nothing to pin to a thread. Exports' iothread= options name one.
 *
 * Other QEMU types (throttle-group, tls-creds-*, authz-*, memory backends)
 * are not part of the schema, so object-add refuses them as qsd refuses an
 * unknown type.
 */
import { readFileSync } from 'node:fs';
import { createDecipheriv } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import { VALID_ID } from '../blockdev/graph.ts';
import { errorText } from '../platform/native.ts';
import { enm, obj, opt, req, type ObjectType } from '../qapi/types.ts';

export const QCryptoSecretFormat = enm('QCryptoSecretFormat', ['raw', 'base64'], 'The data format that the secret is provided in');

const IothreadProperties = obj('IothreadProperties', [
  opt('aio-max-batch', 'int', 'maximum number of requests in a batch for the AIO engine (ignored: blockd has no iothreads)'),
  opt('thread-pool-min', 'int', 'minimum number of threads in the thread pool (ignored)'),
  opt('thread-pool-max', 'int', 'maximum number of threads in the thread pool (ignored)'),
  opt('poll-max-ns', 'int', 'the maximum number of nanoseconds to busy wait for events (ignored)'),
  opt('poll-grow', 'int', 'the multiplier used to increase the polling time (ignored)'),
  opt('poll-shrink', 'int', 'the divisor used to decrease the polling time (ignored)'),
]);

const SecretProperties = obj('SecretProperties', [
  opt('loaded', 'bool', 'if true, the secret is loaded immediately when applying this option (deprecated; always true)'),
  opt('format', QCryptoSecretFormat, 'the data format that the secret is provided in (default: raw)'),
  opt('keyid', 'str', 'the name of another secret that should be used to decrypt the provided data'),
  opt('iv', 'str', 'the random initialization vector used for encryption of this particular secret (base64)'),
  opt('data', 'str', 'the associated with the object'),
  opt('file', 'str', 'the filename to load the data associated with the object from'),
]);

export const ObjectTypeEnum = enm('ObjectType', ['iothread', 'secret']);

/** object-add's arguments (and --object's): a flat union on qom-type. */
export const ObjectOptions: ObjectType = obj('ObjectOptions', [
  req('qom-type', ObjectTypeEnum, 'the class name for the object to be created'),
  req('id', 'str', 'the name of the new object'),
], { union: { discriminator: 'qom-type', variants: { iothread: IothreadProperties, secret: SecretProperties } }, doc: 'Describes the options of a user creatable QOM object.' });

interface Entry { type: string; props: Record<string, unknown>; secret?: Buffer; users: number }

export class ObjectRegistry {
  private readonly objects = new Map<string, Entry>();

  /** Creates an object from validated ObjectOptions. */
  add(options: Record<string, unknown>): void {
    const type = options['qom-type'] as string;
    const id = options.id as string;
    if (!VALID_ID.test(id)) throw new BlockError('EINVAL', "Parameter 'id' expects an identifier");
    if (this.objects.has(id)) throw new BlockError('EINVAL', `attempt to add duplicate property '${id}' to object (type 'container')`);
    const entry: Entry = { type, props: options, users: 0 };
    if (type === 'secret') entry.secret = this.loadSecret(options);
    this.objects.set(id, entry);
  }

  del(id: string): void {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `object '${id}' not found`);
    if (e.users > 0) throw new BlockError('EBUSY', `object '${id}' is in use, can not be deleted`);
    this.objects.delete(id);
  }

  has(id: string): boolean { return this.objects.has(id); }

  type(id: string): string | undefined { return this.objects.get(id)?.type; }

  /** The bytes of secret `id` (QEMU's qcrypto_secret_lookup). */
  secret(id: string): Buffer {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `No secret with id '${id}'`);
    if (!e.secret) throw new BlockError('EINVAL', `Object '${id}' is not a secret object`);
    return Buffer.from(e.secret);
  }

  /** Marks an object as used (object-del refuses it) until the returned function is called. */
  use(id: string): () => void {
    const e = this.objects.get(id);
    if (!e) throw new BlockError('ENOENT', `object '${id}' not found`);
    e.users++;
    let released = false;
    return () => { if (!released) { released = true; e.users--; } };
  }

  private loadSecret(o: Record<string, unknown>): Buffer {
    const data = o.data as string | undefined;
    const file = o.file as string | undefined;
    if (data !== undefined && file !== undefined) throw new BlockError('EINVAL', "'file' and 'data' are mutually exclusive");
    if (data === undefined && file === undefined) throw new BlockError('EINVAL', "Either 'file' or 'data' must be provided");
    let input: Buffer;
    if (file !== undefined) {
      try {
        input = readFileSync(file);
      } catch (e) {
        throw new BlockError('EINVAL', `Unable to read ${file}: Failed to open file \u201C${file}\u201D: ${errorText(e)}`);
      }
    } else {
      input = Buffer.from(data!, 'utf8');
    }
    const base64 = o.format === 'base64';
    if (o.keyid !== undefined) {
      const key = this.secret(o.keyid as string);
      if (key.length !== 32) throw new BlockError('EINVAL', `Key secret length ${key.length} must be 32 bytes`);
      if (o.iv === undefined) throw new BlockError('EINVAL', 'IV is required to decrypt secret');
      const iv = decodeBase64(o.iv as string);
      if (iv.length !== 16) throw new BlockError('EINVAL', `IV is ${iv.length} bytes but must be 16 bytes`);
      const cipher = base64 ? decodeBase64(input.toString('latin1')) : input;
      try {
        const d = createDecipheriv('aes-256-cbc', key, iv);
        return Buffer.concat([d.update(cipher), d.final()]);
      } catch {
        throw new BlockError('EINVAL', 'Incorrect number of padding bytes');
      }
    }
    return base64 ? decodeBase64(input.toString('latin1')) : input;
  }
}

/** Strict base64 as glib decodes it for QEMU: anything but the alphabet, padding and whitespace is refused. */
function decodeBase64(s: string): Buffer {
  const t = s.replace(/[\s]/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t) || t.length % 4 === 1) throw new BlockError('EINVAL', 'Base64 data contains invalid characters');
  return Buffer.from(t, 'base64');
}
