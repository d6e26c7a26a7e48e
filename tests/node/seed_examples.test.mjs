// The seed's TypeScript examples (SYSTEM_OVERVIEW.md, "Integration Points"
// and "Quick Reference"), shape for shape, with npm `ws` against a real
// mnemod. Results are checked against invariants computed here.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RpcClient, WebSocket, open, randomRows, startServer }
  from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ server: { rate_limit: 0 } }); });
after(async () => { assert.equal(await srv.stop(), 0); });

function norm(v) {
  let s = 0;
  for (const x of v) s += x * x;
  return Math.sqrt(s);
}

test("new WebSocket('ws://localhost:PORT', 'mcp') gets the mcp subprotocol",
     async () => {
  const client = new WebSocket(srv.url, 'mcp');
  await new Promise((ok, fail) => { client.once('open', ok);
                                    client.once('error', fail); });
  assert.equal(client.protocol, 'mcp');
  client.close();
  const plain = await open(srv.url, null); // no subprotocol at all
  assert.equal(plain.protocol, '');
  plain.close();
});

test('Integration Points: Float32Array embeddings with ' +
     '{dimension_reduction: true, quantization: true}', async () => {
  const service = await RpcClient.connect(srv.url);
  // dimension_reduction: true on one vector uses the model named
  // "default", which the application fits once.
  const train = randomRows(300, 768, 1);
  const fit = await service.call('fitPCA', {
    name: 'default', embeddings: train, n_components: 64 });
  assert.equal(fit.n_components, 64);

  const embeddings = randomRows(1, 768, 2)[0]; // a Float32Array
  const client = await open(srv.url, 'mcp');
  const reply = new Promise(ok => client.once('message', d => ok(
    JSON.parse(d.toString()))));
  // The seed writes client.send({...}); over a real socket that object is
  // JSON text, and JSON.stringify turns the Float32Array into {"0": ...}.
  client.send(JSON.stringify({
    jsonrpc: '2.0', id: 1, method: 'processEmbeddings',
    params: { embeddings, options: { dimension_reduction: true,
                                     quantization: true } },
  }));
  const r = await reply;
  client.close();
  assert.deepEqual(Object.keys(r).sort(), ['id', 'jsonrpc', 'result']);
  const res = r.result;
  assert.equal(res.metadata.dtype, 'int8');
  assert.equal(res.metadata.dimensions, 64);
  const codes = res.processed.flat ? res.processed.flat() : res.processed;
  assert.equal(codes.length, 64);
  assert.ok(codes.every(c => Number.isInteger(c) && Math.abs(c) <= 127));
  const scale = Array.isArray(res.scales) ? res.scales[0] : res.scales;
  // The same reduction without quantization: codes * scale must be
  // within half a step of it.
  const exact = await service.processEmbeddings({
    embeddings, options: { dimension_reduction: true } });
  const y = exact.processed.flat ? exact.processed.flat() : exact.processed;
  assert.equal(y.length, 64);
  const maxAbs = Math.max(...y.map(Math.abs));
  assert.ok(Math.abs(scale - maxAbs / 127) <= 1e-6 * maxAbs);
  for (let i = 0; i < 64; i++)
    assert.ok(Math.abs(codes[i] * scale - y[i]) <= scale * 0.5 + 1e-6);
  service.close();
});

test('Quick Reference: processEmbeddings({embeddings, options: ' +
     '{normalize: true, reduce_dimensions: 256}}) and getMetrics()',
     async () => {
  const service = await RpcClient.connect(srv.url);
  const rows = 300, cols = 768, k = 256;
  const embeddings = randomRows(rows, cols, 3); // Float32Array rows
  const result = await service.processEmbeddings({
    embeddings, options: { normalize: true, reduce_dimensions: k } });
  assert.equal(result.metadata.dimensions, k);
  assert.equal(result.metadata.count, rows);
  const Y = result.processed;
  assert.equal(Y.length, rows);
  assert.equal(Y[0].length, k);
  // A PCA projection of the normalized, centred rows: every column has
  // mean 0, the columns are uncorrelated, variances come in decreasing
  // order, and they add up to the reported share of the total variance.
  const X = embeddings.map(v => { const n = norm(v);
                                  return Array.from(v, x => x / n); });
  const mean = new Float64Array(cols);
  for (const r of X) for (let j = 0; j < cols; j++) mean[j] += r[j] / rows;
  let total = 0;
  for (const r of X) for (let j = 0; j < cols; j++)
    total += (r[j] - mean[j]) ** 2 / (rows - 1);
  const colMean = new Float64Array(k), colVar = new Float64Array(k);
  for (const r of Y) for (let j = 0; j < k; j++) colMean[j] += r[j] / rows;
  for (const r of Y) for (let j = 0; j < k; j++)
    colVar[j] += (r[j] - colMean[j]) ** 2 / (rows - 1);
  const scale = Math.sqrt(colVar[0]);
  for (let j = 0; j < k; j++) assert.ok(Math.abs(colMean[j]) < 1e-4 * scale);
  for (let j = 1; j < k; j++)
    assert.ok(colVar[j] <= colVar[j - 1] * (1 + 1e-3) + 1e-9);
  let cov01 = 0;
  for (const r of Y) cov01 += (r[0] - colMean[0]) * (r[1] - colMean[1]);
  cov01 /= rows - 1;
  assert.ok(Math.abs(cov01) < 1e-3 * Math.sqrt(colVar[0] * colVar[1]));
  const share = colVar.reduce((a, b) => a + b, 0) / total;
  assert.ok(Math.abs(share - result.metadata.total_explained_variance) <
            1e-3);

  const metrics = await service.getMetrics();
  for (const key of ['chunks', 'usage', 'available'])
    assert.ok(key in metrics.memory, key);
  for (const key of ['gpu_memory', 'cpu_memory', 'active_processes'])
    assert.ok(key in metrics.hpc, key);
  assert.ok(metrics.requests.by_method.processEmbeddings.count >= 1);
  service.close();
});

test('Error Handling: a ResourceError leads to cleanup()', async () => {
  const small = await startServer({ processing: { cache_size: '64KB' } });
  const service = await RpcClient.connect(small.url);
  let caught;
  try {
    await service.processEmbeddings({ embeddings: randomRows(200, 256, 4) });
  } catch (error) {
    caught = error;
    if (error.code === -32000) await service.cleanup();
  }
  assert.ok(caught, 'expected a resource error');
  assert.equal(caught.code, -32000);
  assert.ok(caught.data.requested > caught.data.available);
  const freed = await service.cleanup();
  assert.ok('freed_bytes' in freed);
  service.close();
  assert.equal(await small.stop(), 0);
});
