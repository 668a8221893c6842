/**
 * Option requests, what a client sends during negotiation (doc/proto.md
 * "Fixed newstyle negotiation", "Option types"):
 *
 *   header (16):  u64 IHAVEOPT | u32 option | u32 data length   + data:
 *     EXPORT_NAME              the export name (the whole data)
 *     INFO, GO                 u32 name length, name, u16 number of info requests, u16 per request
 *     LIST/SET_META_CONTEXT    u32 name length, name, u32 number of queries, (u32 length, query) per query
 *     ABORT, LIST, STARTTLS, STRUCTURED_REPLY   no data
 *
 * Data is parsed with OptionDataReader, whose errors are the texts of
 * qemu's nbd_opt_read*() (a server answers them NBD_REP_ERR_INVALID).
 */
import { IHAVEOPT, MAX_PAYLOAD, MAX_STRING, optName } from './constants.ts';
import type { ByteQueue } from './byte-queue.ts';
import { EMPTY } from './bytes.ts';
import { NbdProtocolError } from './errors.ts';

export const OPTION_HEADER_SIZE = 16;

export interface OptionHeader {
  option: number;
  /** Bytes of data after the header. */
  length: number;
}

/** Thrown for a header whose magic is not IHAVEOPT. */
export class BadOptionMagic extends NbdProtocolError {}

/** The option header at `at`; throws BadOptionMagic unless it starts with IHAVEOPT. */
export function readOptionHeader(b: Buffer, at: number): OptionHeader {
  const magic = b.readBigUInt64BE(at);
  if (magic !== IHAVEOPT) throw new BadOptionMagic(`bad option magic 0x${magic.toString(16)}`);
  return { option: b.readUInt32BE(at + 8), length: b.readUInt32BE(at + 12) };
}

/** The next option header, consumed (its data stays queued); undefined until all 16 bytes are here. */
export function decodeOptionHeader(q: ByteQueue): OptionHeader | undefined {
  if (q.length < OPTION_HEADER_SIZE) return undefined;
  const h = readOptionHeader(q.peek(OPTION_HEADER_SIZE), q.at);
  q.discard(OPTION_HEADER_SIZE);
  return h;
}

/** A whole option (header and data) once all of it is here; data longer than `maxLength` throws at the header. */
export function decodeOptionRequest(q: ByteQueue, maxLength = MAX_PAYLOAD): { option: number; data: Buffer } | undefined {
  if (q.length < OPTION_HEADER_SIZE) return undefined;
  const h = readOptionHeader(q.peek(OPTION_HEADER_SIZE), q.at);
  if (h.length > maxLength) throw new NbdProtocolError(`option ${h.option} data length ${h.length} over the limit of ${maxLength}`);
  if (q.length < OPTION_HEADER_SIZE + h.length) return undefined;
  q.discard(OPTION_HEADER_SIZE);
  return { option: h.option, data: q.take(h.length) };
}

/** One option request: header and data in one buffer (negotiation is not the data path). */
export function buildOptionRequest(option: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

/** Reads an option's data field by field, with qemu's error texts. */
export class OptionDataReader {
  private pos = 0;
  constructor(private readonly data: Buffer, private readonly option: number) {}
  get left(): number { return this.data.length - this.pos; }
  private fail(message: string): never { throw new NbdProtocolError(message); }
  bytes(n: number): Buffer {
    if (n > this.left) this.fail(`Inconsistent lengths in option ${optName(this.option)}`);
    const b = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  u16(): number { return this.bytes(2).readUInt16BE(0); }
  u32(): number { return this.bytes(4).readUInt32BE(0); }
  /** A string with no NUL bytes. */
  str(n: number): string {
    const b = this.bytes(n);
    if (b.includes(0)) this.fail(`Unexpected embedded NUL in option ${optName(this.option)}`);
    return b.toString('utf8');
  }
  /** u32 length (at most 4096) and the name. */
  name(): string {
    const len = this.u32();
    if (len > MAX_STRING) this.fail(`Invalid name length: ${len}`);
    return this.str(len);
  }
  /** The end of the data: anything left is an error. */
  end(): void {
    if (this.left > 0) this.fail(`option '${optName(this.option)}' has unexpected length`);
  }
}

/** A u32-length-prefixed UTF-8 string. */
function lenString(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  body.copy(b, 4);
  return b;
}

// ---- EXPORT_NAME ----

export function buildExportNameData(name: string): Buffer {
  return Buffer.from(name, 'utf8');
}

export function parseExportNameData(data: Buffer): string {
  if (data.length > MAX_STRING) throw new NbdProtocolError(`export name of ${data.length} bytes over ${MAX_STRING}`);
  return data.toString('utf8');
}

// ---- INFO / GO ----

export interface InfoRequest {
  name: string;
  /** NBD_INFO_* types the client asks for (NBD_INFO_EXPORT is always sent). */
  requests: number[];
}

export function buildInfoRequestData(r: InfoRequest): Buffer {
  const tail = Buffer.alloc(2 + 2 * r.requests.length);
  tail.writeUInt16BE(r.requests.length, 0);
  r.requests.forEach((t, i) => tail.writeUInt16BE(t, 2 + 2 * i));
  return Buffer.concat([lenString(r.name), tail]);
}

/** INFO or GO data (`option` names it in error texts). */
export function parseInfoRequestData(data: Buffer, option: number): InfoRequest {
  const r = new OptionDataReader(data, option);
  const name = r.name();
  const requests: number[] = [];
  for (let n = r.u16(); n > 0; n--) requests.push(r.u16());
  r.end();
  return { name, requests };
}

// ---- LIST_META_CONTEXT / SET_META_CONTEXT ----

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export function buildMetaContextRequestData(r: MetaContextRequest): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(r.queries.length, 0);
  return Buffer.concat([lenString(r.exportName), count, ...r.queries.map(lenString)]);
}

/**
 * The queries after the export name (read first with `r.name()`: a server
 * looks the export up before reading on). Queries longer than `maxQuery`
 * bytes are skipped, as qemu does.
 */
export function readMetaQueries(r: OptionDataReader, maxQuery = MAX_STRING): string[] {
  const queries: string[] = [];
  for (let n = r.u32(); n > 0; n--) {
    const len = r.u32();
    if (len > maxQuery) { r.bytes(len); continue; }
    queries.push(r.str(len));
  }
  r.end();
  return queries;
}

export function parseMetaContextRequestData(data: Buffer, option: number): MetaContextRequest {
  const r = new OptionDataReader(data, option);
  const exportName = r.name();
  return { exportName, queries: readMetaQueries(r) };
}
