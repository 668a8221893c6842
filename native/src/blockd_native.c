/*
 * blockd's native addon: the few Linux system calls node:fs does not offer.
 *
 *   fallocate(fd, mode, offset, length)  -> Promise<void>      (thread pool)
 *   seekData(fd, offset), seekHole(fd, offset)
 *                                        -> number (-1 for ENXIO), on the calling thread
 *   ofdLock(fd, 'r'|'w'|'u', start, len) -> void, throws EAGAIN/EACCES on conflict
 *   ofdTest(fd, 'r'|'w', start, len)     -> boolean: another open file
 *                                           description holds a conflicting lock
 *   blockDeviceSize(fd), blockDeviceSectorSize(fd) -> number  (BLKGETSIZE64, BLKSSZGET)
 *   blockDeviceReadOnly(fd) -> boolean  (BLKROGET)
 *   cdromDriveStatus(fd) -> number  (CDROM_DRIVE_STATUS, CDSL_CURRENT: the status, or -errno)
 *   allocAligned(size, alignment)        -> Buffer over posix_memalign'd memory
 *   isAligned(buf, alignment)            -> boolean: buf's memory starts on the boundary
 *   strerror(errno)                      -> glibc's text (node:fs only has libuv's)
 *   preadNowait(fd, buf, position), pwriteNowait(fd, buf, position)
 *                                        -> number of bytes, or -1 when the call would
 *                                           block (RWF_NOWAIT): page-cache hits are served
 *                                           inline, without a thread-pool round trip
 *   sendNowait(fd, buf)                  -> number of bytes sent (possibly short), or -1
 *                                           when nothing could be sent without blocking or
 *                                           the socket failed: a reply goes out in one
 *                                           syscall, without node:net's write machinery;
 *                                           the caller hands the rest (and any error) to it
 *   sdNotify(socketPath, state)          -> void: one sd_notify(3) datagram (node:net has
 *                                           no AF_UNIX SOCK_DGRAM)
 *   fuseOpenDevice/fuseMount/fuseUnmount/fuseReader/fuseReaderStop/fuseReply
 *                                        -> the FUSE export's device and mount (fuse_device.c)
 *   loopPollSet/loopPollStats      -> adaptive polling of the event loop (loop_poll.c)
 *   sectorCipherNew/sectorCrypt/sectorCryptAsync/sectorCipherWipe
 *                                        -> disk-sector encryption (sector_cipher.c)
 *
 * Errors are JS Errors whose message is strerror()'s text, with `code` (the
 * errno name), `errno` and `syscall` set, so callers can build QEMU-style
 * messages ("Could not open 'x': No such file or directory").
 *
 * Only node_api.h is used. Slow calls run as napi async work, i.e. on
 * libuv's thread pool, next to node:fs's own requests.
 */
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/cdrom.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_SAFE_INTEGER 9007199254740991.0

/* Returns from the calling function (with NULL) if a napi call failed; the
 * failed call has already left an exception pending or we throw one. */
#define CHECK(env, call)                                                  \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      throw_last_error(env);                                              \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static void throw_last_error(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
}

static const char *errno_name(int err) {
  const char *name = strerrorname_np(err);
  return name ? name : "EIO";
}

/* A JS Error for an errno value, without throwing it. */
static napi_value make_errno_error(napi_env env, int err, const char *syscall) {
  napi_value msg, code, error, num, sc;
  char buf[256];
  const char *text = strerror_r(err, buf, sizeof buf);
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok) return NULL;
  if (napi_create_error(env, code, msg, &error) != napi_ok) return NULL;
  /* Node's convention: errno is negative in node:fs errors; keep the positive
   * value as the C library reports it, the name in `code` is what callers use. */
  if (napi_create_int32(env, err, &num) != napi_ok) return NULL;
  if (napi_set_named_property(env, error, "errno", num) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc) != napi_ok) return NULL;
  if (napi_set_named_property(env, error, "syscall", sc) != napi_ok) return NULL;
  return error;
}

static void throw_errno(napi_env env, int err, const char *syscall) {
  napi_value e = make_errno_error(env, err, syscall);
  if (e) napi_throw(env, e);
  else throw_last_error(env);
}

