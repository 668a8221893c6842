/**
 * glibc's strerror() texts, which QEMU appends to its messages ("Could not
 * create '/x': No such file or directory"). node:fs errors carry only libuv's
 * lower-case variants, so the messages users see are rebuilt from the code.
 */
const MESSAGES: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  ENFILE: 'Too many open files in system',
  EMFILE: 'Too many open files',
  ETXTBSY: 'Text file busy',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  ENAMETOOLONG: 'File name too long',
  ENOSYS: 'Function not implemented',
  ELOOP: 'Too many levels of symbolic links',
  EOPNOTSUPP: 'Operation not supported',
  ENOTSUP: 'Operation not supported',
  EDQUOT: 'Disk quota exceeded',
  ECANCELED: 'Operation canceled',
  EOVERFLOW: 'Value too large for defined data type',
};

/** The strerror() text for an error code ('ENOENT') or an error carrying one; falls back to the error's own message. */
export function strerror(err: unknown): string {
  const code = typeof err === 'string' ? err : (err as NodeJS.ErrnoException | undefined)?.code;
  if (code && MESSAGES[code]) return MESSAGES[code];
  if (err instanceof Error) return err.message;
  return String(err);
}
