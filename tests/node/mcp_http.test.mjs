// A real MCP client over HTTP: @modelcontextprotocol/sdk's Client with its
// StreamableHTTPClientTransport against mnemod's /mcp. Results are checked
// against references computed here in double precision: normalization,
// and a brute-force cosine ranking of the stored memories.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RpcClient, randomRows, startServer } from './helpers.mjs';

const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } =
  await import('@modelcontextprotocol/sdk/client/streamableHttp.js');

// Every method of the engine (docs/API.md), each a tool.
const METHODS = [
  'processEmbeddings', 'fitPCA', 'listPCAModels', 'deletePCAModel',
  'getMetrics', 'health', 'cleanup', 'createCollection', 'listCollections',
  'getCollection', 'addMemories', 'storeMemory', 'getMemories',
  'updateMemory', 'searchMemories', 'deleteMemories', 'dropCollection',
  'allocateMemory', 'processChunk', 'readChunk', 'listChunks', 'freeMemory',
];

let srv, client, transport, endpoint;
before(async () => {
  srv = await startServer({ server: { rate_limit: 0 } });
  endpoint = new URL(`http://127.0.0.1:${srv.port}/mcp`);
  client = new Client({ name: 'mnemo-node-http-test', version: '1.0.0' });
  transport = new StreamableHTTPClientTransport(endpoint);
  await client.connect(transport);
});
after(async () => {
  await client.close();
  assert.equal(await srv.stop(), 0);
  // Under ASan + UBSan (MNEMOD from build-asan) any report fails the file.
  await new Promise(ok => setTimeout(ok, 100));
  const reports = srv.log.filter(l => /AddressSanitizer|LeakSanitizer|runtime error:/.test(l));
  assert.deepEqual(reports, []);
});

function unit(v) {
  let s = 0;
  for (const x of v) s += x * x;
  const n = Math.sqrt(s);
  return Array.from(v, x => (n > 0 ? x / n : 0));
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

async function tool(name, args) {
  const r = await client.callTool({ name, arguments: args });
  assert.notEqual(r.isError, true, `${name}: ${r.content?.[0]?.text}`);
  return r.structuredContent;
}

test('initialize: a session id, the server, its tools capability', () => {
  assert.match(transport.sessionId, /^[0-9a-f]{32}$/);
  assert.equal(client.getServerVersion().name, 'mnemo');
  assert.ok(client.getServerCapabilities().tools);
});

test('tools/list: every method, the same list as over the WebSocket',
     async () => {
  const { tools } = await client.listTools();
  const names = tools.map(t => t.name).sort();
  for (const m of METHODS) assert.ok(names.includes(m), m);
  const ws = await RpcClient.connect(srv.url);
  const viaWs = (await ws.call('tools/list', {})).tools.map(t => t.name);
  ws.close();
  assert.deepEqual(names, viaWs.sort());
  for (const t of tools) {
    assert.equal(t.inputSchema.type, 'object', t.name);
    assert.ok(t.outputSchema && t.outputSchema.type === 'object', t.name);
  }
});

test('tools/call processEmbeddings (normalize) matches a float64 reference',
     async () => {
  const rows = randomRows(12, 48, 7).map(r => Array.from(r));
  rows[3] = new Array(48).fill(0); // a zero row stays zero
  const out = await tool('processEmbeddings', {
    embeddings: rows, options: { normalize: true } });
  assert.equal(out.metadata.count, 12);
  assert.equal(out.metadata.dimensions, 48);
  assert.equal(out.metadata.zero_rows, 1);
  for (let i = 0; i < rows.length; i++) {
    const want = unit(rows[i]);
    for (let j = 0; j < 48; j++)
      assert.ok(Math.abs(out.processed[i][j] - want[j]) <= 2e-7,
                `row ${i} col ${j}: ${out.processed[i][j]} vs ${want[j]}`);
  }
});

test('createCollection, addMemories, searchMemories: the brute-force ranking',
     async () => {
  const dim = 24, n = 60, k = 7;
  const vecs = randomRows(n, dim, 11).map(r => Array.from(r));
  await tool('createCollection', { name: 'http_notes', dim,
                                   metric: 'cosine', dtype: 'float32' });
  const memories = vecs.map((v, i) => ({
    id: `m${i}`, embedding: v, content: `memory ${i}`,
    metadata: { i }, significance: 0.5 }));
  const added = await tool('addMemories', { collection: 'http_notes',
                                            memories });
  assert.equal(added.ids.length, n);
  const queries = randomRows(3, dim, 12).map(r => Array.from(r));
  const found = await tool('searchMemories', {
    collection: 'http_notes', query: queries, k,
    significance_weight: 0, time_decay: 0 });
  assert.equal(found.results.length, queries.length);
  for (let q = 0; q < queries.length; q++) {
    const qu = unit(queries[q]);
    const ranked = vecs
      .map((v, i) => ({ id: `m${i}`, sim: dot(qu, unit(v)) }))
      .sort((a, b) => b.sim - a.sim)
      .slice(0, k);
    const got = found.results[q];
    assert.equal(got.length, k);
    for (let r = 0; r < k; r++) {
      assert.ok(Math.abs(got[r].similarity - ranked[r].sim) < 1e-5,
                `query ${q} rank ${r}: ${got[r].similarity} vs ` +
                `${ranked[r].sim}`);
      // Ties closer than float32 can tell apart may swap places.
      if (r + 1 < k && ranked[r].sim - ranked[r + 1].sim > 1e-5 &&
          (r === 0 || ranked[r - 1].sim - ranked[r].sim > 1e-5))
        assert.equal(got[r].id, ranked[r].id, `query ${q} rank ${r}`);
      assert.equal(got[r].content, `memory ${Number(got[r].id.slice(1))}`);
    }
  }
});

test('DELETE ends the session; its id then gets 404', async () => {
  const sid = transport.sessionId;
  await transport.terminateSession();
  assert.equal(transport.sessionId, undefined);
  const r = await fetch(endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json',
               accept: 'application/json, text/event-stream',
               'mcp-session-id': sid,
               'mcp-protocol-version': transport.protocolVersion },
    body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'ping' }),
  });
  assert.equal(r.status, 404);
  const body = await r.json();
  assert.equal(body.error.code, -32600);
  assert.match(body.error.message, /no such MCP session/);
});
