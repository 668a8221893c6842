/**
 * HTTP(S) requests of one curl node over undici: a keep-alive pool of up to
 * CONNECTIONS connections per origin (QEMU's CURL_NUM_STATES transfers at a
 * time), redirects followed (CURLOPT_FOLLOWLOCATION), the headers libcurl
 * would send for the node's cookie and credentials, a time limit on each
 * whole request (CURLOPT_TIMEOUT), status codes of 400 and up as errors
 * (CURLOPT_FAILONERROR), and the proxy from the environment (proxy.ts).
 */
import { Agent, ProxyAgent, interceptors, type Dispatcher } from 'undici';
import { BlockError } from '../../../util/errors.ts';
import type { CurlConfig } from './options.ts';
import { proxyFor } from './proxy.ts';

/** Transfers in flight per node (QEMU's CURL_NUM_STATES). */
export const CONNECTIONS = 8;
/** libcurl's default CURLOPT_MAXREDIRS (since 8.3). */
const MAX_REDIRECTS = 30;

/** A failed request; `transient` ones (a dropped connection, a 5xx gateway status) may succeed if tried again. */
export class HttpError extends Error {
  constructor(message: string, readonly transient: boolean) { super(message); this.name = 'HttpError'; }
}

const basic = (user: string, password: string | undefined) => `Basic ${Buffer.from(`${user}:${password ?? ''}`).toString('base64')}`;

export class CurlTransport {
  private readonly dispatcher: Dispatcher;
  private readonly base: Dispatcher;
  private readonly headers: Record<string, string> = {};
  readonly url: URL;

  constructor(readonly cfg: CurlConfig) {
    this.url = new URL(cfg.url);
    const tls = { rejectUnauthorized: cfg.sslverify };
    const proxy = proxyFor(this.url);
    if (proxy === undefined && (cfg.proxyUsername !== undefined || cfg.proxyPassword !== undefined)) {
      // libcurl would keep them for a proxy that is never used; blockd says so instead of ignoring them.
      throw new BlockError('EINVAL', `proxy-username and proxy-password-secret need a proxy for '${cfg.url}': `
        + 'blockd takes it from the environment as libcurl does (http_proxy, https_proxy, all_proxy; no_proxy)');
    }
    this.base = proxy === undefined
      ? new Agent({ connections: CONNECTIONS, connect: tls })
      : new ProxyAgent({
        uri: proxy, connections: CONNECTIONS, requestTls: tls,
        // As libcurl: an http URL goes to the proxy as an absolute-form request, an https one through CONNECT.
        proxyTunnel: this.url.protocol === 'https:',
        ...(cfg.proxyUsername !== undefined ? { token: basic(cfg.proxyUsername, cfg.proxyPassword) } : {}),
      });
    this.dispatcher = this.base.compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTS }));
    if (cfg.cookie !== undefined) this.headers.cookie = cfg.cookie;
    if (cfg.username !== undefined || cfg.password !== undefined) this.headers.authorization = basic(cfg.username ?? '', cfg.password);
  }

  private signal(): AbortSignal | undefined {
    return this.cfg.timeoutMs > 0 ? AbortSignal.timeout(this.cfg.timeoutMs) : undefined;
  }

  /** HEAD: the size (content-length) and whether the server takes byte ranges (curl_header_cb's exact test). */
  async head(): Promise<{ size: number | undefined; acceptRanges: boolean }> {
    const r = await this.send('HEAD', {});
    await r.body.dump();
    const cl = r.headers['content-length'];
    const size = typeof cl === 'string' && /^\s*\d+\s*$/.test(cl) ? Number(cl) : undefined;
    const ar = r.headers['accept-ranges'];
    const values = Array.isArray(ar) ? ar : ar === undefined ? [] : [ar];
    return { size, acceptRanges: values.some((v) => v.trim() === 'bytes') };
  }

  /** GET of bytes [offset, offset + buf.length) into `buf`; a server that answers with other bytes fails the request. */
  async getRange(offset: number, buf: Buffer): Promise<void> {
    const end = offset + buf.length - 1;
    const signal = this.signal();
    const r = await this.send('GET', { range: `bytes=${offset}-${end}` }, signal);
    try {
      if (r.statusCode !== 206 && !(r.statusCode === 200 && offset === 0)) {
        throw new HttpError(`The server answered a byte range request with status ${r.statusCode}`, false);
      }
      const cr = r.headers['content-range'];
      if (r.statusCode === 206 && typeof cr === 'string' && !cr.trim().startsWith(`bytes ${offset}-`)) {
        throw new HttpError(`The server sent the range '${cr}' for bytes=${offset}-${end}`, false);
      }
      let at = 0;
      for await (const chunk of r.body as AsyncIterable<Buffer>) {
        const n = Math.min(chunk.length, buf.length - at);
        chunk.copy(buf, at, 0, n);
        at += n;
        // A 200 with the whole file: the bytes wanted are its prefix.
        if (at === buf.length) break;
      }
      if (at < buf.length) throw new HttpError(`Transferred a partial file (${at} of ${buf.length} bytes)`, true);
    } finally {
      if (!r.body.destroyed) r.body.destroy();
    }
  }

  private async send(method: 'HEAD' | 'GET', extra: Record<string, string>, signal = this.signal()): Promise<Dispatcher.ResponseData> {
    let r: Dispatcher.ResponseData;
    try {
      r = await this.dispatcher.request({
        origin: this.url.origin, path: this.url.pathname + this.url.search, method,
        headers: { accept: '*/*', ...this.headers, ...extra }, signal,
      });
    } catch (e) {
      throw describe(e, this.cfg.timeoutMs, this.url);
    }
    if (r.statusCode >= 400) {
      await r.body.dump().catch(() => undefined);
      throw new HttpError(`The requested URL returned error: ${r.statusCode}`, r.statusCode >= 500);
    }
    return r;
  }

  async close(): Promise<void> {
    await this.base.destroy().catch(() => undefined);
  }
}

/** An undici or socket error as a line in libcurl's words where there is one. */
export function describe(e: unknown, timeoutMs: number, url: URL): HttpError {
  if (e instanceof HttpError) return e;
  const err = e as { name?: string; code?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = err.code ?? err.cause?.code;
  // undici's ProxyAgent throws for the proxy's own refusal ("Proxy Authentication Required (407)"); libcurl reports the status.
  const proxyStatus = /^Proxy .*\((\d{3})\)$/.exec(err.message ?? '');
  if (proxyStatus) return new HttpError(`The requested URL returned error: ${proxyStatus[1]}`, Number(proxyStatus[1]) >= 500);
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return new HttpError(`Operation timed out after ${timeoutMs} milliseconds`, false);
  if (code === 'ECONNREFUSED') {
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    return new HttpError(`Failed to connect to ${url.hostname} port ${port}: Couldn't connect to server`, true);
  }
  if (code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|HOSTNAME/.test(code)) {
    return new HttpError(`SSL certificate problem: ${err.message ?? code}`, false);
  }
  const transient = code === 'ECONNRESET' || code === 'EPIPE' || code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CLOSED' || code === 'ETIMEDOUT';
  return new HttpError(err.message ?? String(e), transient);
}
