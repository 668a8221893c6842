/*
 * Sector encryption for LUKS and qcow2+LUKS, with the OpenSSL that is linked
 * into the node binary (node exports its EVP_* symbols and ships the headers
 * in include/node/openssl).
 *
 * node:crypto takes the IV only when a cipher object is created, and disk
 * encryption needs a new IV for every 512-byte sector: one createCipheriv per
 * sector runs at ~60-90 MB/s. Here one EVP context is keyed once per request
 * and only the IV is reset per sector, and requests above a size run on
 * libuv's thread pool so the event loop stays free.
 *
 *   sectorCipherNew(cipher, key, ivgen, essivCipher, essivKey) -> handle
 *       cipher: an OpenSSL name ("aes-256-xts", "aes-128-cbc"...); ivgen:
 *       0 plain (le32 sector), 1 plain64 (le64 sector), 2 essiv (the plain64
 *       IV encrypted in ECB mode by essivCipher with essivKey)
 *   sectorCrypt(handle, buf, sector, sectorSize, encrypt[, ivStep]) -> void (in
 *       place, on the calling thread); the IV number grows by ivStep (default
 *       1) per sector: LUKS2 numbers 4 KiB sectors in 512-byte units (8)
 *   sectorCryptAsync(handle, buf, sector, sectorSize, encrypt[, ivStep]) -> Promise<void>
 *       (in place, on the thread pool; buf must stay untouched until settled)
 *   Both take an optional last argument `out`, a buffer of buf's length: the
 *   result goes there and buf is only read (a write's bounce copy then costs
 *   the event loop nothing).
 *   sectorCipherWipe(handle) -> void: the key material is erased now (or when
 *       the last request in flight ends); later calls throw
 *
 * Keys are copied into memory owned here and cleansed on wipe or finalize.
 */
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEY 64
#define MAX_IV 16
#define MAX_SAFE_INTEGER 9007199254740991.0

typedef struct {
  EVP_CIPHER *cipher;
  EVP_CIPHER *essiv_cipher; /* NULL unless ivgen == essiv */
  unsigned char key[MAX_KEY];
  unsigned char essiv_key[MAX_KEY];
  int key_len, essiv_key_len, iv_len;
  int ivgen;
  int inflight;
  bool wiped;
} sector_cipher;

static void release(sector_cipher *c) {
  OPENSSL_cleanse(c->key, sizeof c->key);
  OPENSSL_cleanse(c->essiv_key, sizeof c->essiv_key);
  EVP_CIPHER_free(c->cipher);
  EVP_CIPHER_free(c->essiv_cipher);
  c->cipher = c->essiv_cipher = NULL;
}

static void finalize(napi_env env, void *data, void *hint) {
  sector_cipher *c = data;
  if (!c->wiped) release(c);
  free(c);
}

static bool throw_msg(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return false;
}

static bool get_string(napi_env env, napi_value v, char *out, size_t n) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, out, n, &len) != napi_ok) return throw_msg(env, "expected a string");
  return true;
}

static bool get_buffer(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return throw_msg(env, "expected a Buffer");
  return napi_get_buffer_info(env, v, (void **)data, len) == napi_ok;
}

static napi_value js_new(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], result;
  char name[64], ename[64];
  unsigned char *key, *ekey = NULL;
  size_t klen, eklen = 0;
  int32_t ivgen;
  napi_valuetype t;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    throw_msg(env, "sectorCipherNew: too few arguments");
    return NULL;
  }
  if (!get_string(env, argv[0], name, sizeof name) || !get_buffer(env, argv[1], &key, &klen)) return NULL;
  if (napi_get_value_int32(env, argv[2], &ivgen) != napi_ok || ivgen < 0 || ivgen > 2) {
    throw_msg(env, "sectorCipherNew: bad ivgen");
    return NULL;
  }
  sector_cipher *c = calloc(1, sizeof *c);
  if (!c) {
    throw_msg(env, "out of memory");
    return NULL;
  }
  c->ivgen = ivgen;
  c->cipher = EVP_CIPHER_fetch(NULL, name, NULL);
  if (!c->cipher) goto bad_cipher;
  c->key_len = EVP_CIPHER_get_key_length(c->cipher);
  c->iv_len = EVP_CIPHER_get_iv_length(c->cipher);
  if ((size_t)c->key_len != klen || klen > MAX_KEY || (c->iv_len != 0 && c->iv_len < 8) || c->iv_len > MAX_IV) goto bad_key;
  memcpy(c->key, key, klen);
  if (ivgen == 2) {
    napi_typeof(env, argv[3], &t);
    if (t != napi_string || !get_string(env, argv[3], ename, sizeof ename) || !get_buffer(env, argv[4], &ekey, &eklen)) goto bad_essiv;
    c->essiv_cipher = EVP_CIPHER_fetch(NULL, ename, NULL);
    if (!c->essiv_cipher) goto bad_essiv;
    c->essiv_key_len = EVP_CIPHER_get_key_length(c->essiv_cipher);
    if ((size_t)c->essiv_key_len != eklen || eklen > MAX_KEY || EVP_CIPHER_get_block_size(c->essiv_cipher) != c->iv_len) goto bad_essiv;
    memcpy(c->essiv_key, ekey, eklen);
  }
  if (napi_create_external(env, c, finalize, NULL, &result) != napi_ok) {
    release(c);
    free(c);
    throw_msg(env, "napi_create_external failed");
    return NULL;
  }
  return result;
