/**
 * Adding and erasing LUKS1 key slots of an open volume (QEMU's
 * qcrypto_block_luks_amend_options, for x-blockdev-amend), with its checks,
 * their order and its texts. Adding a slot unlocks the master key with the
 * current passphrase, stores it under the new one and rewrites the header;
 * erasing resets the slot in the header first, then overwrites its key
 * material with random bytes, 40 times, as QEMU does.
 */
import { randomBytes } from 'node:crypto';
import { BlockError } from '../util/errors.ts';
import type { CipherSpec } from './cipher-spec.ts';
import { KEY_SLOT_DISABLED, KEY_SLOT_ENABLED, LUKS_NUM_KEY_SLOTS, LUKS_SALT_LEN, LUKS_SECTOR_SIZE, serializeLuks1Header, type Luks1Header } from './luks1-header.ts';
import { findKey, loadKey, storeKey, type ReadAt, type WriteAt } from './luks1-keyslot.ts';
import { DEFAULT_ITER_TIME_MS } from './luks1-create.ts';
import { pbkdf2IterationsPerSecond } from './pbkdf2.ts';

const ERASE_ITERATIONS = 40;

/** QCryptoBlockAmendOptionsLUKS, the secrets already named by id. */
export interface Luks1AmendOptions {
  state: 'active' | 'inactive';
  'new-secret'?: string;
  'old-secret'?: string;
  keyslot?: number;
  'iter-time'?: number;
  secret?: string;
}

export interface Luks1AmendContext {
  header: Luks1Header;
  spec: CipherSpec;
  /** The key-secret the volume was opened with (the default `secret`). */
  openSecret: string;
  /** A passphrase by secret id (QEMU's texts when missing); the caller's buffer, erased here after use. */
  password(id: string): Buffer;
  read: ReadAt;
  write: WriteAt;
}

const invalid = (msg: string) => new BlockError('EINVAL', msg);
const active = (h: Luks1Header, i: number) => h.keySlots[i].active === KEY_SLOT_ENABLED;
const activeCount = (h: Luks1Header) => h.keySlots.filter((s) => s.active === KEY_SLOT_ENABLED).length;

function checkSlot(keyslot: number, fmt: 'u' | 'i'): void {
  // QEMU prints the index with %u when adding (so -1 shows as 4294967295) and %i when erasing.
  const shown = fmt === 'u' ? keyslot >>> 0 : keyslot;
  if (keyslot < 0 || keyslot >= LUKS_NUM_KEY_SLOTS) throw invalid(`Invalid keyslot ${shown} specified, must be between 0 and ${LUKS_NUM_KEY_SLOTS - 1}`);
}

export async function amendLuks1(c: Luks1AmendContext, o: Luks1AmendOptions, force: boolean): Promise<void> {
  if (o.state === 'active') await addKeyslot(c, o, force);
  else await eraseKeyslots(c, o, force);
}

async function addKeyslot(c: Luks1AmendContext, o: Luks1AmendOptions, force: boolean): Promise<void> {
  const h = c.header;
  if (o['new-secret'] === undefined) throw invalid("'new-secret' is required to activate a keyslot");
  if (o['old-secret'] !== undefined) throw invalid("'old-secret' must not be given when activating keyslots");
  let keyslot: number;
  if (o.keyslot !== undefined) {
    checkSlot(o.keyslot, 'u');
    keyslot = o.keyslot;
  } else {
    keyslot = h.keySlots.findIndex((s) => s.active !== KEY_SLOT_ENABLED);
    if (keyslot < 0) throw invalid("Can't add a keyslot - all keyslots are in use");
  }
  if (!force && active(h, keyslot)) throw invalid(`Refusing to overwrite active keyslot ${keyslot} - please erase it first`);
  const old = c.password(o.secret ?? c.openSecret);
  let masterKey: Buffer;
  try {
    masterKey = (await findKey(h, c.spec, old, c.read)).key;
  } finally {
    old.fill(0);
  }
  try {
    const pw = c.password(o['new-secret']);
    try {
      const rate = await pbkdf2IterationsPerSecond(c.spec.hashAlg, pw, randomBytes(LUKS_SALT_LEN), h.masterKeyLen);
      await storeKey(h, c.spec, keyslot, pw, masterKey, rate, o['iter-time'] ?? DEFAULT_ITER_TIME_MS, c.write);
    } finally {
      pw.fill(0);
    }
    await c.write(0, serializeLuks1Header(h));
  } finally {
    masterKey.fill(0);
  }
}

async function eraseKeyslots(c: Luks1AmendContext, o: Luks1AmendOptions, force: boolean): Promise<void> {
  const h = c.header;
  if (o['new-secret'] !== undefined) throw invalid("'new-secret' must not be given when erasing keyslots");
  if (o['iter-time'] !== undefined) throw invalid("'iter-time' must not be given when erasing keyslots");
  if (o.secret !== undefined) throw invalid("'secret' must not be given when erasing keyslots");
  const old = o['old-secret'] !== undefined ? c.password(o['old-secret']) : undefined;
  try {
    /** Whether slot i holds the old passphrase. */
    const holds = async (i: number) => {
      const key = await loadKey(h, c.spec, i, old!, c.read);
      key?.fill(0);
      return key !== null;
    };
    if (o.keyslot !== undefined) {
      const k = o.keyslot;
      checkSlot(k, 'i');
      if (old && !(await holds(k))) throw invalid(`Given keyslot ${k} doesn't contain the given old password for erase operation`);
      if (!force && !active(h, k)) throw invalid(`Given keyslot ${k} is already erased (inactive) `);
      if (!force && activeCount(h) === 1) {
        throw invalid(`Attempt to erase the only active keyslot ${k} which will erase all the data in the image irreversibly - refusing operation`);
      }
      await eraseKey(c, k);
    } else if (old) {
      const matching: number[] = [];
      for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) if (await holds(i)) matching.push(i);
      if (matching.length === 0) throw invalid('No keyslots match given (old) password for erase operation');
      if (!force && matching.length === activeCount(h)) {
        throw invalid('All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation');
      }
      for (const i of matching) await eraseKey(c, i);
    } else {
      throw invalid('To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given');
    }
  } finally {
    old?.fill(0);
  }
}

/** qcrypto_block_luks_erase_key: the header first (even if the overwrite then fails), then the material. */
async function eraseKey(c: Luks1AmendContext, i: number): Promise<void> {
  const slot = c.header.keySlots[i];
  slot.salt = Buffer.alloc(LUKS_SALT_LEN);
  slot.iterations = 0;
  slot.active = KEY_SLOT_DISABLED;
  await c.write(0, serializeLuks1Header(c.header));
  const len = c.header.masterKeyLen * slot.stripes;
  for (let n = 0; n < ERASE_ITERATIONS; n++) await c.write(slot.keyOffsetSector * LUKS_SECTOR_SIZE, randomBytes(len));
}
