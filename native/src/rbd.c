/*
 * librbd for driver=rbd (Ceph RBD images), built only where librbd's headers
 * are (binding.gyp defines BLOCKD_HAVE_RBD). Nothing here blocks the event
 * loop: connecting, opening, resizing, creating, diff-iterating and closing
 * run as async work in the thread pool; reads, writes, flushes, discards and
 * write-zeroes are librbd's aio calls, whose completions (on librbd's own
 * threads) come back to the loop through one thread-safe function.
 */
#include <node_api.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

typedef struct {
  rados_t cluster;
  rados_ioctx_t ioctx;
  rbd_image_t image;
  uint64_t obj_size;
  bool open;
} rbd_handle;

static napi_threadsafe_function done_tsfn;
/* aio requests in flight; while there are any the completion function keeps the loop alive (loop thread only). */
static size_t in_flight;

static napi_value throw_msg(napi_env env, const char *m) {
  napi_throw_error(env, NULL, m);
  return NULL;
}

static napi_value make_error(napi_env env, int ret, const char *what) {
  char text[512];
  snprintf(text, sizeof text, "%s: %s", what, strerror(-ret));
  napi_value msg, err, num;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &err);
  napi_create_int32(env, -ret, &num);
  napi_set_named_property(env, err, "errno", num);
  napi_value stage, text2;
  napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &stage);
  napi_set_named_property(env, err, "stage", stage);
  napi_create_string_utf8(env, strerror(-ret), NAPI_AUTO_LENGTH, &text2);
  napi_set_named_property(env, err, "reason", text2);
  return err;
}

/* ---- aio requests ---- */

typedef struct {
  napi_deferred deferred;
  napi_ref buf_ref;
  int64_t ret;
  const char *what;
} aio_req;

static void aio_done(rbd_completion_t c, void *arg) {
  aio_req *r = arg;
  r->ret = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  napi_call_threadsafe_function(done_tsfn, r, napi_tsfn_nonblocking);
}

static void aio_settle(napi_env env, napi_value js_cb, void *context, void *data) {
  aio_req *r = data;
  if (env != NULL) {
    if (--in_flight == 0) napi_unref_threadsafe_function(env, done_tsfn);
    if (r->ret < 0) napi_reject_deferred(env, r->deferred, make_error(env, (int)r->ret, r->what));
    else {
      napi_value v;
      napi_create_int64(env, r->ret, &v);
      napi_resolve_deferred(env, r->deferred, v);
    }
    if (r->buf_ref) napi_delete_reference(env, r->buf_ref);
  }
  free(r);
}

static rbd_handle *handle_of(napi_env env, napi_value v) {
  rbd_handle *h = NULL;
  if (napi_get_value_external(env, v, (void **)&h) != napi_ok || !h || !h->open) return NULL;
  return h;
}

static int64_t int_arg(napi_env env, napi_value v) {
  int64_t n = -1;
  napi_get_value_int64(env, v, &n);
  return n;
}

/* rbdAio(handle, op, offset, bufferOrLength): op 0 read, 1 write, 2 flush, 3 discard, 4 write-zeroes. */
static napi_value js_aio(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) return throw_msg(env, "rbdAio(handle, op, offset, buf|length)");
  rbd_handle *h = handle_of(env, argv[0]);
  if (!h) return throw_msg(env, "rbdAio: the image is not open");
  int32_t op;
  napi_get_value_int32(env, argv[1], &op);
  int64_t off = int_arg(env, argv[2]);
  void *buf = NULL;
  size_t len = 0;
  if (op == 0 || op == 1) {
    if (napi_get_buffer_info(env, argv[3], &buf, &len) != napi_ok) return throw_msg(env, "rbdAio: expected a Buffer");
  } else if (op != 2) {
    len = (size_t)int_arg(env, argv[3]);
  }
  aio_req *r = calloc(1, sizeof *r);
  if (!r) return throw_msg(env, "out of memory");
  static const char *names[] = { "rbd_aio_read", "rbd_aio_write", "rbd_aio_flush", "rbd_aio_discard", "rbd_aio_write_zeroes" };
  r->what = op >= 0 && op <= 4 ? names[op] : "rbd_aio";
  napi_value promise;
  napi_create_promise(env, &r->deferred, &promise);
  if (buf) napi_create_reference(env, argv[3], 1, &r->buf_ref);
  rbd_completion_t c;
  if (in_flight++ == 0) napi_ref_threadsafe_function(env, done_tsfn);
  int ret = rbd_aio_create_completion(r, aio_done, &c);
  if (ret == 0) {
    switch (op) {
      case 0: ret = rbd_aio_read(h->image, (uint64_t)off, len, buf, c); break;
      case 1: ret = rbd_aio_write(h->image, (uint64_t)off, len, buf, c); break;
      case 2: ret = rbd_aio_flush(h->image, c); break;
      case 3: ret = rbd_aio_discard(h->image, (uint64_t)off, len, c); break;
      case 4: ret = rbd_aio_write_zeroes(h->image, (uint64_t)off, len, c, 0, 0); break;
      default: ret = -EINVAL;
    }
    if (ret < 0) rbd_aio_release(c);
  }
  if (ret < 0) {
    if (--in_flight == 0) napi_unref_threadsafe_function(env, done_tsfn);
    napi_reject_deferred(env, r->deferred, make_error(env, ret, r->what));
    if (r->buf_ref) napi_delete_reference(env, r->buf_ref);
    free(r);
  }
  return promise;
}