/* For the other files of the addon (fuse_device.c). */
void blockd_throw_errno(napi_env env, int err, const char *syscall) { throw_errno(env, err, syscall); }
napi_value blockd_errno_error(napi_env env, int err, const char *syscall) { return make_errno_error(env, err, syscall); }

/* ---- argument helpers: each throws a TypeError/RangeError and returns false ---- */

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    throw_last_error(env);
    return false;
  }
  if (argc < want) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "Too few arguments");
    return false;
  }
  return true;
}

static bool get_i64(napi_env env, napi_value v, const char *name, int64_t min, int64_t *out) {
  napi_valuetype t;
  double d;
  char msg[128];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be a number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  napi_get_value_double(env, v, &d);
  if (d != d || d < (double)min || d > MAX_SAFE_INTEGER || d != (double)(int64_t)d) {
    snprintf(msg, sizeof msg, "The \"%s\" argument is out of range", name);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

static bool get_fd(napi_env env, napi_value v, int *fd) {
  int64_t x;
  if (!get_i64(env, v, "fd", 0, &x)) return false;
  if (x > INT_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "The \"fd\" argument is out of range");
    return false;
  }
  *fd = (int)x;
  return true;
}

/* ---- async work: fallocate ---- */

typedef enum { OP_FALLOCATE } op_kind;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  op_kind kind;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int64_t result;
  int err;
} async_req;

static const char *op_syscall(op_kind k) {
  (void)k;
  return "fallocate";
}

/* Runs on a thread-pool thread: no napi calls here. */
static void async_execute(napi_env env, void *data) {
  async_req *r = data;
  r->err = 0;
  switch (r->kind) {
    case OP_FALLOCATE:
      if (fallocate(r->fd, r->mode, (off_t)r->offset, (off_t)r->length) < 0) r->err = errno;
      r->result = 0;
      break;
  }
}

static void async_complete(napi_env env, napi_status status, void *data) {
  async_req *r = data;
  napi_value value = NULL;
  if (status != napi_ok) {
    napi_value msg;
    napi_create_string_utf8(env, "async work cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &value);
    napi_reject_deferred(env, r->deferred, value);
  } else if (r->err) {
    value = make_errno_error(env, r->err, op_syscall(r->kind));
    napi_reject_deferred(env, r->deferred, value);
  } else {
    napi_get_undefined(env, &value);
    napi_resolve_deferred(env, r->deferred, value);
  }
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value queue(napi_env env, async_req *r) {
  napi_value promise, name;
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok) goto fail;
  if (napi_create_string_utf8(env, op_syscall(r->kind), NAPI_AUTO_LENGTH, &name) != napi_ok) goto fail;
  if (napi_create_async_work(env, NULL, name, async_execute, async_complete, r, &r->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, r->work) != napi_ok) {
    napi_delete_async_work(env, r->work);
    goto fail;
  }
  return promise;
fail:
  free(r);
  throw_last_error(env);
  return NULL;
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  int64_t mode, offset, length;
  if (!get_args(env, info, 4, argv)) return NULL;
  if (!get_fd(env, argv[0], &fd) || !get_i64(env, argv[1], "mode", 0, &mode) ||
      !get_i64(env, argv[2], "offset", 0, &offset) || !get_i64(env, argv[3], "length", 0, &length)) {
    return NULL;
  }
  async_req *r = calloc(1, sizeof *r);
  if (!r) { throw_errno(env, ENOMEM, "calloc"); return NULL; }
  r->kind = OP_FALLOCATE;
  r->fd = fd;
  r->mode = (int)mode;
  r->offset = offset;
  r->length = length;
  return queue(env, r);
}

/* lseek(SEEK_DATA or SEEK_HOLE) on the calling thread, as QEMU's
 * file-posix does it in its coroutine: an extent-tree lookup on a local
 * file system, far cheaper than the thread-pool round trip around it.
 * Returns the offset, -1 for ENXIO; throws other errors. */
static napi_value seek_sync_common(napi_env env, napi_callback_info info, int whence) {
  napi_value argv[2], result;
  int fd;
  int64_t offset;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!get_fd(env, argv[0], &fd) || !get_i64(env, argv[1], "offset", 0, &offset)) return NULL;
  off_t o = lseek(fd, (off_t)offset, whence);
  if (o < 0 && errno != ENXIO) {
    throw_errno(env, errno, "lseek");
    return NULL;
  }
  CHECK(env, napi_create_int64(env, o < 0 ? -1 : (int64_t)o, &result));
  return result;
}