bad_cipher:
  throw_msg(env, "sectorCipherNew: unknown cipher");
  goto fail;
bad_key:
  throw_msg(env, "sectorCipherNew: wrong key length");
  goto fail;
bad_essiv:
  {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) throw_msg(env, "sectorCipherNew: bad essiv cipher or key");
  }
fail:
  release(c);
  free(c);
  return NULL;
}

/* Encrypts or decrypts `len` bytes (whole sectors) from `p` into `o` (which
 * may be `p`). Runs on any thread: no napi calls. Returns false if OpenSSL failed. */
static bool run(const sector_cipher *c, const unsigned char *p, unsigned char *o, size_t len, uint64_t sector, size_t sector_size, uint64_t iv_step, int enc) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new(), *ectx = NULL;
  unsigned char iv[MAX_IV], plain[MAX_IV];
  int outl;
  bool ok = ctx && EVP_CipherInit_ex(ctx, c->cipher, NULL, c->key, NULL, enc) == 1 && EVP_CIPHER_CTX_set_padding(ctx, 0) == 1;
  if (ok && c->ivgen == 2) {
    ectx = EVP_CIPHER_CTX_new();
    ok = ectx && EVP_CipherInit_ex(ectx, c->essiv_cipher, NULL, c->essiv_key, NULL, 1) == 1 && EVP_CIPHER_CTX_set_padding(ectx, 0) == 1;
  }
  if (ok && c->iv_len == 0) { /* ecb: no IV, the whole run in one call */
    ok = EVP_CipherUpdate(ctx, o, &outl, p, (int)len) == 1;
    len = 0;
  }
  for (size_t off = 0; ok && off < len; off += sector_size, sector += iv_step) {
    memset(plain, 0, sizeof plain);
    uint64_t s = c->ivgen == 0 ? (sector & 0xffffffffu) : sector;
    for (int i = 0; i < 8; i++) plain[i] = (unsigned char)(s >> (8 * i));
    if (c->ivgen == 2) {
      ok = EVP_CipherUpdate(ectx, iv, &outl, plain, c->iv_len) == 1;
    } else {
      memcpy(iv, plain, sizeof iv);
    }
    ok = ok && EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) == 1 && EVP_CipherUpdate(ctx, o + off, &outl, p + off, (int)sector_size) == 1;
  }
  OPENSSL_cleanse(iv, sizeof iv);
  EVP_CIPHER_CTX_free(ctx);
  EVP_CIPHER_CTX_free(ectx);
  return ok;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref handle_ref, buf_ref, out_ref;
  sector_cipher *c;
  unsigned char *p, *o;
  size_t len, sector_size;
  uint64_t sector, iv_step;
  int enc;
  bool ok;
} crypt_req;

static sector_cipher *get_handle(napi_env env, napi_value v) {
  napi_valuetype t;
  void *data = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &data) != napi_ok) {
    throw_msg(env, "expected a sector cipher handle");
    return NULL;
  }
  sector_cipher *c = data;
  if (c->wiped) {
    throw_msg(env, "the sector cipher has been wiped");
    return NULL;
  }
  return c;
}