/* ---- async work: open, close, resize, create, diff ---- */

typedef struct {
  char *conf, *user, *pool, *ns, *image, *snap, *mon_host, *key, *auth;
  uint64_t size;
  bool read_only;
  bool cache;
  /* encrypt: format (-1 none, else rbd_encryption_format_t), cipher (rbd_encryption_algorithm_t), passphrase. */
  int enc_format, enc_alg;
  char *enc_pass;
  size_t enc_pass_len;
  /* The caller could not build the options (no such secret, an unknown cipher): fail at the encryption step. */
  bool enc_refused;
} conn_opts;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int kind; /* 0 open, 1 close, 2 resize, 3 create, 4 diff, 5 stat */
  conn_opts o;
  rbd_handle *h;
  uint64_t a, b;
  int ret;
  const char *what;
  uint64_t size, obj_size;
} work_req;

static char *str_prop(napi_env env, napi_value obj, const char *name) {
  napi_value v;
  napi_valuetype t;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok || t != napi_string) return NULL;
  size_t n;
  napi_get_value_string_utf8(env, v, NULL, 0, &n);
  char *s = malloc(n + 1);
  if (s) napi_get_value_string_utf8(env, v, s, n + 1, &n);
  return s;
}

static void free_opts(conn_opts *o) {
  free(o->conf); free(o->user); free(o->pool); free(o->ns); free(o->image); free(o->snap); free(o->mon_host);
  if (o->key) { memset(o->key, 0, strlen(o->key)); free(o->key); }
  free(o->auth);
  if (o->enc_pass) { memset(o->enc_pass, 0, o->enc_pass_len); free(o->enc_pass); }
}

/*
 * librbd's LUKS options for format or load (QEMU's qemu_rbd_encryption_format
 * and _load build the same structs); both LUKS versions have one layout.
 */
static int encryption_step(work_req *r, rbd_image_t img, bool format) {
  conn_opts *o = &r->o;
  uint64_t raw = 0, effective;
  int ret;
  r->what = "cannot get raw image size";
  if (format && (ret = rbd_get_size(img, &raw)) < 0) return ret;
  if (o->enc_refused) { r->what = "encryption options"; return -EINVAL; }
  rbd_encryption_luks1_format_options_t l1;
  rbd_encryption_luks2_format_options_t l2;
  memset(&l1, 0, sizeof l1);
  memset(&l2, 0, sizeof l2);
  l1.alg = l2.alg = (rbd_encryption_algorithm_t)o->enc_alg;
  l1.passphrase = l2.passphrase = o->enc_pass ? o->enc_pass : "";
  l1.passphrase_size = l2.passphrase_size = o->enc_pass_len;
  rbd_encryption_format_t fmt = (rbd_encryption_format_t)o->enc_format;
  rbd_encryption_options_t opts = fmt == RBD_ENCRYPTION_FORMAT_LUKS1 ? (void *)&l1 : (void *)&l2;
  size_t size = fmt == RBD_ENCRYPTION_FORMAT_LUKS1 ? sizeof l1 : sizeof l2;
  if (!format) {
    r->what = "encryption load fail";
    return rbd_encryption_load(img, fmt, opts, size);
  }
  /* As QEMU: format, then grow the image by the header so the effective size is the one asked for. */
  r->what = "encryption format fail";
  if ((ret = rbd_encryption_format(img, fmt, opts, size)) < 0) return ret;
  r->what = "cannot get effective image size";
  if ((ret = rbd_get_size(img, &effective)) < 0) return ret;
  r->what = "cannot resize image after format";
  return rbd_resize(img, raw + (raw - effective));
}

