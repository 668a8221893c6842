// A plain image file server for bench/http.sh: HEAD with Accept-Ranges, GET with one byte range streamed from the file.
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
const [file, portFile] = process.argv.slice(2);
const size = statSync(file).size;
const server = createServer((req, res) => {
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  if (req.method === 'HEAD' || !m) {
    res.writeHead(200, { 'accept-ranges': 'bytes', 'content-length': size });
    if (req.method === 'HEAD') { res.end(); return; }
    createReadStream(file).pipe(res);
    return;
  }
  const a = Number(m[1]);
  const b = Math.min(m[2] ? Number(m[2]) : size - 1, size - 1);
  res.writeHead(206, { 'accept-ranges': 'bytes', 'content-length': b - a + 1, 'content-range': `bytes ${a}-${b}/${size}` });
  createReadStream(file, { start: a, end: b, highWaterMark: 1 << 20 }).pipe(res);
});
server.keepAliveTimeout = 30_000;
server.listen(0, '127.0.0.1', async () => {
  const { writeFileSync } = await import('node:fs');
  writeFileSync(portFile, String(server.address().port));
});
