/**
 * The HTTP endpoint: GET /metrics answers the registry's text exposition
 * (Prometheus text format 0.0.4), read from the daemon's counters at that
 * moment; anything else is 404 (405 for another method on /metrics). It
 * listens on TCP or a Unix socket (a stale socket file is replaced, and
 * removed at close, as the NBD server does).
 */
import { createServer, type Server } from 'node:http';
import { lstatSync, unlinkSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { MetricsOptionsValue } from './options.ts';

export class MetricsServer {
  private constructor(private readonly server: Server, private readonly unixPath?: string) {}

  /** `beforeScrape` brings the sources up to date first (what the iothreads counted). */
  static async start(opts: MetricsOptionsValue, registry: Registry, onError: (err: Error) => void, beforeScrape?: () => void): Promise<MetricsServer> {
    const a = opts.addr;
    const server = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
        return;
      }
      beforeScrape?.();
      registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': registry.contentType });
        // prom-client 15 writes NaN as "Nan" (an event-loop lag mean with no sample since the last scrape); the text format says "NaN".
        res.end(req.method === 'HEAD' ? undefined : text.replace(/ Nan$/gm, ' NaN'));
      }, (err: Error) => {
        onError(err);
        res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed\n');
      });
    });
    if (a.type === 'unix') {
      try {
        if (lstatSync(a.path).isSocket()) unlinkSync(a.path);
      } catch { /* absent */ }
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const ready = () => {
        server.off('error', reject);
        server.on('error', onError);
        resolve();
      };
      if (a.type === 'unix') server.listen(a.path, ready);
      else {
        const port = Number(a.port);
        if (!/^\d+$/.test(a.port) || port > 65535) {
          reject(new Error(`address resolution failed for ${a.host}:${a.port}: Servname not supported for ai_socktype`));
          return;
        }
        server.listen({ host: a.host || undefined, port }, ready);
      }
    });
    return new MetricsServer(server, a.type === 'unix' ? a.path : undefined);
  }

  /** The TCP port bound (for addr.port=0), if on TCP. */
  get port(): number | undefined {
    const addr = this.server.address();
    return addr && typeof addr === 'object' ? (addr as AddressInfo).port : undefined;
  }

  /** Stops listening and ends idle keep-alive connections. Idempotent. */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    await new Promise<void>((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
    if (this.unixPath) {
      try { unlinkSync(this.unixPath); } catch { /* already gone */ }
    }
  }
}
