/*
 * Adaptive polling of the main event loop, after QEMU's IOThread polling
 * (poll-max-ns):
 *
 *   loopPollSet(maxNs) -> void   (0 turns polling off)
 *   loopPollStats() -> { pollNs, maxNs, polls, hits }
 *
 * Just before libuv's loop would sleep in epoll_wait (a uv_prepare handle),
 * it busy-waits up to the current window for its epoll descriptor to become
 * readable: that descriptor is readable as soon as any watched descriptor
 * (a client's socket, the thread pool's completion eventfd, a timer's...)
 * has an event. On a virtual machine, sleeping and being woken by the next
 * request costs tens of microseconds, which at queue depth 1 is most of the
 * round trip; an event that arrives inside the window is taken without it.
 *
 * The window is either open (maxNs) or closed, from the time the loop took
 * to get its event (block time, measured by a uv_check handle after
 * epoll_wait). Open: two waits in a row longer than the window close it for
 * a number of short waits that doubles each time (up to 1024) and goes back
 * to 1 at the first event caught. Closed: a wait shorter than 4 x maxNs (one
 * that polling could have caught, had the sleep's own cost not been in it)
 * counts towards reopening. QEMU's own rule (grow while the block time is
 * under the maximum, reset on one longer) measured worse here: a wait with
 * the sleep in it is longer than the maximum, so a closed window stayed
 * closed. An idle daemon does not poll: long waits never reopen the window.
 *
 * The loop does not poll when it has work already due (a zero timeout: an
 * immediate, an expired timer), nor while thread-pool work is in flight
 * (libuv's active requests): the event it waits for then comes from a
 * thread of this process, which needs the core the spinning would take.
 * The handles are unreferenced: they never keep the loop alive. Each event
 * loop (the main thread's, an iothread worker's) has its own state, kept as
 * the addon's instance data of that thread's environment; the handles are
 * closed by an environment cleanup hook, before the loop is.
 */
#include <node_api.h>
#include <uv.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define PROBE_FACTOR 4
#define BACKOFF_MAX 1024

typedef struct {
  uv_prepare_t prepare;
  uv_check_t check;
  int64_t max_ns;
  /* The window: open (maxNs) or closed. */
  bool open_window;
  int64_t miss_run, rest, backoff;
  int64_t block_start;
  double polls, hits;
  int open_handles;
} poller;

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void on_prepare(uv_prepare_t *h) {
  poller *p = h->data;
  p->block_start = 0;
  /* Thread-pool work (file I/O, async napi work) in flight: the event awaited is a
   * local thread's completion, and spinning would take the core that thread needs.
   * Such a wait says nothing about the clients either, so it is not measured. */
  if (p->max_ns == 0 || uv_backend_timeout(h->loop) == 0 || h->loop->active_reqs.count > 0) return;
  p->block_start = now_ns();
  if (!p->open_window) return;
  p->polls++;
  struct pollfd pfd = { .fd = uv_backend_fd(h->loop), .events = POLLIN };
  for (;;) {
    if (poll(&pfd, 1, 0) > 0) { p->hits++; return; }
    if (now_ns() - p->block_start >= p->max_ns) return;
  }
}

static void on_check(uv_check_t *h) {
  poller *p = h->data;
  if (p->block_start == 0) return;
  int64_t block_ns = now_ns() - p->block_start;
  p->block_start = 0;
  if (p->open_window) {
    if (block_ns <= p->max_ns) { p->miss_run = 0; p->backoff = 1; return; }
    /* Two waits in a row longer than the window: events come too seldom to be caught; rest. */
    if (++p->miss_run < 2) return;
    p->open_window = false;
    p->rest = p->backoff;
    if (p->backoff < BACKOFF_MAX) p->backoff *= 2;
    return;
  }
  /* Resting: a wait short enough that, without the sleep's own cost, polling could have caught it. */
  if (block_ns >= PROBE_FACTOR * p->max_ns) return;
  if (p->rest > 0) { p->rest--; return; }
  p->open_window = true;
  p->miss_run = 0;
}

static void on_closed(uv_handle_t *h) {
  poller *p = h->data;
  if (--p->open_handles == 0) free(p);
}

/* The environment is going away (a worker ending): close the handles while its loop still runs. */
static void cleanup(void *arg) {
  poller *p = arg;
  uv_close((uv_handle_t *)&p->prepare, on_closed);
  uv_close((uv_handle_t *)&p->check, on_closed);
}

/* This thread's poller, made (and its handles started) on first use. */
static poller *poller_of(napi_env env) {
  poller *p = NULL;
  if (napi_get_instance_data(env, (void **)&p) == napi_ok && p) return p;
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return NULL;
  p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->backoff = 1;
  if (napi_set_instance_data(env, p, NULL, NULL) != napi_ok || napi_add_env_cleanup_hook(env, cleanup, p) != napi_ok) {
    free(p);
    return NULL;
  }
  uv_prepare_init(loop, &p->prepare);
  uv_check_init(loop, &p->check);
  p->prepare.data = p->check.data = p;
  p->open_handles = 2;
  uv_prepare_start(&p->prepare, on_prepare);
  uv_check_start(&p->check, on_check);
  uv_unref((uv_handle_t *)&p->prepare);
  uv_unref((uv_handle_t *)&p->check);
  return p;
}

static bool get_nonneg(napi_env env, napi_value v, int64_t *out) {
  if (napi_get_value_int64(env, v, out) != napi_ok || *out < 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "loopPollSet: maxNs must be an integer >= 0");
    return false;
  }
  return true;
}

static napi_value js_loop_poll_set(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t m;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, NULL, "loopPollSet(maxNs)");
    return NULL;
  }
  if (!get_nonneg(env, argv[0], &m)) return NULL;
  poller *p = poller_of(env);
  if (!p) {
    napi_throw_error(env, NULL, "loopPollSet: cannot watch this thread's event loop");
    return NULL;
  }
  p->max_ns = m;
  if (m == 0) p->open_window = false;
  return NULL;
}

static bool set_num(napi_env env, napi_value obj, const char *name, double v) {
  napi_value n;
  return napi_create_double(env, v, &n) == napi_ok && napi_set_named_property(env, obj, name, n) == napi_ok;
}

static napi_value js_loop_poll_stats(napi_env env, napi_callback_info info) {
  poller *p = NULL;
  napi_get_instance_data(env, (void **)&p);
  poller none = { .max_ns = 0 };
  if (!p) p = &none;
  napi_value out;
  if (napi_create_object(env, &out) != napi_ok) return NULL;
  if (!set_num(env, out, "pollNs", p->open_window ? (double)p->max_ns : 0) || !set_num(env, out, "maxNs", (double)p->max_ns) ||
      !set_num(env, out, "polls", p->polls) || !set_num(env, out, "hits", p->hits)) return NULL;
  return out;
}

bool loop_poll_init(napi_env env, napi_value exports) {
  napi_value a, b;
  return napi_create_function(env, "loopPollSet", NAPI_AUTO_LENGTH, js_loop_poll_set, NULL, &a) == napi_ok &&
         napi_set_named_property(env, exports, "loopPollSet", a) == napi_ok &&
         napi_create_function(env, "loopPollStats", NAPI_AUTO_LENGTH, js_loop_poll_stats, NULL, &b) == napi_ok &&
         napi_set_named_property(env, exports, "loopPollStats", b) == napi_ok;
}
