/** The internal snapshot table (read only): parsed and validated as QEMU does on open. */
import { BlockError } from '../../../util/errors.ts';
import { Limit } from './header.ts';

export interface Qcow2Snapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  vmStateSize: number;
  /** Virtual disk size when the snapshot was taken (from the extra data), if recorded. */
  diskSize?: number;
  icount?: number;
  extraData: Buffer;
}

const MAX_EXTRA = 1024;
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

/** Parses `count` entries from the table bytes (reads at most what the entries need). */
export function parseSnapshotTable(buf: Buffer, count: number, clusterSize: number): { snapshots: Qcow2Snapshot[]; size: number } {
  const out: Qcow2Snapshot[] = [];
  let pos = 0;
  const need = (n: number) => {
    if (pos + n > buf.length) throw new BlockError('EINVAL', 'Snapshot table too large');
  };
  for (let i = 0; i < count; i++) {
    pos = Math.ceil(pos / 8) * 8;
    need(40);
    const l1TableOffset = Number(buf.readBigUInt64BE(pos));
    const l1Size = buf.readUInt32BE(pos + 8);
    const idLen = buf.readUInt16BE(pos + 12);
    const nameLen = buf.readUInt16BE(pos + 14);
    const dateSec = buf.readUInt32BE(pos + 16);
    const dateNsec = buf.readUInt32BE(pos + 20);
    const vmClockNsec = Number(buf.readBigUInt64BE(pos + 24));
    let vmStateSize = buf.readUInt32BE(pos + 32);
    const extraLen = buf.readUInt32BE(pos + 36);
    pos += 40;
    if (extraLen > MAX_EXTRA) throw new BlockError('EINVAL', 'Too much extra metadata in snapshot table entry');
    need(extraLen);
    const extraData = Buffer.from(buf.subarray(pos, pos + extraLen));
    let diskSize: number | undefined;
    let icount: number | undefined;
    if (extraLen >= 8) vmStateSize = Number(extraData.readBigUInt64BE(0));
    if (extraLen >= 16) diskSize = Number(extraData.readBigUInt64BE(8));
    if (extraLen >= 24) icount = Number(extraData.readBigInt64BE(16));
    pos += extraLen;
    need(idLen + nameLen);
    const id = buf.toString('utf8', pos, pos + idLen);
    pos += idLen;
    const name = buf.toString('utf8', pos, pos + nameLen);
    pos += nameLen;
    if (l1Size > Limit.MAX_L1_BYTES / 8) throw new BlockError('EINVAL', 'Snapshot L1 table too large');
    if (l1TableOffset % clusterSize !== 0) throw new BlockError('EINVAL', 'Snapshot L1 table offset invalid');
    out.push({ l1TableOffset, l1Size, id, name, dateSec, dateNsec, vmClockNsec, vmStateSize, diskSize, icount, extraData });
  }
  return { snapshots: out, size: Math.ceil(pos / 8) * 8 };
}

/** How much of the table to read for `count` entries: bounded by QEMU's limit. */
export function snapshotTableReadSize(count: number): number {
  return Math.min(MAX_TABLE_BYTES, count * (40 + MAX_EXTRA + 2 * 65535 + 8));
}

