/*
 * The FUSE export's system calls (src/fuse): blockd speaks the FUSE protocol
 * itself, in TypeScript; only what node cannot do is here.
 *
 *   fuseOpenDevice()                       -> fd of /dev/fuse (O_RDWR|O_CLOEXEC|O_NONBLOCK)
 *   fuseMount(source, target, fstype, flags, data) -> void (mount(2); throws its errno)
 *   fuseUnmount(target, flags)             -> void (umount2(2); throws its errno)
 *   fuseReader(fd, bufferSize, onRequests) -> handle: a uv_poll on the device; when
 *                                             it is readable, every request waiting is
 *                                             read (non-blocking) and onRequests(buffers)
 *                                             is called with them; onRequests(null, errno)
 *                                             once the device reports the end (ENODEV: the
 *                                             file system was unmounted) or fails
 *   fuseReaderActive(handle, active)       -> void: stops (false) or resumes (true) polling:
 *                                             backpressure, and the end; the fd stays open
 *   fuseSocketPair()                       -> [fd, fd]: an AF_UNIX stream pair (close-on-exec) for
 *                                             fusermount3's _FUSE_COMMFD
 *   fuseReceiveFd(sock)                    -> the /dev/fuse fd fusermount3 sent (SCM_RIGHTS), made
 *                                             O_NONBLOCK and close-on-exec
 *   fuseReply(fd, buffers)                 -> 0 or an errno: one writev(2) of a reply (the
 *                                             kernel takes a reply whole or not at all;
 *                                             ENOENT means the request was interrupted)
 *
 * The device's reads are driven on the event loop by a uv_poll rather than a
 * thread: /dev/fuse supports O_NONBLOCK and poll(2), and each read returns one
 * whole request, so a read never blocks and no request is held by a thread.
 */
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Helpers of blockd_native.c. */
void blockd_throw_errno(napi_env env, int err, const char *syscall);
napi_value blockd_errno_error(napi_env env, int err, const char *syscall);

#define TRY(env, call)                                                    \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      bool pending_ = false;                                              \
      napi_is_exception_pending(env, &pending_);                          \
      if (!pending_) napi_throw_error(env, NULL, "N-API call failed");    \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static bool arg_string(napi_env env, napi_value v, char *out, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, out, size, &len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a string");
    return false;
  }
  if (len + 1 >= size) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "string too long");
    return false;
  }
  return true;
}

static bool arg_int(napi_env env, napi_value v, int64_t *out) {
  if (napi_get_value_int64(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a number");
    return false;
  }
  return true;
}

static napi_value js_open_device(napi_env env, napi_callback_info info) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    blockd_throw_errno(env, errno, "open");
    return NULL;
  }
  napi_value r;
  TRY(env, napi_create_int32(env, fd, &r));
  return r;
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "Too few arguments");
    return NULL;
  }
  char source[256], target[4096], fstype[64], data[1024];
  int64_t flags;
  if (!arg_string(env, argv[0], source, sizeof source) || !arg_string(env, argv[1], target, sizeof target) ||
      !arg_string(env, argv[2], fstype, sizeof fstype) || !arg_int(env, argv[3], &flags) ||
      !arg_string(env, argv[4], data, sizeof data)) {
    return NULL;
  }
  if (mount(source, target, fstype, (unsigned long)flags, data) < 0) {
    blockd_throw_errno(env, errno, "mount");
    return NULL;
  }
  return NULL;
}

static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "Too few arguments");
    return NULL;
  }
  char target[4096];
  int64_t flags;
  if (!arg_string(env, argv[0], target, sizeof target) || !arg_int(env, argv[1], &flags)) return NULL;
  if (umount2(target, (int)flags) < 0) {
    blockd_throw_errno(env, errno, "umount2");
    return NULL;
  }
  return NULL;
}

/* ---- the reader ---- */

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  int fd;
  size_t size;
  char *buf;
  bool polling;
  bool ended;
} fuse_reader;

static void reader_closed(uv_handle_t *h) {
  fuse_reader *r = (fuse_reader *)h->data;
  free(r->buf);
  free(r);
}

static void reader_release(fuse_reader *r) {
  if (r->callback) napi_delete_reference(r->env, r->callback);
  r->callback = NULL;
  if (r->async) napi_async_destroy(r->env, r->async);
  r->async = NULL;
}

static void reader_stop(fuse_reader *r) {
  if (!r->polling) return;
  r->polling = false;
  uv_poll_stop(&r->poll);
}