static int connect_cluster(work_req *r, rados_t *cluster, rados_ioctx_t *ioctx) {
  conn_opts *o = &r->o;
  int ret;
  r->what = "rados_create";
  if ((ret = rados_create(cluster, o->user)) < 0) return ret;
  r->what = "rados_conf_read_file";
  /* QEMU: without conf= the default search path, whose absence is no error. */
  ret = rados_conf_read_file(*cluster, o->conf);
  if (ret < 0 && o->conf) goto fail;
  r->what = "rados_conf_set";
  if (o->mon_host && (ret = rados_conf_set(*cluster, "mon_host", o->mon_host)) < 0) goto fail;
  r->what = "Could not set 'key'";
  if (o->key && (ret = rados_conf_set(*cluster, "key", o->key)) < 0) goto fail;
  r->what = "Could not set 'auth_client_required'";
  if (o->auth && (ret = rados_conf_set(*cluster, "auth_client_required", o->auth)) < 0) goto fail;
  /* As QEMU: librbd's cache unless cache.direct (errors ignored: librbd defaults to none). */
  rados_conf_set(*cluster, "rbd_cache", o->cache ? "true" : "false");
  r->what = "error connecting";
  if ((ret = rados_connect(*cluster)) < 0) goto fail;
  r->what = "error opening pool";
  if ((ret = rados_ioctx_create(*cluster, o->pool, ioctx)) < 0) goto fail;
  if (o->ns && o->ns[0]) {
    bool exists = false;
    r->what = "error checking namespace";
    if ((ret = rbd_namespace_exists(*ioctx, o->ns, &exists)) < 0) { rados_ioctx_destroy(*ioctx); goto fail; }
    if (!exists) { r->what = "namespace does not exist"; ret = -ENOENT; rados_ioctx_destroy(*ioctx); goto fail; }
  }
  rados_ioctx_set_namespace(*ioctx, o->ns ? o->ns : "");
  return 0;
fail:
  rados_shutdown(*cluster);
  return ret;
}

#define EXIT_DIFF 1337

typedef struct { uint64_t offs, bytes; bool exists; } diff_req;

/* QEMU's qemu_rbd_diff_iterate_cb: the first run (allocated or not) from req->offs. */
static int status_cb(uint64_t offs, size_t len, int exists, void *opaque) {
  diff_req *q = opaque;
  if (!exists) return 0;
  if (!q->exists && offs > q->offs) { q->bytes = offs - q->offs; return EXIT_DIFF; }
  if (q->exists && offs > q->offs + q->bytes) return EXIT_DIFF;
  q->bytes += len;
  q->exists = true;
  return 0;
}

/*
 * QEMU 7.2's qemu_rbd_co_block_status over librbd < 1.17: without fast-diff
 * (or with it invalid, striping v2, a parent) everything is data; otherwise
 * diff-iterate by whole objects from the object boundary. Result in r->a
 * (0 data, 1 zero) and r->b (bytes).
 */
static void block_status(work_req *r) {
  rbd_image_t img = r->h->image;
  uint64_t offset = r->a, bytes = r->b, features, flags;
  r->ret = 0;
  r->a = 0;
  if (rbd_get_features(img, &features) < 0 || !(features & RBD_FEATURE_FAST_DIFF)) return;
  if (rbd_get_flags(img, &flags) < 0 || (flags & RBD_FLAG_FAST_DIFF_INVALID)) return;
  if (features & RBD_FEATURE_STRIPINGV2) return;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  if (rbd_get_parent_info(img, NULL, 0, NULL, 0, NULL, 0) != -ENOENT) return;
#pragma GCC diagnostic pop
  uint64_t head = r->h->obj_size ? offset & (r->h->obj_size - 1) : 0;
  diff_req q = { offset - head, 0, false };
  bytes += head;
  int ret = rbd_diff_iterate2(img, NULL, q.offs, bytes, 1, 1, status_cb, &q);
  if (ret < 0 && ret != EXIT_DIFF) { r->b = bytes - head; return; }
  if (!q.exists) {
    if (ret == 0) q.bytes = bytes;
    r->a = 1;
  }
  r->b = q.bytes - head;
}