/* Parses (handle, buf, sector, sectorSize, encrypt[, ivStep[, out]]) into r. */
static bool parse(napi_env env, napi_callback_info info, napi_value *argv, crypt_req *r) {
  size_t argc = 7;
  double sector, ssize, step = 1;
  bool enc;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) return throw_msg(env, "sectorCrypt: too few arguments");
  if (!(r->c = get_handle(env, argv[0])) || !get_buffer(env, argv[1], &r->p, &r->len)) return false;
  if (napi_get_value_double(env, argv[2], &sector) != napi_ok || napi_get_value_double(env, argv[3], &ssize) != napi_ok ||
      napi_get_value_bool(env, argv[4], &enc) != napi_ok)
    return throw_msg(env, "sectorCrypt: bad arguments");
  if (argc >= 6 && napi_get_value_double(env, argv[5], &step) != napi_ok) return throw_msg(env, "sectorCrypt: bad arguments");
  r->o = r->p;
  if (argc >= 7) {
    size_t olen;
    if (!get_buffer(env, argv[6], &r->o, &olen)) return false;
    if (olen != r->len) return throw_msg(env, "sectorCrypt: the output buffer's length differs");
    if (r->o != r->p && r->o < r->p + r->len && r->p < r->o + olen) return throw_msg(env, "sectorCrypt: the output buffer overlaps the input");
  }
  if (!(step >= 1 && step <= 128 && step == (double)(uint64_t)step)) return throw_msg(env, "sectorCrypt: bad IV step");
  r->iv_step = (uint64_t)step;
  if (!(sector >= 0 && sector <= MAX_SAFE_INTEGER && sector == (double)(uint64_t)sector)) return throw_msg(env, "sectorCrypt: bad sector");
  if (!(ssize >= 16 && ssize <= 65536 && ssize == (double)(size_t)ssize)) return throw_msg(env, "sectorCrypt: bad sector size");
  r->sector = (uint64_t)sector;
  r->sector_size = (size_t)ssize;
  r->enc = enc ? 1 : 0;
  if (r->len % r->sector_size) return throw_msg(env, "sectorCrypt: length is not a multiple of the sector size");
  return true;
}

static napi_value js_crypt(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  crypt_req r = {0};
  if (!parse(env, info, argv, &r)) return NULL;
  if (!run(r.c, r.p, r.o, r.len, r.sector, r.sector_size, r.iv_step, r.enc)) throw_msg(env, "sectorCrypt: OpenSSL failed");
  return NULL;
}

static void crypt_execute(napi_env env, void *data) {
  crypt_req *r = data;
  r->ok = run(r->c, r->p, r->o, r->len, r->sector, r->sector_size, r->iv_step, r->enc);
}

static void crypt_complete(napi_env env, napi_status status, void *data) {
  crypt_req *r = data;
  napi_value value;
  if (--r->c->inflight == 0 && r->c->wiped) release(r->c);
  if (status == napi_ok && r->ok) {
    napi_get_undefined(env, &value);
    napi_resolve_deferred(env, r->deferred, value);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, status == napi_ok ? "sectorCrypt: OpenSSL failed" : "sectorCrypt: cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &value);
    napi_reject_deferred(env, r->deferred, value);
  }
  napi_delete_reference(env, r->handle_ref);
  napi_delete_reference(env, r->buf_ref);
  if (r->out_ref) napi_delete_reference(env, r->out_ref);
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value js_crypt_async(napi_env env, napi_callback_info info) {
  napi_value argv[7], promise, name;
  crypt_req *r = calloc(1, sizeof *r);
  if (!r) {
    throw_msg(env, "out of memory");
    return NULL;
  }
  if (!parse(env, info, argv, r)) {
    free(r);
    return NULL;
  }
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok ||
      napi_create_reference(env, argv[0], 1, &r->handle_ref) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &r->buf_ref) != napi_ok ||
      (r->o != r->p && napi_create_reference(env, argv[6], 1, &r->out_ref) != napi_ok) ||
      napi_create_string_utf8(env, "sectorCrypt", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, crypt_execute, crypt_complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    /* Not reached in practice; the references (if any) leak with r. */
    throw_msg(env, "sectorCryptAsync: could not queue");
    return NULL;
  }
  r->c->inflight++;
  return promise;
}

static napi_value js_wipe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return NULL;
  sector_cipher *c = get_handle(env, argv[0]);
  if (!c) return NULL;
  c->wiped = true;
  if (c->inflight == 0) release(c);
  return NULL;
}

bool sector_cipher_init(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    { "sectorCipherNew", NULL, js_new, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sectorCrypt", NULL, js_crypt, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sectorCryptAsync", NULL, js_crypt_async, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sectorCipherWipe", NULL, js_wipe, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) == napi_ok;
}
