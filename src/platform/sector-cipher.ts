/**
 * Typed access to the addon's disk-sector cipher (native/src/sector_cipher.c):
 * OpenSSL from the node binary, keyed once per request with only the IV reset
 * per sector, optionally on libuv's thread pool.
 */
import { native } from './native.ts';

/** An opaque handle owning a copy of the key (erased by wipe() or when collected). */
export type SectorCipherHandle = { readonly __sectorCipher: unique symbol };

/** IV generators in the addon's numbering. */
export const IVGEN = { plain: 0, plain64: 1, essiv: 2 } as const;

interface SectorCipherAddon {
  sectorCipherNew(cipher: string, key: Buffer, ivgen: number, essivCipher: string | null, essivKey: Buffer | null): SectorCipherHandle;
  sectorCrypt(h: SectorCipherHandle, buf: Buffer, sector: number, sectorSize: number, encrypt: boolean, ivStep: number, out?: Buffer): void;
  sectorCryptAsync(h: SectorCipherHandle, buf: Buffer, sector: number, sectorSize: number, encrypt: boolean, ivStep: number, out?: Buffer): Promise<void>;
  sectorCipherWipe(h: SectorCipherHandle): void;
}

const addon = (): SectorCipherAddon => native() as unknown as SectorCipherAddon;

export const sectorCipherNew = (cipher: string, key: Buffer, ivgen: number, essivCipher: string | null, essivKey: Buffer | null): SectorCipherHandle =>
  addon().sectorCipherNew(cipher, key, ivgen, essivCipher, essivKey);
/** In place, on the calling thread; the IV number of each sector is `ivStep` more than the last one's. */
/** In place, or into `out` (buf's length, not overlapping it) with buf left as it was. */
export const sectorCrypt = (h: SectorCipherHandle, buf: Buffer, sector: number, sectorSize: number, encrypt: boolean, ivStep = 1, out?: Buffer): void =>
  out ? addon().sectorCrypt(h, buf, sector, sectorSize, encrypt, ivStep, out) : addon().sectorCrypt(h, buf, sector, sectorSize, encrypt, ivStep);
/** In place, on the thread pool: `buf` must not be touched until the promise settles. */
export const sectorCryptAsync = (h: SectorCipherHandle, buf: Buffer, sector: number, sectorSize: number, encrypt: boolean, ivStep = 1, out?: Buffer): Promise<void> =>
  out ? addon().sectorCryptAsync(h, buf, sector, sectorSize, encrypt, ivStep, out) : addon().sectorCryptAsync(h, buf, sector, sectorSize, encrypt, ivStep);
export const sectorCipherWipe = (h: SectorCipherHandle): void => addon().sectorCipherWipe(h);
