/*
 * zstd compression of one qcow2 cluster, off the event loop (the thread
 * pool). QEMU's qcow2 writes zstd clusters as single zstd frames at the
 * default level (qcow2_zstd_compress); blockd decodes them in JS (fzstd),
 * but has no JS encoder, so this calls the system's libzstd. It is opened
 * with dlopen() at first use (libzstd.so.1, the runtime library QEMU itself
 * links), so building the addon needs no zstd headers and a system without
 * the library only loses zstd compressed writes, with a clear error.
 */
#include <node_api.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef size_t (*compress_bound_fn)(size_t);
typedef size_t (*compress_fn)(void *, size_t, const void *, size_t, int);
typedef unsigned (*is_error_fn)(size_t);
typedef const char *(*error_name_fn)(size_t);

static struct {
  pthread_once_t once;
  const char *error;
  compress_bound_fn bound;
  compress_fn compress;
  is_error_fn is_error;
  error_name_fn error_name;
} zstd = { PTHREAD_ONCE_INIT, NULL, NULL, NULL, NULL, NULL };

static void zstd_load(void) {
  void *h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) { zstd.error = "libzstd.so.1 could not be loaded"; return; }
  zstd.bound = (compress_bound_fn)dlsym(h, "ZSTD_compressBound");
  zstd.compress = (compress_fn)dlsym(h, "ZSTD_compress");
  zstd.is_error = (is_error_fn)dlsym(h, "ZSTD_isError");
  zstd.error_name = (error_name_fn)dlsym(h, "ZSTD_getErrorName");
  if (!zstd.bound || !zstd.compress || !zstd.is_error || !zstd.error_name) zstd.error = "libzstd.so.1 lacks ZSTD_compress";
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref src_ref;
  const void *src;
  size_t src_len;
  void *dst;
  size_t dst_len;
  int level;
  const char *error;
} zstd_req;

static void zstd_execute(napi_env env, void *data) {
  zstd_req *r = data;
  size_t cap = zstd.bound(r->src_len);
  r->dst = malloc(cap);
  if (!r->dst) { r->error = "out of memory"; return; }
  size_t n = zstd.compress(r->dst, cap, r->src, r->src_len, r->level);
  if (zstd.is_error(n)) { r->error = zstd.error_name(n); return; }
  r->dst_len = n;
}

static void free_dst(napi_env env, void *data, void *hint) { free(data); }

static void zstd_complete(napi_env env, napi_status status, void *data) {
  zstd_req *r = data;
  napi_value value = NULL, msg;
  if (status != napi_ok || r->error) {
    napi_create_string_utf8(env, status != napi_ok ? "async work cancelled" : r->error, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &value);
    napi_reject_deferred(env, r->deferred, value);
    free(r->dst);
  } else if (napi_create_external_buffer(env, r->dst_len, r->dst, free_dst, NULL, &value) == napi_ok) {
    napi_resolve_deferred(env, r->deferred, value);
  } else {
    napi_create_string_utf8(env, "could not create the result buffer", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &value);
    napi_reject_deferred(env, r->deferred, value);
    free(r->dst);
  }
  napi_delete_reference(env, r->src_ref);
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value throw_msg(napi_env env, const char *m) {
  napi_throw_error(env, NULL, m);
  return NULL;
}

/* zstdCompress(src: Buffer, level: number): Promise<Buffer> — one zstd frame of `src`. */
static napi_value js_zstd_compress(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_msg(env, "zstdCompress(src, level)");
  pthread_once(&zstd.once, zstd_load);
  if (zstd.error) return throw_msg(env, zstd.error);
  zstd_req *r = calloc(1, sizeof *r);
  if (!r) return throw_msg(env, "out of memory");
  void *src;
  int32_t level;
  napi_value promise, name;
  if (napi_get_buffer_info(env, argv[0], &src, &r->src_len) != napi_ok || napi_get_value_int32(env, argv[1], &level) != napi_ok) {
    free(r);
    return throw_msg(env, "zstdCompress: expected a Buffer and a level");
  }
  r->src = src;
  r->level = level;
  /* The source stays referenced (and so alive) until the work completes. */
  if (napi_create_reference(env, argv[0], 1, &r->src_ref) != napi_ok ||
      napi_create_promise(env, &r->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "zstdCompress", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, zstd_execute, zstd_complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    free(r);
    return throw_msg(env, "zstdCompress: could not queue the work");
  }
  return promise;
}

bool zstd_compress_init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    { "zstdCompress", NULL, js_zstd_compress, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) == napi_ok;
}