static napi_value js_seek_data(napi_env env, napi_callback_info info) { return seek_sync_common(env, info, SEEK_DATA); }
static napi_value js_seek_hole(napi_env env, napi_callback_info info) { return seek_sync_common(env, info, SEEK_HOLE); }

/* ---- OFD locks (sync: F_OFD_SETLK never blocks) ---- */

static bool get_lock_type(napi_env env, napi_value v, bool allow_unlock, short *type) {
  char s[4];
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, s, sizeof s, &n) != napi_ok || n != 1 ||
      (s[0] != 'r' && s[0] != 'w' && !(allow_unlock && s[0] == 'u'))) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          allow_unlock ? "The \"type\" argument must be 'r', 'w' or 'u'"
                                       : "The \"type\" argument must be 'r' or 'w'");
    return false;
  }
  *type = s[0] == 'r' ? F_RDLCK : s[0] == 'w' ? F_WRLCK : F_UNLCK;
  return true;
}

static bool get_lock_args(napi_env env, napi_callback_info info, bool allow_unlock, int *fd, struct flock *fl) {
  napi_value argv[4];
  int64_t start, len;
  short type;
  if (!get_args(env, info, 4, argv)) return false;
  if (!get_fd(env, argv[0], fd) || !get_lock_type(env, argv[1], allow_unlock, &type) ||
      !get_i64(env, argv[2], "start", 0, &start) || !get_i64(env, argv[3], "len", 0, &len)) {
    return false;
  }
  memset(fl, 0, sizeof *fl);
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = (off_t)start;
  fl->l_len = (off_t)len;
  fl->l_pid = 0; /* required to be 0 for OFD locks */
  return true;
}

static napi_value js_ofd_lock(napi_env env, napi_callback_info info) {
  int fd;
  struct flock fl;
  if (!get_lock_args(env, info, true, &fd, &fl)) return NULL;
  int ret;
  do ret = fcntl(fd, F_OFD_SETLK, &fl); while (ret < 0 && errno == EINTR);
  if (ret < 0) { throw_errno(env, errno, "fcntl"); return NULL; }
  return NULL; /* undefined */
}

static napi_value js_ofd_test(napi_env env, napi_callback_info info) {
  int fd;
  struct flock fl;
  napi_value result;
  if (!get_lock_args(env, info, false, &fd, &fl)) return NULL;
  int ret;
  do ret = fcntl(fd, F_OFD_GETLK, &fl); while (ret < 0 && errno == EINTR);
  if (ret < 0) { throw_errno(env, errno, "fcntl"); return NULL; }
  CHECK(env, napi_get_boolean(env, fl.l_type != F_UNLCK, &result));
  return result;
}

/* ---- host block devices ---- */

static napi_value js_block_device_size(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int fd;
  uint64_t size = 0;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) { throw_errno(env, errno, "ioctl"); return NULL; }
  CHECK(env, napi_create_double(env, (double)size, &result));
  return result;
}

static napi_value js_block_device_sector_size(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int fd, ssz = 0;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, BLKSSZGET, &ssz) < 0) { throw_errno(env, errno, "ioctl"); return NULL; }
  CHECK(env, napi_create_int32(env, ssz, &result));
  return result;
}

/* QEMU's check_hdev_writable: a block device set read-only (blockdev --setro, losetup -r) opens O_RDWR but refuses writes. */
static napi_value js_block_device_read_only(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int fd, ro = 0;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, BLKROGET, &ro) < 0) { throw_errno(env, errno, "ioctl"); return NULL; }
  CHECK(env, napi_get_boolean(env, ro != 0, &result));
  return result;
}

/* QEMU's cdrom_is_inserted asks the drive each time; a device that is no CD-ROM fails the ioctl. */
static napi_value js_cdrom_drive_status(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int fd;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  int ret = ioctl(fd, CDROM_DRIVE_STATUS, CDSL_CURRENT);
  CHECK(env, napi_create_int32(env, ret < 0 ? -errno : ret, &result));
  return result;
}

/* ---- aligned buffers ---- */

static void free_aligned(napi_env env, void *data, void *hint) {
  int64_t change;
  free(data);
  napi_adjust_external_memory(env, -(int64_t)(intptr_t)hint, &change);
}

