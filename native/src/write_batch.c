/*
 * Several positional writes to one file in one thread-pool job:
 *
 *   pwriteBatch(fd, bufs: Buffer[], positions: number[]) -> Promise<number[]>
 *
 * Each result is the bytes written (all of them, unless the file system
 * wrote short: the caller continues the rest) or -errno for that write
 * alone. At queue depth 32 a socket read brings 32 writes: one job instead
 * of 32 halves the thread-pool hand-offs (a futex wake, a completion
 * through libuv's async handle and a callback each) that cost more than a
 * page-cache write itself. The buffers are held by a reference to the
 * array until the job completes; their memory does not move.
 */
#include <node_api.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

void blockd_throw_errno(napi_env env, int err, const char *syscall); /* blockd_native.c */

typedef struct {
  const uint8_t *data;
  size_t len;
  int64_t pos;
  int64_t result;
} batch_item;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref bufs_ref;
  int fd;
  uint32_t count;
  batch_item items[];
} batch_req;

/* On a thread-pool thread: no napi calls. */
static void batch_execute(napi_env env, void *data) {
  batch_req *r = data;
  for (uint32_t i = 0; i < r->count; i++) {
    batch_item *it = &r->items[i];
    ssize_t n;
    do n = pwrite(r->fd, it->data, it->len, (off_t)it->pos); while (n < 0 && errno == EINTR);
    it->result = n < 0 ? -(int64_t)errno : (int64_t)n;
  }
}

static void batch_complete(napi_env env, napi_status status, void *data) {
  batch_req *r = data;
  napi_value out = NULL, v;
  if (status == napi_ok && napi_create_array_with_length(env, r->count, &out) == napi_ok) {
    for (uint32_t i = 0; i < r->count && out; i++) {
      if (napi_create_int64(env, r->items[i].result, &v) != napi_ok || napi_set_element(env, out, i, v) != napi_ok) out = NULL;
    }
  }
  if (out) {
    napi_resolve_deferred(env, r->deferred, out);
  } else {
    napi_value msg, err;
    napi_create_string_utf8(env, "pwriteBatch: job cancelled or out of memory", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, r->deferred, err);
  }
  napi_delete_reference(env, r->bufs_ref);
  napi_delete_async_work(env, r->work);
  free(r);
}

static bool fail_type(napi_env env, const char *what) {
  napi_throw_type_error(env, NULL, what);
  return false;
}

/* Fills the items from the arrays: a TypeError for anything that is not a Buffer or a safe non-negative integer. */
static bool read_items(napi_env env, napi_value bufs, napi_value positions, batch_req *r) {
  for (uint32_t i = 0; i < r->count; i++) {
    napi_value b, p;
    bool isbuf;
    void *data;
    size_t len;
    int64_t pos;
    double d;
    if (napi_get_element(env, bufs, i, &b) != napi_ok || napi_is_buffer(env, b, &isbuf) != napi_ok || !isbuf) return fail_type(env, "pwriteBatch: bufs must be Buffers");
    if (napi_get_buffer_info(env, b, &data, &len) != napi_ok) return fail_type(env, "pwriteBatch: bufs must be Buffers");
    if (napi_get_element(env, positions, i, &p) != napi_ok || napi_get_value_double(env, p, &d) != napi_ok) return fail_type(env, "pwriteBatch: positions must be numbers");
    pos = (int64_t)d;
    if ((double)pos != d || pos < 0 || d > 9007199254740991.0) return fail_type(env, "pwriteBatch: positions must be non-negative integers");
    r->items[i] = (batch_item){ .data = data, .len = len, .pos = pos, .result = 0 };
  }
  return true;
}

static napi_value js_pwrite_batch(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise, name;
  int32_t fd;
  uint32_t count, pcount;
  bool isarr, pisarr;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) { fail_type(env, "pwriteBatch(fd, bufs, positions)"); return NULL; }
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) { fail_type(env, "pwriteBatch: fd must be a descriptor"); return NULL; }
  if (napi_is_array(env, argv[1], &isarr) != napi_ok || !isarr || napi_is_array(env, argv[2], &pisarr) != napi_ok || !pisarr ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || napi_get_array_length(env, argv[2], &pcount) != napi_ok || count != pcount || count == 0) {
    fail_type(env, "pwriteBatch: bufs and positions must be arrays of the same, non-zero length");
    return NULL;
  }
  batch_req *r = calloc(1, sizeof *r + count * sizeof(batch_item));
  if (!r) { blockd_throw_errno(env, ENOMEM, "calloc"); return NULL; }
  r->fd = fd;
  r->count = count;
  if (!read_items(env, argv[1], argv[2], r)) { free(r); return NULL; }
  if (napi_create_reference(env, argv[1], 1, &r->bufs_ref) != napi_ok) { free(r); return NULL; }
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "pwriteBatch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, batch_execute, batch_complete, r, &r->work) != napi_ok) {
    napi_delete_reference(env, r->bufs_ref);
    free(r);
    return NULL;
  }
  if (napi_queue_async_work(env, r->work) != napi_ok) {
    napi_delete_async_work(env, r->work);
    napi_delete_reference(env, r->bufs_ref);
    free(r);
    return NULL;
  }
  return promise;
}

bool write_batch_init(napi_env env, napi_value exports) {
  napi_value fn;
  return napi_create_function(env, "pwriteBatch", NAPI_AUTO_LENGTH, js_pwrite_batch, NULL, &fn) == napi_ok &&
         napi_set_named_property(env, exports, "pwriteBatch", fn) == napi_ok;
}