/* Calls onRequests(list) or onRequests(null, error) inside a callback scope (microtasks run after). */
static void reader_call(fuse_reader *r, napi_value list, int err) {
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[2], result;
  if (r->callback && napi_get_reference_value(env, r->callback, &cb) == napi_ok && cb) {
    napi_get_global(env, &recv); /* make_callback wants an object */
    if (list) {
      argv[0] = list;
      napi_get_undefined(env, &argv[1]);
    } else {
      napi_get_null(env, &argv[0]);
      argv[1] = blockd_errno_error(env, err, "read");
    }
    napi_make_callback(env, r->async, recv, cb, 2, argv, &result);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ex;
      napi_get_and_clear_last_exception(env, &ex);
      napi_fatal_exception(env, ex);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void reader_ready(uv_poll_t *h, int status, int events) {
  fuse_reader *r = (fuse_reader *)h->data;
  if (!r->polling) return;
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value list = NULL;
  uint32_t count = 0;
  int end = 0;
  if (status < 0) end = EIO;
  /* Bounded per wake-up so other work on the loop gets its turn. */
  while (!end && count < 64) {
    ssize_t n = read(r->fd, r->buf, r->size);
    if (n < 0) {
      if (errno == EINTR) continue;
      /* ENOENT: the request was interrupted before we read it; read the next. */
      if (errno == ENOENT) continue;
      if (errno == EAGAIN) break;
      end = errno;
      break;
    }
    if (n == 0) {
      end = ENODEV;
      break;
    }
    if (!list && napi_create_array(env, &list) != napi_ok) break;
    napi_value b;
    void *data;
    if (napi_create_buffer_copy(env, (size_t)n, r->buf, &data, &b) != napi_ok) break;
    napi_set_element(env, list, count++, b);
  }
  if (list) reader_call(r, list, 0);
  if (end && r->polling) {
    reader_stop(r);
    r->ended = true;
    reader_call(r, NULL, end);
  }
  napi_close_handle_scope(env, scope);
}

static void reader_finalize(napi_env env, void *data, void *hint) {
  fuse_reader *r = (fuse_reader *)data;
  reader_stop(r);
  reader_release(r);
  uv_close((uv_handle_t *)&r->poll, reader_closed);
}

static napi_value js_reader(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "Too few arguments");
    return NULL;
  }
  int64_t fd, size;
  if (!arg_int(env, argv[0], &fd) || !arg_int(env, argv[1], &size)) return NULL;
  if (size < 8192 || size > (64 << 20)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "bufferSize out of range");
    return NULL;
  }
  uv_loop_t *loop;
  TRY(env, napi_get_uv_event_loop(env, &loop));
  fuse_reader *r = calloc(1, sizeof *r);
  if (!r) {
    blockd_throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  r->buf = malloc((size_t)size);
  if (!r->buf) {
    free(r);
    blockd_throw_errno(env, ENOMEM, "malloc");
    return NULL;
  }
  r->env = env;
  r->fd = (int)fd;
  r->size = (size_t)size;
  int rc = uv_poll_init(loop, &r->poll, r->fd);
  if (rc < 0) {
    free(r->buf);
    free(r);
    blockd_throw_errno(env, -rc, "uv_poll_init");
    return NULL;
  }
  r->poll.data = r;
  napi_value name, handle;
  if (napi_create_reference(env, argv[2], 1, &r->callback) != napi_ok ||
      napi_create_string_utf8(env, "blockd:fuse-reader", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &r->async) != napi_ok ||
      napi_create_external(env, r, reader_finalize, NULL, &handle) != napi_ok) {
    reader_release(r);
    uv_close((uv_handle_t *)&r->poll, reader_closed);
    napi_throw_error(env, NULL, "could not set up the FUSE reader");
    return NULL;
  }
  rc = uv_poll_start(&r->poll, UV_READABLE, reader_ready);
  if (rc < 0) {
    blockd_throw_errno(env, -rc, "uv_poll_start");
    return NULL;
  }
  r->polling = true;
  return handle;
}

static napi_value js_reader_active(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data = NULL;
  bool active = false;
  if (argc < 2 || napi_get_value_external(env, argv[0], &data) != napi_ok || !data ||
      napi_get_value_bool(env, argv[1], &active) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a FUSE reader and a boolean");
    return NULL;
  }
  fuse_reader *r = (fuse_reader *)data;
  if (!active) {
    reader_stop(r);
  } else if (!r->polling && !r->ended) {
    int rc = uv_poll_start(&r->poll, UV_READABLE, reader_ready);
    if (rc < 0) {
      blockd_throw_errno(env, -rc, "uv_poll_start");
      return NULL;
    }
    r->polling = true;
  }
  return NULL;
}

static napi_value js_reply(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t fd;
  if (argc < 2 || !arg_int(env, argv[0], &fd)) return NULL;
  uint32_t n = 0;
  TRY(env, napi_get_array_length(env, argv[1], &n));
  if (n > 8) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "too many reply parts");
    return NULL;
  }
  struct iovec iov[8];
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    TRY(env, napi_get_element(env, argv[1], i, &b));
    void *data;
    size_t len;
    TRY(env, napi_get_buffer_info(env, b, &data, &len));
    iov[i].iov_base = data;
    iov[i].iov_len = len;
  }
  int err = 0;
  for (;;) {
    ssize_t w = writev((int)fd, iov, (int)n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) err = errno;
    break;
  }
  napi_value r;
  TRY(env, napi_create_int32(env, err, &r));
  return r;
}

static napi_value js_socket_pair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    blockd_throw_errno(env, errno, "socketpair");
    return NULL;
  }
  napi_value arr, a, b;
  TRY(env, napi_create_array_with_length(env, 2, &arr));
  TRY(env, napi_create_int32(env, sv[0], &a));
  TRY(env, napi_create_int32(env, sv[1], &b));
  TRY(env, napi_set_element(env, arr, 0, a));
  TRY(env, napi_set_element(env, arr, 1, b));
  return arr;
}

static napi_value js_receive_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t sock;
  if (argc < 1 || !arg_int(env, argv[0], &sock)) return NULL;
  char byte;
  struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
  ssize_t n;
  do {
    n = recvmsg((int)sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    blockd_throw_errno(env, errno, "recvmsg");
    return NULL;
  }
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (n == 0 || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int))) {
    blockd_throw_errno(env, EPROTO, "recvmsg");
    return NULL;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  napi_value r;
  TRY(env, napi_create_int32(env, fd, &r));
  return r;
}

bool fuse_device_init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    { "fuseOpenDevice", NULL, js_open_device, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseMount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseUnmount", NULL, js_unmount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseReader", NULL, js_reader, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseReaderActive", NULL, js_reader_active, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseSocketPair", NULL, js_socket_pair, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseReceiveFd", NULL, js_receive_fd, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fuseReply", NULL, js_reply, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) == napi_ok;
}