static napi_value js_alloc_aligned(napi_env env, napi_callback_info info) {
  napi_value argv[2], result;
  int64_t size, alignment, change;
  void *p = NULL;
  if (!get_args(env, info, 2, argv) || !get_i64(env, argv[0], "size", 0, &size) ||
      !get_i64(env, argv[1], "alignment", 1, &alignment)) {
    return NULL;
  }
  if ((alignment & (alignment - 1)) != 0 || alignment > (1 << 20)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "The \"alignment\" argument must be a power of two up to 1 MiB");
    return NULL;
  }
  if (size > ((int64_t)1 << 31)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "The \"size\" argument is out of range");
    return NULL;
  }
  if (alignment < (int64_t)sizeof(void *)) alignment = sizeof(void *);
  size_t bytes = size > 0 ? (size_t)size : (size_t)alignment;
  int err = posix_memalign(&p, (size_t)alignment, bytes);
  if (err) { throw_errno(env, err, "posix_memalign"); return NULL; }
  /* Never hand out memory nobody filled. */
  memset(p, 0, bytes);
  if (napi_create_external_buffer(env, (size_t)size, p, free_aligned, (void *)(intptr_t)bytes, &result) != napi_ok) {
    free(p);
    throw_last_error(env);
    return NULL;
  }
  napi_adjust_external_memory(env, (int64_t)bytes, &change);
  return result;
}

static napi_value js_is_aligned(napi_env env, napi_callback_info info) {
  napi_value argv[2], result;
  void *data = NULL;
  size_t len = 0;
  int64_t alignment;
  bool is_buffer = false;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "The \"buf\" argument must be a Buffer");
    return NULL;
  }
  if (!get_i64(env, argv[1], "alignment", 1, &alignment)) return NULL;
  CHECK(env, napi_get_buffer_info(env, argv[0], &data, &len));
  CHECK(env, napi_get_boolean(env, ((uintptr_t)data % (uint64_t)alignment) == 0, &result));
  return result;
}

static napi_value js_strerror(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int64_t err;
  char buf[256];
  if (!get_args(env, info, 1, argv) || !get_i64(env, argv[0], "errno", -4096, &err)) return NULL;
  if (err < 0) err = -err; /* node:fs reports errno negated */
  CHECK(env, napi_create_string_utf8(env, strerror_r((int)err, buf, sizeof buf), NAPI_AUTO_LENGTH, &result));
  return result;
}

/* A read or write that only succeeds if it can complete without blocking
 * (RWF_NOWAIT): data already in the page cache, or a buffered write that
 * needs no allocation. Returns the bytes transferred (possibly short), or -1
 * when the kernel says it would block or does not support the flag; the
 * caller then goes through the thread pool as usual. Synchronous on purpose:
 * it never waits for a disk. */
static napi_value nowait_common(napi_env env, napi_callback_info info, bool write) {
  napi_value argv[3], result;
  int fd;
  int64_t pos;
  void *data;
  size_t len;
  if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  CHECK(env, napi_get_buffer_info(env, argv[1], &data, &len));
  if (!get_i64(env, argv[2], "position", 0, &pos)) return NULL;
  struct iovec iov = { .iov_base = data, .iov_len = len };
  ssize_t n;
  do {
    n = write ? pwritev2(fd, &iov, 1, pos, RWF_NOWAIT) : preadv2(fd, &iov, 1, pos, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) n = -1;
    else {
      throw_errno(env, errno, write ? "pwritev2" : "preadv2");
      return NULL;
    }
  }
  CHECK(env, napi_create_int64(env, (int64_t)n, &result));
  return result;
}

static napi_value js_pread_nowait(napi_env env, napi_callback_info info) { return nowait_common(env, info, false); }
static napi_value js_pwrite_nowait(napi_env env, napi_callback_info info) { return nowait_common(env, info, true); }

/* A non-blocking send on a connected stream socket that libuv also owns:
 * the caller uses it only while node:net has nothing queued, so bytes stay
 * in order. Any failure returns -1 and the caller falls back to
 * socket.write(), which then reports the error (EPIPE, ECONNRESET, ...) the
 * usual way. MSG_NOSIGNAL: a closed peer must not raise SIGPIPE. */