static void work_execute(napi_env env, void *data) {
  work_req *r = data;
  int ret = 0;
  switch (r->kind) {
    case 0: {
      rbd_handle *h = calloc(1, sizeof *h);
      if (!h) { r->ret = -ENOMEM; r->what = "open"; return; }
      if ((ret = connect_cluster(r, &h->cluster, &h->ioctx)) < 0) { free(h); break; }
      r->what = "error reading header";
      /* As QEMU: rbd_open, with the snapshot if any (which librbd then keeps read-only). */
      ret = rbd_open(h->ioctx, r->o.image, &h->image, r->o.snap);
      if (ret < 0) { rados_ioctx_destroy(h->ioctx); rados_shutdown(h->cluster); free(h); break; }
      if (r->o.enc_format >= 0 && (ret = encryption_step(r, h->image, false)) < 0) {
        rbd_close(h->image); rados_ioctx_destroy(h->ioctx); rados_shutdown(h->cluster); free(h); break;
      }
      r->what = "error getting image info";
      rbd_image_info_t st;
      if ((ret = rbd_stat(h->image, &st, sizeof st)) < 0) { rbd_close(h->image); rados_ioctx_destroy(h->ioctx); rados_shutdown(h->cluster); free(h); break; }
      r->size = st.size;
      r->obj_size = st.obj_size;
      h->obj_size = st.obj_size;
      h->open = true;
      r->h = h;
      break;
    }
    case 1:
      rbd_close(r->h->image);
      rados_ioctx_destroy(r->h->ioctx);
      rados_shutdown(r->h->cluster);
      break;
    case 2:
      r->what = "rbd_resize";
      ret = rbd_resize(r->h->image, r->a);
      if (ret == 0) ret = rbd_get_size(r->h->image, &r->size);
      break;
    case 3: {
      rados_t cluster;
      rados_ioctx_t ioctx;
      if ((ret = connect_cluster(r, &cluster, &ioctx)) < 0) break;
      r->what = "error rbd create";
      int order = (int)r->a;
      ret = rbd_create(ioctx, r->o.image, r->o.size, &order);
      if (ret == 0 && r->o.enc_format >= 0) {
        rbd_image_t img;
        r->what = "error opening image for encryption format";
        if ((ret = rbd_open(ioctx, r->o.image, &img, NULL)) == 0) {
          ret = encryption_step(r, img, true);
          rbd_close(img);
          /* As QEMU: a failed format removes the image it made. */
          if (ret < 0) rbd_remove(ioctx, r->o.image);
        }
      }
      rados_ioctx_destroy(ioctx);
      rados_shutdown(cluster);
      break;
    }
    case 4:
      block_status(r);
      return;
  }
  r->ret = ret;
}

