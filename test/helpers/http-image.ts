/**
 * An image file served over HTTP or HTTPS from the test process (node:http),
 * for the http/https drivers: byte ranges or not, a required cookie or
 * basic-auth login, and faults: `stall()` makes GETs send half their bytes
 * and then nothing; `kill()` drops every connection and stops listening (a
 * killed server). Every request is logged with its headers.
 */
import { createServer as createHttp, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';

export interface ImageServerOptions {
  /** Files by URL path ('/disk.raw' -> a file name). */
  files: Record<string, string>;
  /** Answer Range requests and say Accept-Ranges: bytes (default true). */
  ranges?: boolean;
  /** PEM certificate and key: serve HTTPS. */
  tls?: { cert: string; key: string };
  /** The Cookie header every request must carry, else 403. */
  cookie?: string;
  /** user:password every request must log in with (Basic), else 401. */
  login?: string;
}

export interface ImageServer {
  port: number;
  url(path: string): string;
  requests: { method: string; url: string; headers: IncomingMessage['headers'] }[];
  /** From now on GETs send their headers and half their bytes, then hang. */
  stall(): void;
  /** Drops every connection and stops listening. */
  kill(): Promise<void>;
}

export async function startImageServer(o: ImageServerOptions): Promise<ImageServer> {
  const ranges = o.ranges ?? true;
  const requests: ImageServer['requests'] = [];
  const sockets = new Set<Socket>();
  let stalled = false;
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const file = o.files[req.url ?? ''];
    if (o.login !== undefined && req.headers.authorization !== `Basic ${Buffer.from(o.login).toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="images"' }).end();
      return;
    }
    if (o.cookie !== undefined && req.headers.cookie !== o.cookie) { res.writeHead(403).end(); return; }
    if (file === undefined) { res.writeHead(404).end('not here'); return; }
    const data = readFileSync(file);
    const common: Record<string, string | number> = ranges ? { 'accept-ranges': 'bytes' } : {};
    if (req.method === 'HEAD') { res.writeHead(200, { ...common, 'content-length': data.length }).end(); return; }
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let body = data;
    if (ranges && m) {
      const a = Number(m[1]);
      const b = Math.min(m[2] ? Number(m[2]) : data.length - 1, data.length - 1);
      body = data.subarray(a, b + 1);
      res.writeHead(206, { ...common, 'content-length': body.length, 'content-range': `bytes ${a}-${b}/${data.length}` });
    } else {
      res.writeHead(200, { ...common, 'content-length': data.length });
    }
    if (stalled) { res.write(body.subarray(0, body.length >> 1)); return; }
    res.end(body);
  };
  const server: Server = o.tls ? createHttps({ cert: o.tls.cert, key: o.tls.key }, handler) : createHttp(handler);
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const scheme = o.tls ? 'https' : 'http';
  return {
    port, requests,
    url: (path) => `${scheme}://127.0.0.1:${port}${path}`,
    stall: () => { stalled = true; },
    async kill() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
