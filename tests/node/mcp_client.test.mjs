// A real MCP client: @modelcontextprotocol/sdk's Client with its
// WebSocketClientTransport runs initialize (connect), tools/list and
// tools/call processEmbeddings against mnemod.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { WebSocket, startServer } from './helpers.mjs';

// The transport uses the global WebSocket (Node 22 has one; Node 18 and
// 20 do not), so give it npm ws's, which has the same interface.
globalThis.WebSocket ??= WebSocket;

const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
const { WebSocketClientTransport } =
  await import('@modelcontextprotocol/sdk/client/websocket.js');

let srv, client;
before(async () => {
  srv = await startServer({ server: { rate_limit: 0 } });
  client = new Client({ name: 'mnemo-node-test', version: '1.0.0' });
  await client.connect(new WebSocketClientTransport(new URL(srv.url)));
});
after(async () => {
  await client.close();
  assert.equal(await srv.stop(), 0);
});

test('initialize: server info, capabilities, instructions', () => {
  const info = client.getServerVersion();
  assert.equal(info.name, 'mnemo');
  assert.match(info.version, /^\d+\.\d+\.\d+/);
  assert.ok(client.getServerCapabilities().tools);
  const text = client.getInstructions();
  assert.ok(typeof text === 'string' && text.length > 20);
});

test('tools/list: every method is a tool with input and output schemas',
     async () => {
  const { tools } = await client.listTools();
  const names = tools.map(t => t.name);
  for (const n of ['processEmbeddings', 'fitPCA', 'listPCAModels',
                   'deletePCAModel', 'getMetrics', 'health', 'cleanup'])
    assert.ok(names.includes(n), n);
  for (const t of tools) {
    assert.equal(t.inputSchema.type, 'object', t.name);
    assert.ok(t.outputSchema && t.outputSchema.type === 'object', t.name);
    assert.ok(t.description && t.description.length > 10, t.name);
  }
});

test('tools/call processEmbeddings returns structuredContent', async () => {
  const r = await client.callTool({
    name: 'processEmbeddings',
    arguments: { embeddings: [[3, 4], [0, 2], [1, 1]],
                 options: { normalize: true } },
  });
  assert.notEqual(r.isError, true);
  const p = r.structuredContent.processed;
  const want = [[0.6, 0.8], [0, 1], [Math.SQRT1_2, Math.SQRT1_2]];
  for (let i = 0; i < 3; i++)
    for (let j = 0; j < 2; j++)
      assert.ok(Math.abs(p[i][j] - want[i][j]) < 1e-6);
  assert.equal(r.structuredContent.metadata.count, 3);
  // The text content carries the same result.
  const text = r.content.find(c => c.type === 'text');
  assert.deepEqual(JSON.parse(text.text).processed, p);
});

test('a failing tool comes back with isError, an unknown tool is -32602',
     async () => {
  const bad = await client.callTool({
    name: 'processEmbeddings', arguments: { embeddings: 'nope' } });
  assert.equal(bad.isError, true);
  assert.match(bad.content[0].text, /embeddings/);
  await assert.rejects(
    client.callTool({ name: 'noSuchTool', arguments: {} }),
    err => err.code === -32602);
});

test('ping', async () => {
  assert.deepEqual(await client.ping(), {});
});