static void work_complete(napi_env env, napi_status status, void *data) {
  work_req *r = data;
  if (status != napi_ok) r->ret = -ECANCELED;
  if (r->ret < 0) {
    napi_reject_deferred(env, r->deferred, make_error(env, r->ret, r->what ? r->what : "rbd"));
  } else {
    napi_value v, n;
    switch (r->kind) {
      case 0: {
        napi_value ext;
        napi_create_object(env, &v);
        napi_create_external(env, r->h, NULL, NULL, &ext);
        napi_set_named_property(env, v, "handle", ext);
        napi_create_double(env, (double)r->size, &n);
        napi_set_named_property(env, v, "size", n);
        napi_create_double(env, (double)r->obj_size, &n);
        napi_set_named_property(env, v, "objectSize", n);
        break;
      }
      case 2: napi_create_double(env, (double)r->size, &v); break;
      case 4:
        napi_create_array_with_length(env, 2, &v);
        napi_create_double(env, (double)r->a, &n); napi_set_element(env, v, 0, n);
        napi_create_double(env, (double)r->b, &n); napi_set_element(env, v, 1, n);
        break;
      default: napi_get_undefined(env, &v);
    }
    napi_resolve_deferred(env, r->deferred, v);
  }
  if (r->kind == 1) { free(r->h); }
  free_opts(&r->o);
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value queue(napi_env env, work_req *r, const char *name) {
  napi_value promise, nm;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &nm);
  if (napi_create_async_work(env, NULL, nm, work_execute, work_complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    free_opts(&r->o);
    free(r);
    return throw_msg(env, "rbd: could not queue the work");
  }
  return promise;
}

static void read_opts(napi_env env, napi_value o, conn_opts *c) {
  c->conf = str_prop(env, o, "conf");
  c->user = str_prop(env, o, "user");
  c->pool = str_prop(env, o, "pool");
  c->ns = str_prop(env, o, "namespace");
  c->image = str_prop(env, o, "image");
  c->snap = str_prop(env, o, "snapshot");
  c->mon_host = str_prop(env, o, "monHost");
  c->key = str_prop(env, o, "key");
  c->auth = str_prop(env, o, "authClientRequired");
  napi_value v;
  bool b = false;
  if (napi_get_named_property(env, o, "readOnly", &v) == napi_ok) napi_get_value_bool(env, v, &b);
  c->read_only = b;
  b = false;
  if (napi_get_named_property(env, o, "cache", &v) == napi_ok) napi_get_value_bool(env, v, &b);
  c->cache = b;
  double size = 0;
  if (napi_get_named_property(env, o, "size", &v) == napi_ok) napi_get_value_double(env, v, &size);
  c->size = (uint64_t)size;
  /* encrypt: { format: 0 luks1 | 1 luks2, alg, passphrase: Buffer } or { refused: true } */
  c->enc_format = -1;
  napi_value e;
  napi_valuetype t;
  if (napi_get_named_property(env, o, "encrypt", &e) != napi_ok || napi_typeof(env, e, &t) != napi_ok || t != napi_object) return;
  int32_t n = 0;
  if (napi_get_named_property(env, e, "format", &v) == napi_ok) napi_get_value_int32(env, v, &n);
  c->enc_format = n;
  n = RBD_ENCRYPTION_ALGORITHM_AES256;
  if (napi_get_named_property(env, e, "alg", &v) == napi_ok) napi_get_value_int32(env, v, &n);
  c->enc_alg = n;
  b = false;
  if (napi_get_named_property(env, e, "refused", &v) == napi_ok) napi_get_value_bool(env, v, &b);
  c->enc_refused = b;
  void *data;
  size_t len;
  if (napi_get_named_property(env, e, "passphrase", &v) == napi_ok && napi_get_buffer_info(env, v, &data, &len) == napi_ok) {
    c->enc_pass = malloc(len + 1);
    if (c->enc_pass) { memcpy(c->enc_pass, data, len); c->enc_pass[len] = 0; c->enc_pass_len = len; }
  }
}

/* rbdOpen(opts) -> { handle, size, objectSize } */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return throw_msg(env, "rbdOpen(options)");
  work_req *r = calloc(1, sizeof *r);
  if (!r) return throw_msg(env, "out of memory");
  read_opts(env, argv[0], &r->o);
  if (!r->o.pool || !r->o.image) { free_opts(&r->o); free(r); return throw_msg(env, "rbdOpen: pool and image are required"); }
  r->kind = 0;
  return queue(env, r, "rbdOpen");
}

/* rbdCreate(opts with size, order) */
static napi_value js_create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_msg(env, "rbdCreate(options, order)");
  work_req *r = calloc(1, sizeof *r);
  if (!r) return throw_msg(env, "out of memory");
  read_opts(env, argv[0], &r->o);
  r->a = (uint64_t)int_arg(env, argv[1]);
  r->kind = 3;
  return queue(env, r, "rbdCreate");
}

/* rbdHandleOp(handle, kind, a, b): 1 close, 2 resize(a), 4 block status(offset a, bytes b) -> [0 data | 1 zero, bytes] */
static napi_value js_handle_op(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throw_msg(env, "rbdHandleOp(handle, kind, ...)");
  rbd_handle *h = handle_of(env, argv[0]);
  if (!h) return throw_msg(env, "rbd: the image is not open");
  work_req *r = calloc(1, sizeof *r);
  if (!r) return throw_msg(env, "out of memory");
  int32_t kind;
  napi_get_value_int32(env, argv[1], &kind);
  r->kind = kind;
  r->h = h;
  if (argc > 2) r->a = (uint64_t)int_arg(env, argv[2]);
  if (argc > 3) r->b = (uint64_t)int_arg(env, argv[3]);
  if (kind == 1) h->open = false;
  return queue(env, r, "rbdHandleOp");
}

bool rbd_init(napi_env env, napi_value exports) {
  napi_value name;
  napi_create_string_utf8(env, "rbdCompletion", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, aio_settle, &done_tsfn) != napi_ok) return false;
  /* Kept alive only while aio requests are in flight: an idle process exits when it should. */
  napi_unref_threadsafe_function(env, done_tsfn);
  napi_property_descriptor fns[] = {
    { "rbdOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL },
    { "rbdCreate", NULL, js_create, NULL, NULL, NULL, napi_enumerable, NULL },
    { "rbdAio", NULL, js_aio, NULL, NULL, NULL, napi_enumerable, NULL },
    { "rbdHandleOp", NULL, js_handle_op, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) == napi_ok;
}