static napi_value js_send_nowait(napi_env env, napi_callback_info info) {
  napi_value argv[2], result;
  int fd;
  void *data;
  size_t len;
  if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  CHECK(env, napi_get_buffer_info(env, argv[1], &data, &len));
  ssize_t n;
  do n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  CHECK(env, napi_create_int64(env, n < 0 ? -1 : (int64_t)n, &result));
  return result;
}

/* fcntl(F_DUPFD_CLOEXEC): a second descriptor for the same open file
 * description. A socket moves between event loops (an iothread's and the
 * main one) as a duplicate: the old owner then closes its own descriptor
 * without ending the connection. */
static napi_value js_dup_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int fd;
  if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    throw_errno(env, errno, "dup");
    return NULL;
  }
  CHECK(env, napi_create_int32(env, copy, &result));
  return result;
}

/* sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET. The path
 * may start with a NUL byte (abstract namespace), so its length is explicit. */
static napi_value js_sd_notify(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct sockaddr_un addr;
  char state[4096];
  size_t path_len = 0, state_len = 0;
  if (!get_args(env, info, 2, argv)) return NULL;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  CHECK(env, napi_get_value_string_utf8(env, argv[0], addr.sun_path, sizeof addr.sun_path, &path_len));
  CHECK(env, napi_get_value_string_utf8(env, argv[1], state, sizeof state, &state_len));
  if (path_len == 0 || path_len >= sizeof addr.sun_path - 1) {
    throw_errno(env, EINVAL, "sd_notify");
    return NULL;
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket");
    return NULL;
  }
  socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
  ssize_t n = sendto(fd, state, state_len, MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
  int err = errno;
  close(fd);
  if (n < 0) {
    throw_errno(env, err, "sendto");
    return NULL;
  }
  return NULL;
}

/* ---- module ---- */

static bool set_int(napi_env env, napi_value exports, const char *name, int64_t v) {
  napi_value n;
  return napi_create_int64(env, v, &n) == napi_ok && napi_set_named_property(env, exports, name, n) == napi_ok;
}

bool sector_cipher_init(napi_env env, napi_value exports); /* sector_cipher.c */
bool zstd_compress_init(napi_env env, napi_value exports); /* zstd_compress.c */
bool fuse_device_init(napi_env env, napi_value exports);   /* fuse_device.c */
bool write_batch_init(napi_env env, napi_value exports);   /* write_batch.c */
bool loop_poll_init(napi_env env, napi_value exports);     /* loop_poll.c */
#ifdef BLOCKD_HAVE_RBD
bool rbd_init(napi_env env, napi_value exports);           /* rbd.c, where librbd's headers are */
#endif

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    { "fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ofdLock", NULL, js_ofd_lock, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ofdTest", NULL, js_ofd_test, NULL, NULL, NULL, napi_enumerable, NULL },
    { "blockDeviceSize", NULL, js_block_device_size, NULL, NULL, NULL, napi_enumerable, NULL },
    { "blockDeviceSectorSize", NULL, js_block_device_sector_size, NULL, NULL, NULL, napi_enumerable, NULL },
    { "blockDeviceReadOnly", NULL, js_block_device_read_only, NULL, NULL, NULL, napi_enumerable, NULL },
    { "cdromDriveStatus", NULL, js_cdrom_drive_status, NULL, NULL, NULL, napi_enumerable, NULL },
    { "allocAligned", NULL, js_alloc_aligned, NULL, NULL, NULL, napi_enumerable, NULL },
    { "isAligned", NULL, js_is_aligned, NULL, NULL, NULL, napi_enumerable, NULL },
    { "strerror", NULL, js_strerror, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sdNotify", NULL, js_sd_notify, NULL, NULL, NULL, napi_enumerable, NULL },
    { "preadNowait", NULL, js_pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL },
    { "pwriteNowait", NULL, js_pwrite_nowait, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendNowait", NULL, js_send_nowait, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dupFd", NULL, js_dup_fd, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  CHECK(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  if (!set_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE) ||
      !set_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE) ||
      !set_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE) ||
      !sector_cipher_init(env, exports) ||
      !zstd_compress_init(env, exports) ||
      !fuse_device_init(env, exports) ||
      !write_batch_init(env, exports) ||
      !loop_poll_init(env, exports)
#ifdef BLOCKD_HAVE_RBD
      || !rbd_init(env, exports)
#endif
      ) {
    throw_last_error(env);
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
