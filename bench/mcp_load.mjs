// mcp_load.mjs - a closed-loop load generator for MCP's Streamable HTTP
// transport: N keep-alive connections, each its own MCP session
// (initialize, notifications/initialized), then tools/call
// processEmbeddings {normalize} on a rows x width batch of JSON numbers, one
// request in flight per connection (HTTP/1.1 without pipelining).
//
//   node bench/mcp_load.mjs --url http://127.0.0.1:3001/mcp [--conns 16]
//        [--duration 5] [--warmup 1] [--rows 32] [--width 768] [--label L]
//
// Prints one JSON line: requests/s, errors, p50 / p90 / p99 / max latency
// (ms). The first reply of every session is checked against a
// double-precision normalisation (every element within 1e-6); the others
// must be HTTP 200 with a result that is not an error.
import { Agent, request } from 'node:http';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const url = new URL(args.url || 'http://127.0.0.1:3001/mcp');
const conns = Number(args.conns || 16);
const duration = Number(args.duration || 5);
const warmup = Number(args.warmup || 1);
const rows = Number(args.rows || 32);
const width = Number(args.width || 768);

// Fixed data: rows x width uniform values written with 7 digits.
let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const x = Array.from({ length: rows }, () =>
  Array.from({ length: width }, () => Number(rnd().toFixed(7))));
const params = JSON.stringify({ name: 'processEmbeddings',
  arguments: { embeddings: x, options: { normalize: true } } });
const head = Buffer.from('{"jsonrpc":"2.0","method":"tools/call","params":' +
                         params + ',"id":');
const ref = x.map((r) => {
  const n = Math.sqrt(r.reduce((s, v) => s + v * v, 0));
  return r.map((v) => v / n);
});

function post(agent, body, headers) {
  return new Promise((ok, fail) => {
    const req = request({ agent, host: url.hostname, port: url.port,
      path: url.pathname, method: 'POST', headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'content-length': body.length, ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => ok({ status: res.statusCode, headers: res.headers,
                               body: Buffer.concat(chunks) }));
      res.on('error', fail);
    });
    req.on('error', fail);
    req.end(body);
  });
}

function checkFirst(body) {
  const r = JSON.parse(body.toString());
  const got = r.result && r.result.structuredContent &&
              r.result.structuredContent.processed;
  if (!got || got.length !== rows) throw new Error('no processed rows: ' +
                                                   body.toString().slice(0, 300));
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < width; j++)
      if (Math.abs(got[i][j] - ref[i][j]) > 1e-6)
        throw new Error(`processed[${i}][${j}] = ${got[i][j]}, want ${ref[i][j]}`);
}

const lat = [];
let done = 0, errors = 0, firstError = null;
const t0 = performance.now();
const tStart = t0 + warmup * 1000, tEnd = tStart + duration * 1000;

async function session() {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const init = await post(agent, Buffer.from(JSON.stringify({
    jsonrpc: '2.0', id: 0, method: 'initialize', params: {
      protocolVersion: '2025-06-18', capabilities: {},
      clientInfo: { name: 'mcp_load', version: '1' } } })), {});
  if (init.status !== 200) throw new Error(`initialize: HTTP ${init.status} ` +
                                           init.body.toString().slice(0, 200));
  const sid = init.headers['mcp-session-id'];
  const hdr = sid ? { 'mcp-session-id': sid,
                      'mcp-protocol-version': '2025-06-18' } : {};
  await post(agent, Buffer.from(
    '{"jsonrpc":"2.0","method":"notifications/initialized"}'), hdr);
  for (let id = 1; ; id++) {
    const sent = performance.now();
    if (sent >= tEnd) break;
    const r = await post(agent, Buffer.concat([head, Buffer.from(`${id}}`)]),
                         hdr);
    const now = performance.now();
    let ok = r.status === 200;
    try {
      if (ok && id === 1) checkFirst(r.body);
      else if (ok) {
        const s = r.body.toString('latin1', 0, 64);
        ok = s.includes('"result"') && !r.body.includes('"isError":true');
      }
    } catch (e) {
      ok = false;
      firstError = firstError || String(e);
    }
    if (!ok && !firstError) firstError = `HTTP ${r.status} ` +
                                         r.body.toString().slice(0, 200);
    if (sent >= tStart && now <= tEnd) {
      if (ok) { done++; lat.push(now - sent); } else errors++;
    }
  }
  agent.destroy();
}

await Promise.all(Array.from({ length: conns }, session));
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1,
                                             Math.floor(p * lat.length))] : 0);
console.log(JSON.stringify({
  label: args.label || '', transport: 'mcp-http', conns, rows, width,
  rps: done / duration, errors, first_error: firstError,
  p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99),
  max_ms: lat.length ? lat[lat.length - 1] : 0 }));
