/**
 * NBD protocol constants (NetworkBlockDevice/nbd doc/proto.md) and the names
 * qemu-storage-daemon uses for them in its messages.
 */

// ---- handshake ----
export const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1');
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply. */
export const REPLY_MAGIC = 0x3e889045565a9n;

/** Handshake flags the server sends. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;

/** Client flags. */
export const CLIENT_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_NO_ZEROES = 1 << 1;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 2 ** 31 + 1,
  ERR_POLICY: 2 ** 31 + 2,
  ERR_INVALID: 2 ** 31 + 3,
  ERR_PLATFORM: 2 ** 31 + 4,
  ERR_TLS_REQD: 2 ** 31 + 5,
  ERR_UNKNOWN: 2 ** 31 + 6,
  ERR_SHUTDOWN: 2 ** 31 + 7,
  ERR_BLOCK_SIZE_REQD: 2 ** 31 + 8,
  ERR_TOO_BIG: 2 ** 31 + 9,
  ERR_EXT_HEADER_REQD: 2 ** 31 + 10,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

// ---- transmission flags (per export) ----
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  /** BLOCK_STATUS with a payload of context ids (extended headers only; blockd does not offer it). */
  BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

// ---- transmission ----
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** Extended headers (NBD_OPT_EXTENDED_HEADERS): 32-byte requests and reply chunks. */
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const EXTENDED_REPLY_MAGIC = 0x6e8a278c;

export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
/** An extended request: magic, flags, type, cookie, offset, u64 length. */
export const EXTENDED_REQUEST_SIZE = 32;
/** An extended reply chunk header: magic, flags, type, cookie, the request's offset, u64 length. */
export const EXTENDED_CHUNK_HEADER_SIZE = 32;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  /** Extended headers: `length` is the payload's length (WRITE always), not an effect length. */
  PAYLOAD_LEN: 1 << 5,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  /** Extended headers only: u32 context id, u32 count, then (u64 length, u64 flags) per extent. */
  BLOCK_STATUS_EXT: 6,
  ERROR: 2 ** 15 + 1,
  ERROR_OFFSET: 2 ** 15 + 2,
} as const;

/** base:allocation extent flags. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap extent flag. */
export const STATE_DIRTY = 1 << 0;

/** NBD error numbers (proto.md "Error values"). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

// ---- limits (qemu's values) ----
/** Largest payload (and largest READ/WRITE/CACHE length) accepted: NBD_MAX_BUFFER_SIZE. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Longest string (export name, description, context name): NBD_MAX_STRING_SIZE. */
export const MAX_STRING = 4096;
/** Most extents in one block-status chunk: 1 MiB of extent data, as qemu. */
export const MAX_EXTENTS = (1024 * 1024) / 8;
/** Preferred block size advertised (qemu hard-codes 4096). */
export const PREFERRED_BLOCK_SIZE = 4096;

/** qemu's nbd_opt_lookup() names, used in its option error messages. */
export function optName(opt: number): string {
  switch (opt) {
    case Opt.EXPORT_NAME: return 'export name';
    case Opt.ABORT: return 'abort';
    case Opt.LIST: return 'list';
    case Opt.STARTTLS: return 'starttls';
    case Opt.INFO: return 'info';
    case Opt.GO: return 'go';
    case Opt.STRUCTURED_REPLY: return 'structured reply';
    case Opt.LIST_META_CONTEXT: return 'list meta context';
    case Opt.SET_META_CONTEXT: return 'set meta context';
    case Opt.EXTENDED_HEADERS: return 'extended headers';
    default: return '<unknown>';
  }
}

/** qemu's nbd_cmd_lookup() names. */
export function cmdName(cmd: number): string {
  switch (cmd) {
    case Cmd.READ: return 'read';
    case Cmd.WRITE: return 'write';
    case Cmd.DISC: return 'disconnect';
    case Cmd.FLUSH: return 'flush';
    case Cmd.TRIM: return 'trim';
    case Cmd.CACHE: return 'cache';
    case Cmd.WRITE_ZEROES: return 'write zeroes';
    case Cmd.BLOCK_STATUS: return 'block status';
    default: return '<unknown>';
  }
}
