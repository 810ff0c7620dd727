// A Node.js `http` SSE server, as JavaScript apps write them: Date.now() stamps, OpenAI-style chunks,
// `data: [DONE]`. Each event's `id:` is "<n>-<wall clock ns when written>": the ground truth the
// tests' own recorder reads (the stream check does not look at ids).
//
//   /ms                   OpenAI-style chunks stamped with Date.now() (ms since the epoch)
//   /hrtime               stamped with process.hrtime.bigint() (ns on a relative clock)
//   /compressed           /ms behind the `compression` middleware, never flushed (what most apps do)
//   /compressed-flush     /ms behind `compression`, res.flush() after every event
//   /brotli               /ms, brotli-compressed with zlib and flushed after every event (when br is accepted)
//   /think                writeHead, then nothing for think_ms (1500): Node sends the headers with the first write
// Query: n (events, 20), interval_ms (50). Listens on 127.0.0.1:PORT (argv[2]); prints "ready" when it does.
'use strict';
const http = require('http');
const zlib = require('zlib');
const compression = require('compression');

const gzipAll = compression({ filter: () => true });

function wallNs() {
  return BigInt(Date.now()) * 1000000n;
}

function stamp(kind) {
  return kind === 'hrtime' ? Number(process.hrtime.bigint()) : Date.now();
}

function chunk(i, kind) {
  const body = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1780000000, ts: stamp(kind),
    choices: [{ index: 0, delta: { content: `tok${i} ` } }] };
  return `id: ${i}-${wallNs()}\ndata: ${JSON.stringify(body)}\n\n`;
}

function stream(req, res, { kind = 'ms', flush = false, out = res } = {}) {
  const url = new URL(req.url, 'http://localhost');
  const n = Number(url.searchParams.get('n') || 20);
  const interval = Number(url.searchParams.get('interval_ms') || 50);
  let i = 0;
  const timer = setInterval(() => {
    if (i < n) {
      out.write(chunk(i, kind));
      if (flush) out.flush();
      i += 1;
      return;
    }
    clearInterval(timer);
    out.end('data: [DONE]\n\n');
  }, interval);
  req.on('close', () => clearInterval(timer));
}

function sseHead(res, extra = {}) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', ...extra });
}

const routes = {
  '/ms': (req, res) => { sseHead(res); stream(req, res); },
  '/hrtime': (req, res) => { sseHead(res); stream(req, res, { kind: 'hrtime' }); },
  '/think': (req, res) => {
    sseHead(res);
    const pause = Number(new URL(req.url, 'http://localhost').searchParams.get('think_ms') || 1500);
    const timer = setTimeout(() => stream(req, res), pause);
    req.on('close', () => clearTimeout(timer));
  },
  '/compressed': (req, res) => gzipAll(req, res, () => { sseHead(res); stream(req, res); }),
  '/compressed-flush': (req, res) => gzipAll(req, res, () => { sseHead(res); stream(req, res, { flush: true }); }),
  '/brotli': (req, res) => {
    if (!/\bbr\b/.test(req.headers['accept-encoding'] || '')) { sseHead(res); stream(req, res); return; }
    sseHead(res, { 'Content-Encoding': 'br', Vary: 'Accept-Encoding' });
    const br = zlib.createBrotliCompress();
    br.pipe(res);
    stream(req, res, { flush: true, out: br });
  },
};

const server = http.createServer((req, res) => {
  const route = routes[new URL(req.url, 'http://localhost').pathname];
  if (!route) { res.writeHead(404); res.end('not found\n'); return; }
  route(req, res);
});
server.listen(Number(process.argv[2]), '127.0.0.1', () => console.log('ready'));
