/**
 * x-blockdev-amend for LUKS key slots, shared by the luks driver and qcow2's
 * encrypt.format=luks: QAPI's QCryptoBlockAmendOptionsLUKS, and the glue from
 * a node's open volume to src/crypto/luks1-amend.ts (secrets by id through
 * the driver context, header and key material read and written through the
 * node's file, in the volume's own offsets).
 */
import { enm, obj, opt, req, type ObjectType } from '../../../qapi/types.ts';
import { amendLuks1, type Luks1AmendOptions } from '../../../crypto/luks1-amend.ts';
import { passwordFromSecret } from '../../../crypto/luks1-open.ts';
import type { CipherSpec } from '../../../crypto/cipher-spec.ts';
import type { Luks1Header } from '../../../crypto/luks1-header.ts';
import type { ReadAt, WriteAt } from '../../../crypto/luks1-keyslot.ts';

export const QCRYPTO_LUKS_AMEND_MEMBERS = [
  req('state', enm('QCryptoBlockLUKSKeyslotState', ['active', 'inactive']), 'the desired state of the keyslots'),
  opt('new-secret', 'str', 'The ID of a QCryptoSecret object providing the password to be written into added active keyslots'),
  opt('old-secret', 'str', 'Optional (for deactivation only) If given will deactivate all keyslots that match password located in QCryptoSecret with this ID'),
  opt('keyslot', 'int', 'Optional. ID of the keyslot to activate/deactivate.'),
  opt('iter-time', 'int', 'Optional (for activation only) Number of milliseconds to spend in PBKDF passphrase processing for the newly activated keyslot. Currently defaults to 2000.'),
  opt('secret', 'str', 'Optional. The ID of a QCryptoSecret object providing the password to use to retrieve current master key. Defaults to the same secret that was used to open the image'),
];

/** QCryptoBlockAmendOptions: the `encrypt` member of qcow2's amend options. */
export const QCryptoBlockAmendOptions: ObjectType = obj('QCryptoBlockAmendOptions', [
  req('format', enm('QCryptoBlockFormat', ['qcow', 'luks']), 'the encryption format'),
], { union: { discriminator: 'format', variants: { luks: obj('QCryptoBlockAmendOptionsLUKS', QCRYPTO_LUKS_AMEND_MEMBERS) } } });

/** An open LUKS1 volume as amend needs it. */
export interface AmendableVolume {
  header: Luks1Header;
  spec: CipherSpec;
  /** The key-secret it was opened with. */
  openSecret: string;
  read: ReadAt;
  write: WriteAt;
}

export function amendVolume(v: AmendableVolume, objects: { secret(id: string): Buffer }, o: Luks1AmendOptions, force: boolean): Promise<void> {
  return amendLuks1({ ...v, password: (id) => passwordFromSecret(id, objects.secret(id)) }, o, force);
}
