// clients/js (npm package mnemo-client) against a real mnemod: every
// method through the library, checked against references computed here in
// double precision (normalization, PCA by a Jacobi eigensolver, int8 codes,
// brute-force search); binary frames and JSON give the same numbers; typed
// errors; client timeouts; a connection lost mid-request; reconnect; auth
// tokens; many requests in flight; the seed's Quick Reference as written;
// and the hand-written index.d.ts type-checked with tsc.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { WebSocket, randomRows, randoms, startServer } from './helpers.mjs';
import {
  ConnectionError, InternalError, InvalidParamsError, InvalidRequestError,
  MethodNotFoundError, MnemoClient, MnemoError, OverloadedError, ParseError,
  ProcessingError, RateLimitError, ResourceError, Tensor, TimeoutError,
  connect, hpcServiceFactory,
} from '../../clients/js/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const CLIENT_DIR = join(here, '..', '..', 'clients', 'js');

let srv, client;
before(async () => {
  srv = await startServer({ server: { rate_limit: 0 } });
  // No options.WebSocket: Node 20 has no global one, so this finds npm ws
  // (from the working directory, as an application's would be found).
  client = await connect(srv.url, { timeout: 20000 });
});
after(async () => {
  await client.close();
  await stopClean(srv);
});

// Stop a server that was not killed: it must exit 0 with no sanitizer
// report in its log (mnemod built with MNEMO_SANITIZE).
async function stopClean(s) {
  const rc = await s.stop();
  const bad = s.log.filter(l => /runtime error|Sanitizer/.test(l));
  assert.deepEqual(bad, []);
  assert.equal(rc, 0, s.log.slice(-20).join('\n'));
}

// --- references in double precision ---------------------------------------

const rowsOf = (t) => t instanceof Tensor ? t.toArray() : t;

function normalized(v) {
  let s = 0;
  for (const x of v) s += x * x;
  const n = Math.sqrt(s);
  return Array.from(v, x => (n > 0 ? x / n : 0));
}

function close(a, b, tol, what) {
  assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (tol ${tol})`);
}

// float32 results: JSON decimals read back as the same float32 the binary
// frame carries.
function sameFloat32(tensor, json, what) {
  assert.ok(tensor instanceof Tensor, `${what}: not a Tensor`);
  const flat = json.flat();
  assert.equal(tensor.data.length, flat.length, what);
  for (let i = 0; i < flat.length; i++)
    assert.equal(tensor.data[i], Math.fround(flat[i]), `${what} [${i}]`);
}

// Eigen-decomposition of a symmetric matrix (cyclic Jacobi), in doubles.
function symEig(A) {
  const n = A.length;
  const a = A.map(r => [...r]);
  const v = a.map((_, i) => a.map((_, j) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) off += a[p][q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p][q]) < 1e-300) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        const t = Math.sign(theta || 1) /
                  (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k][p], akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p][k], aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k][p], vkq = v[k][q];
          v[k][p] = c * vkp - s * vkq;
          v[k][q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = a.map((_, i) => i).sort((i, j) => a[j][j] - a[i][i]);
  return { values: order.map(i => a[i][i]),
           vectors: order.map(i => v.map(row => row[i])) };
}

function pcaReference(rows) {
  const n = rows.length, d = rows[0].length;
  const mean = new Array(d).fill(0);
  for (const r of rows) for (let j = 0; j < d; j++) mean[j] += r[j] / n;
  const cov = Array.from({ length: d }, () => new Array(d).fill(0));
  for (const r of rows)
    for (let i = 0; i < d; i++)
      for (let j = 0; j < d; j++)
        cov[i][j] += (r[i] - mean[i]) * (r[j] - mean[j]) / (n - 1);
  const { values, vectors } = symEig(cov);
  const total = values.reduce((s, x) => s + x, 0);
  return { mean, vectors, ratio: values.map(x => x / total) };
}

// Rows with well separated variances, so that PCA components are unique.
function spreadRows(n, d, seed) {
  return randomRows(n, d, seed).map(r => r.map((x, j) => x * (d - j)));
}

// --- processing ----------------------------------------------------------

test('processEmbeddings normalize: binary frame gives a Float32Array ' +
     'view, JSON gives arrays, both match a double-precision reference',
     async () => {
  const rows = randomRows(20, 16, 11);
  rows[3].fill(0); // a zero row stays zero
  const bin = await client.processEmbeddings(rows, { normalize: true });
  const json = await client.processEmbeddings(rows.map(r => Array.from(r)),
                                              { normalize: true });
  assert.ok(bin.processed instanceof Tensor);
  assert.ok(bin.processed.data instanceof Float32Array);
  assert.deepEqual(bin.processed.shape, [20, 16]);
  // A view on the received frame, 8-byte aligned, not a copy of it.
  assert.ok(bin.processed.data.buffer.byteLength >
            bin.processed.data.byteLength);
  assert.equal(bin.processed.data.byteOffset % 8, 0);
  assert.ok(Array.isArray(json.processed));
  sameFloat32(bin.processed, json.processed, 'binary vs json');
  assert.equal(bin.metadata.zero_rows, 1);
  for (let i = 0; i < 20; i++) {
    const want = normalized(rows[i]);
    const got = bin.processed.row(i);
    for (let j = 0; j < 16; j++) close(got[j], want[j], 1e-6, `[${i}][${j}]`);
  }
  // One vector in, one vector out.
  const one = await client.processEmbeddings(new Float32Array([3, 4]),
                                             { normalize: true });
  assert.deepEqual(one.processed.shape, [2]);
  close(one.processed.data[0], 0.6, 1e-7, 'one vector');
  // Float64Array input is converted to float32 by the server.
  const f64 = await client.processEmbeddings(
      rows.map(r => Float64Array.from(r)), { normalize: true });
  sameFloat32(f64.processed, json.processed, 'float64 vs json');
});

test('int8 quantization: codes and scales against a reference; Int8Array ' +
     'view; int4 and binary unpack like their JSON', async () => {
  const rows = randomRows(12, 10, 21);
  const r = await client.processEmbeddings(rows, { quantization: 'int8' });
  const j = await client.processEmbeddings(rows.map(x => Array.from(x)),
                                           { quantization: 'int8' });
  assert.ok(r.processed.data instanceof Int8Array);
  assert.deepEqual(r.processed.toArray(), j.processed);
  assert.deepEqual(r.scales, j.scales);
  for (let i = 0; i < rows.length; i++) {
    const maxAbs = Math.max(...Array.from(rows[i], Math.abs));
    close(r.scales[i], maxAbs / 127, 1e-6 * maxAbs, `scale ${i}`);
    const codes = r.processed.row(i);
    for (let c = 0; c < 10; c++) {
      const exact = rows[i][c] / r.scales[i];
      assert.ok(Math.abs(codes[c] - exact) <= 0.5 + 1e-4,
                `code [${i}][${c}] ${codes[c]} vs ${exact}`);
    }
  }
  for (const quantization of ['int4', 'binary', 'fp16', 'bf16', 'int8_affine']) {
    const b = await client.processEmbeddings(rows, { quantization });
    const t = await client.processEmbeddings(rows.map(x => Array.from(x)),
                                             { quantization });
    assert.ok(b.processed instanceof Tensor, quantization);
    // Half-precision values in JSON are the shortest float32 decimals.
    const float = quantization.startsWith('f') || quantization.startsWith('b');
    const want = float && quantization !== 'binary'
        ? t.processed.map(r => r.map(Math.fround)) : t.processed;
    assert.deepEqual(b.processed.toArray(), want, quantization);
  }
});

test('fitPCA: explained variance against a double-precision covariance; ' +
     'projections match; listPCAModels, deletePCAModel', async () => {
  const rows = spreadRows(40, 6, 31);
  const ref = pcaReference(rows.map(r => Array.from(r)));
  const fit = await client.fitPCA({ name: 'js-pca', embeddings: rows,
                                    n_components: 3 });
  assert.equal(fit.n_components, 3);
  assert.equal(fit.input_dim, 6);
  assert.equal(fit.n_samples, 40);
  for (let c = 0; c < 3; c++)
    close(fit.explained_variance_ratio[c], ref.ratio[c], 1e-5, `ratio ${c}`);
  const proj = await client.processEmbeddings(
      rows, { pca_model: 'js-pca', dimension_reduction: true });
  const projJson = await client.processEmbeddings(
      rows.map(r => Array.from(r)), { pca_model: 'js-pca',
                                      dimension_reduction: true });
  sameFloat32(proj.processed, projJson.processed, 'pca binary vs json');
  assert.deepEqual(proj.processed.shape, [40, 3]);
  for (let c = 0; c < 3; c++) {
    const want = rows.map(r => r.reduce(
        (s, x, k) => s + (x - ref.mean[k]) * ref.vectors[c][k], 0));
    const got = rows.map((_, i) => proj.processed.row(i)[c]);
    const sign = Math.sign(got.reduce((s, g, i) => s + g * want[i], 0));
    const scale = Math.max(...want.map(Math.abs));
    for (let i = 0; i < 40; i++)
      close(got[i], sign * want[i], 1e-4 * scale, `pc ${c} row ${i}`);
  }
  const { models } = await client.listPCAModels();
  assert.ok(models.some(m => m.name === 'js-pca' && m.n_components === 3));
  assert.deepEqual(await client.deletePCAModel('js-pca'),
                   { name: 'js-pca', deleted: true });
  assert.equal((await client.deletePCAModel('js-pca')).deleted, false);
});

test('getMetrics, health, cleanup', async () => {
  const m = await client.getMetrics();
  assert.equal(typeof m.memory.cache_size, 'number');
  assert.equal(m.hpc.backend, 'cpu');
  assert.ok(m.counters && typeof m.counters === 'object');
  const h = await client.health();
  assert.equal(h.status, 'ok');
  assert.ok(['normal', 'high_load', 'recovery'].includes(h.state));
  const c = await client.cleanup();
  assert.equal(c.freed_bytes, Math.max(0, c.rss_before - c.rss_after));
  assert.equal(typeof c.trimmed, 'boolean');
});

// --- collections and memories ---------------------------------------------

test('collections and memories: every method; search ranking against ' +
     'brute-force cosine; binary and JSON queries agree', async () => {
  const dim = 8;
  const info = await client.createCollection({ name: 'js-notes', dim });
  assert.equal(info.metric, 'cosine');
  assert.equal(info.count, 0);
  const vecs = randomRows(30, dim, 41);
  // Each memory with its own Float32Array: one binary frame, 30 buffers.
  const added = await client.addMemories('js-notes', vecs.slice(0, 20).map(
      (embedding, i) => ({ id: `m${i}`, embedding, content: `note ${i}`,
                           chatId: i % 2 ? 'odd' : 'even',
                           metadata: { i } })));
  assert.deepEqual(added, { ids: Array.from({ length: 20 }, (_, i) => `m${i}`),
                            count: 20 });
  // The batch form: one tensor for all rows.
  const batch = await client.addMemories('js-notes', {
    embeddings: vecs.slice(20, 29),
    memories: vecs.slice(20, 29).map((_, i) => ({ id: `m${20 + i}`,
                                                  content: `note ${20 + i}`,
                                                  chatId: 'even' })) });
  assert.equal(batch.count, 9);
  const stored = await client.storeMemory('js-notes', {
    embedding: vecs[29], content: 'last', chatId: 'odd', significance: 0.5 });
  assert.match(stored.id, /^m_/);
  const ids = [...Array.from({ length: 29 }, (_, i) => `m${i}`), stored.id];

  const got = await client.getMemories('js-notes', ['m3', 'nope'],
                                       { include: ['embedding', 'content'] });
  assert.deepEqual(got.missing, ['nope']);
  assert.equal(got.memories[0].content, 'note 3');
  assert.deepEqual(got.memories[0].embedding.map(Math.fround),
                   Array.from(vecs[3]));

  const upd = await client.updateMemory('js-notes', 'm3',
                                        { content: 'changed', significance: 1 });
  assert.equal(upd.content, 'changed');
  assert.equal(upd.significance, 1);

  const queries = randomRows(3, dim, 42);
  const opts = { k: 5, significance_weight: 0, time_decay: 0 };
  const res = await client.searchMemories('js-notes', queries, opts);
  const resJson = await client.searchMemories(
      'js-notes', queries.map(q => Array.from(q)), opts);
  assert.deepEqual(res.results, resJson.results);
  assert.equal(res.metadata.queries, 3);
  const cos = (a, b) => {
    let ab = 0, aa = 0, bb = 0;
    for (let i = 0; i < a.length; i++) {
      ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i];
    }
    return ab / Math.sqrt(aa * bb);
  };
  queries.forEach((q, qi) => {
    const ref = ids.map((id, i) => ({ id, s: cos(q, vecs[i]) }))
                   .sort((a, b) => b.s - a.s);
    const hits = res.results[qi];
    assert.equal(hits.length, 5);
    hits.forEach((h, r) => {
      close(h.similarity, ref[r].s, 1e-5, `query ${qi} rank ${r}`);
      close(h.similarity, ref.find(x => x.id === h.id).s, 1e-5, h.id);
      close(h.score, h.similarity, 1e-6, 'score without weights');
    });
  });
  const odd = await client.searchMemories('js-notes', queries[0],
                                          { k: 30, filter: { chatId: 'odd' } });
  assert.equal(odd.results[0].length, 11);
  assert.ok(odd.results[0].every(h => h.chatId === 'odd'));

  const del = await client.deleteMemories('js-notes', ['m0', 'zz']);
  assert.deepEqual(del, { deleted: 1, missing: ['zz'] });
  assert.equal((await client.getCollection('js-notes')).count, 29);
  const list = await client.listCollections();
  assert.ok(list.collections.some(c => c.name === 'js-notes'));
  assert.deepEqual(await client.dropCollection('js-notes'),
                   { name: 'js-notes', dropped: true, count: 29 });
});

// --- working-memory chunks -------------------------------------------------

test('chunk API: allocate, processChunk (binary), readChunk as Tensor ' +
     'and JSON, listChunks, freeMemory; a too-small chunk is a ResourceError',
     async () => {
  const a = await client.allocateMemory(4096, { chatId: 'c1', chunkId: 'js-c' });
  assert.equal(a.chunkId, 'js-c');
  const rows = randomRows(4, 8, 51);
  const w = await client.processChunk('js-c', rows, { normalize: true });
  assert.equal(w.written, 4);
  assert.equal(w.used, 4 * 8 * 4);
  const bin = await client.readChunk('js-c', { encoding: 'binary' });
  const json = await client.readChunk('js-c');
  assert.ok(bin.embeddings.data instanceof Float32Array);
  sameFloat32(bin.embeddings, json.embeddings, 'readChunk');
  rows.forEach((r, i) => normalized(r).forEach(
      (x, j) => close(bin.embeddings.row(i)[j], x, 1e-6, `chunk [${i}][${j}]`)));
  const list = await client.listChunks('c1');
  assert.deepEqual(list.chunks.map(c => c.id), ['js-c']);

  await client.allocateMemory(64, { chunkId: 'js-tiny' });
  await assert.rejects(
      client.processChunk('js-tiny', randomRows(3, 8, 52)), (e) => {
        assert.ok(e instanceof ResourceError);
        assert.ok(e instanceof MnemoError);
        assert.equal(e.code, -32000);
        assert.equal(e.method, 'processChunk');
        assert.equal(e.requested, 96);
        assert.equal(e.available, 64);
        assert.equal(e.requested, e.data.requested);
        return true;
      });
  assert.deepEqual(await client.freeMemory('js-c'), { chunkId: 'js-c', freed: true });
  assert.equal((await client.freeMemory('js-tiny')).freed, true);
  assert.equal((await client.listChunks()).count, 0);
});

test('MCP methods through the client: ping, listTools, callTool', async () => {
  assert.deepEqual(await client.ping(), {});
  client.notify('notifications/initialized'); // no reply, nothing pending
  assert.equal(client.inFlight, 0);
  const { tools } = await client.listTools();
  const r = await client.callTool('processEmbeddings', {
    embeddings: [[3, 4]], options: { normalize: true } });
  assert.equal(r.isError, false);
  close(r.structuredContent.processed[0][0], 0.6, 1e-7, 'tools/call');
  // Every tool has a method of the same name on the client.
  for (const t of tools)
    assert.equal(typeof MnemoClient.prototype[t.name], 'function', t.name);
});

// --- errors -----------------------------------------------------------------

test('typed errors: InvalidParamsError names the parameter, ' +
     'MethodNotFoundError, and the socket goes on', async () => {
  await assert.rejects(client.searchMemories('nope', [1, 2], { k: 0 }), (e) => {
    assert.ok(e instanceof InvalidParamsError);
    assert.equal(e.code, -32602);
    assert.match(e.message, /k/);
    return true;
  });
  await assert.rejects(client.processEmbeddings(new Float32Array([1, NaN])),
                       (e) => e instanceof InvalidParamsError &&
                              /NaN/.test(e.message));
  await assert.rejects(client.call('processEmbedings', {}), (e) => {
    assert.ok(e instanceof MethodNotFoundError);
    assert.equal(e.code, -32601);
    assert.match(e.message, /processEmbedings/);
    return true;
  });
  // Not a float tensor: refused here, before sending.
  await assert.rejects(client.processEmbeddings(new Int32Array([1, 2])),
                       TypeError);
  assert.equal((await client.health()).status, 'ok');
});

test('RateLimitError with retryAfterMs; server TimeoutError with timeoutMs',
     async () => {
  const s = await startServer({ server: { rate_limit: 2 },
                                processing: { timeout: 1 } });
  try {
    const c = await connect(s.url);
    // processing.timeout 1 ms: a large batch cannot make it.
    await assert.rejects(c.processEmbeddings(randomRows(4000, 256, 61),
                                             { normalize: true }), (e) => {
      assert.ok(e instanceof TimeoutError, `${e.name}: ${e.message}`);
      assert.equal(e.code, -32002);
      assert.equal(e.local, false);
      assert.equal(e.timeoutMs, 1);
      return true;
    });
    await c.health();
    await assert.rejects(c.health(), (e) => {
      assert.ok(e instanceof RateLimitError);
      assert.equal(e.code, -32003);
      assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 60000);
      return true;
    });
    await c.close();
  } finally {
    await stopClean(s);
  }
});

test('every JSON-RPC error code maps to its class (a stub server sends ' +
     'the codes mnemod cannot be made to send on demand)', async () => {
  const { WebSocketServer } = await import('ws');
  const wss = new WebSocketServer({ port: 0 });
  await new Promise(ok => wss.once('listening', ok));
  wss.on('connection', ws => ws.on('message', (d) => {
    const req = JSON.parse(d.toString());
    ws.send(JSON.stringify({ jsonrpc: '2.0', id: req.id, error: {
      code: req.params.code, message: `code ${req.params.code}`,
      data: { x: 1 } } }));
  }));
  const c = await connect(`ws://127.0.0.1:${wss.address().port}`);
  const cases = [[-32700, ParseError], [-32600, InvalidRequestError],
                 [-32601, MethodNotFoundError], [-32602, InvalidParamsError],
                 [-32603, InternalError], [-32000, ResourceError],
                 [-32001, ProcessingError], [-32002, TimeoutError],
                 [-32003, RateLimitError], [-32004, OverloadedError],
                 [-32099, MnemoError]];
  for (const [code, Cls] of cases) {
    await assert.rejects(c.call('x', { code }), (e) => {
      assert.equal(e.constructor, Cls, String(code));
      assert.equal(e.name, Cls.name);
      assert.equal(e.code, code);
      assert.equal(e.message, `code ${code}`);
      assert.deepEqual(e.data, { x: 1 });
      assert.equal(e.method, 'x');
      return true;
    });
  }
  await c.close();
  await new Promise(ok => wss.close(ok));
});

test('client timeout: TimeoutError (local) for that request only; the ' +
     'socket stays up and the late reply is dropped', async () => {
  const errors = [];
  client.on('error', e => errors.push(e));
  // A PCA fitted on 3000 x 256 rows: tens of ms at least, against 1 ms.
  const big = randomRows(3000, 256, 71);
  const slow = client.processEmbeddings(big, { dimension_reduction: 128 },
                                        { timeout: 1 });
  const fast = client.health();
  await assert.rejects(slow, (e) => {
    assert.ok(e instanceof TimeoutError);
    assert.equal(e.local, true);
    assert.equal(e.timeoutMs, 1);
    assert.equal(e.method, 'processEmbeddings');
    return true;
  });
  assert.equal((await fast).status, 'ok');
  // The reply to the timed-out request arrives later and is dropped.
  await client.processEmbeddings([[1, 2]]);
  assert.equal(client.inFlight, 0);
  assert.deepEqual(errors, []);
  assert.ok(client.connected);
});

test('many requests in flight on one socket: ids matched, each result ' +
     'its own', async () => {
  const n = 300;
  const inputs = randomRows(n, 12, 81);
  const calls = inputs.map((v, i) => i % 3 === 0
      ? client.processEmbeddings(Array.from(v), { normalize: true })
      : i % 3 === 1 ? client.processEmbeddings(v, { normalize: true })
                    : client.call('processEmbeddings', {
                        embeddings: [v], options: { normalize: true },
                        chatId: `c${i}` }));
  assert.ok(client.inFlight > 1);
  const out = await Promise.all(calls);
  out.forEach((r, i) => {
    const got = rowsOf(r.processed).flat();
    const want = normalized(inputs[i]);
    want.forEach((x, j) => close(got[j], x, 1e-6, `request ${i} [${j}]`));
    if (i % 3 === 2) assert.equal(r.metadata.chatId, `c${i}`);
  });
});

test('binary: false sends typed arrays as base64 text, same results',
     async () => {
  const c = await connect(srv.url, { binary: false, WebSocket });
  const rows = randomRows(5, 7, 91);
  const a = await c.processEmbeddings(rows, { normalize: true });
  const b = await client.processEmbeddings(rows, { normalize: true });
  assert.ok(a.processed instanceof Tensor);
  assert.deepEqual(Array.from(a.processed.data), Array.from(b.processed.data));
  await c.close();
});

// --- connection loss, reconnect, auth ---------------------------------------

test('connection lost mid-request: ConnectionError with the close code; ' +
     'later calls are refused', async () => {
  const s = await startServer({ server: { rate_limit: 0 } });
  const c = await connect(s.url);
  try {
    const events = [];
    c.on('disconnect', e => events.push(['disconnect', e.code]));
    c.on('close', e => events.push(['close', e.code]));
    // Killed as soon as the request is written: it cannot have been
    // answered (a 3 MB fit).
    const inflight = c.fitPCA({ name: 'slow',
                                embeddings: randomRows(3000, 256, 101),
                                n_components: 128 });
    assert.equal(c.inFlight, 1);
    s.proc.kill('SIGKILL');
    await assert.rejects(inflight, (e) => {
      assert.ok(e instanceof ConnectionError, `${e.name}: ${e.message}`);
      assert.ok(e instanceof MnemoError);
      assert.equal(e.code, null);
      assert.equal(e.closeCode, 1006);
      assert.equal(e.method, 'fitPCA');
      assert.match(e.message, /lost/);
      return true;
    });
    await assert.rejects(c.health(), ConnectionError);
    assert.deepEqual(events, [['disconnect', 1006], ['close', 1006]]);
  } finally {
    await c.close();
    await s.stop();
  }
});

test('a server stopping gracefully answers what it ran and closes with ' +
     '1001; nothing hangs', async () => {
  const s = await startServer({ server: { rate_limit: 0, drain_timeout: 1 },
                                processing: { workers: 1 } });
  const c = await connect(s.url);
  try {
    const closed = new Promise(ok => c.on('close', ok));
    const calls = Array.from({ length: 24 }, (_, i) => c.processEmbeddings(
        randomRows(1500, 128, 200 + i), { normalize: true }));
    s.proc.kill('SIGTERM');
    const out = await Promise.allSettled(calls);
    for (const o of out) {
      if (o.status === 'fulfilled') continue;
      const e = o.reason;
      assert.ok(e instanceof OverloadedError || e instanceof ConnectionError,
                `${e.name}: ${e.message}`);
      if (e instanceof ConnectionError) assert.equal(e.closeCode, 1001);
      else assert.match(e.message, /shutting down/);
    }
    const { code, reason } = await closed;
    assert.equal(code, 1001);
    assert.match(reason, /shutting down/);
  } finally {
    await c.close();
    await stopClean(s);
  }
});

test('reconnect: a request in flight at the drop is rejected and not ' +
     'resent; one made while down waits for the new socket', async () => {
  const first = await startServer({ server: { rate_limit: 0 } });
  const port = first.port, dir = first.dir;
  const c = await connect(first.url, { reconnect: { minDelay: 50, maxDelay: 200 },
                                       timeout: 15000 });
  const events = [];
  c.on('disconnect', () => events.push('disconnect'));
  c.on('reconnect', () => events.push('reconnect'));
  await c.createCollection({ name: 'kept', dim: 2 });
  let second = null;
  try {
    const inflight = c.fitPCA({ name: 'slow',
                                embeddings: randomRows(3000, 256, 111),
                                n_components: 128 });
    first.proc.kill('SIGKILL');
    await assert.rejects(inflight, ConnectionError);
    await first.stop({ keep: true });
    const waiting = c.getCollection('kept'); // queued until reconnected
    second = await startServer({ server: { rate_limit: 0 } }, { port, dir });
    assert.equal((await waiting).name, 'kept');
    assert.deepEqual(events, ['disconnect', 'reconnect']);
    // The new server never saw the fitPCA: nothing was resent.
    const m = await c.getMetrics();
    assert.equal(JSON.stringify(m).includes('fitPCA'), false,
                 JSON.stringify(m.counters));
    assert.equal((await c.listPCAModels()).count, 0);
    await c.close();
    await assert.rejects(c.health(), ConnectionError);
  } finally {
    await c.close();
    if (second) await stopClean(second);
    else await first.stop();
  }
});

test('auth token: refused without it (401), accepted as a header (npm ws) ' +
     'and as ?token= (a WHATWG-style WebSocket)', async () => {
  const s = await startServer({ server: { rate_limit: 0,
                                          auth_tokens: ['s3cret'] } });
  try {
    await assert.rejects(connect(s.url, { WebSocket }), (e) => {
      assert.ok(e instanceof ConnectionError);
      assert.match(e.message, /401/);
      return true;
    });
    await assert.rejects(connect(s.url, { WebSocket, token: 'wrong' }),
                         ConnectionError);
    const c = await connect(s.url, { WebSocket, token: 's3cret' });
    assert.equal((await c.health()).status, 'ok');
    await c.close();
    // A constructor that is not npm ws cannot take headers: ?token=.
    let seen;
    function Browserish(url, protocols) {
      seen = url;
      return new WebSocket(url, protocols);
    }
    const b = await connect(s.url, { WebSocket: Browserish, token: 's3cret' });
    assert.match(seen, /[?&]token=s3cret/);
    assert.equal((await b.health()).status, 'ok');
    assert.equal(b.url, s.url);
    await b.close();
  } finally {
    await stopClean(s);
  }
});

test('the global WebSocket (Node --experimental-websocket, as in ' +
     'browsers): binary frames, token in the URL', async (t) => {
  const probe = spawnSync(process.execPath,
                          ['--experimental-websocket', '-e', '0']);
  if (probe.status !== 0 && typeof globalThis.WebSocket !== 'function') {
    t.skip('no global WebSocket in this Node');
    return;
  }
  const s = await startServer({ server: { rate_limit: 0, auth_tokens: ['t0k'] } });
  try {
    const script = `
      import { connect, Tensor } from ${JSON.stringify(
          join(CLIENT_DIR, 'index.js'))};
      const c = await connect(${JSON.stringify(s.url)}, { token: 't0k' });
      const r = await c.processEmbeddings(
          [new Float32Array([3, 4]), new Float32Array([0, 2])],
          { normalize: true });
      const ok = r.processed instanceof Tensor &&
                 r.processed.data instanceof Float32Array;
      console.log(JSON.stringify({ ok, data: Array.from(r.processed.data) }));
      await c.close();`;
    const run = spawnSync(process.execPath,
                          ['--experimental-websocket', '--no-warnings',
                           '--input-type=module', '-e', script],
                          { encoding: 'utf8', timeout: 15000, cwd: '/' });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim().split('\n').pop());
    assert.equal(out.ok, true);
    assert.deepEqual(out.data, [0.6000000238418579, 0.800000011920929, 0, 1]);
  } finally {
    await stopClean(s);
  }
});

// --- the seed's Quick Reference and Integration Points ----------------------

test("the seed's Quick Reference, as written", async () => {
  const embeddings = randomRows(300, 768, 121);
  const url = srv.url;
  // Initialize Service
  const service = await hpcServiceFactory.initialize({ url });
  // Process Data
  const result = await service.processEmbeddings({
    embeddings,
    options: {
      normalize: true,
      reduce_dimensions: 256,
    },
  });
  // Monitor Health
  const metrics = await service.getMetrics();

  assert.ok(result.processed instanceof Tensor);
  assert.deepEqual(result.processed.shape, [300, 256]);
  assert.equal(result.metadata.normalized, true);
  assert.ok(metrics.memory && metrics.hpc);
  // PCA of normalized rows: the total variance kept is in (0, 1].
  const tv = result.metadata.total_explained_variance;
  assert.ok(tv > 0 && tv <= 1 + 1e-6, String(tv));
  await service.close();

  // Error Handling, against a server with a small cache.
  const small = await startServer({ processing: { cache_size: '64KB' },
                                    server: { rate_limit: 0 } });
  const service2 = await hpcServiceFactory.initialize({ url: small.url });
  const data = { embeddings: randomRows(256, 256, 122),
                 options: { normalize: true } };
  let cleaned = null;
  const realCleanup = service2.cleanup.bind(service2);
  service2.cleanup = async () => (cleaned = await realCleanup());
  await assert.rejects(async () => {
    try {
      await service2.processEmbeddings(data);
    } catch (error) {
      if (error instanceof ResourceError) {
        await service2.cleanup();
      }
      throw error;
    }
  }, (e) => e instanceof ResourceError && e.requested > e.available);
  assert.equal(typeof cleaned.freed_bytes, 'number');
  await service2.close();
  await stopClean(small);
});

test("the seed's Integration Points: a Float32Array with " +
     '{dimension_reduction: true, quantization: true}', async () => {
  await client.fitPCA({ name: 'default', embeddings: randomRows(300, 64, 131),
                        n_components: 16 });
  const embeddings = randomRows(1, 64, 132)[0];
  const r = await client.processEmbeddings({
    embeddings, options: { dimension_reduction: true, quantization: true } });
  assert.equal(r.metadata.dtype, 'int8');
  assert.ok(r.processed.data instanceof Int8Array);
  assert.deepEqual(r.processed.shape, [16]);
  const exact = await client.processEmbeddings(embeddings,
                                               { dimension_reduction: true });
  const y = exact.processed.data;
  const maxAbs = Math.max(...Array.from(y, Math.abs));
  close(r.scales[0], maxAbs / 127, 1e-6 * maxAbs, 'scale');
  for (let i = 0; i < 16; i++)
    assert.ok(Math.abs(r.processed.data[i] * r.scales[0] - y[i]) <=
              r.scales[0] * 0.5 + 1e-6);
  await client.deletePCAModel('default');
});

// --- the package and its types ----------------------------------------------

test('the README example runs as written in a project that installed ' +
     'the package from its folder (a symlink) and ws', async () => {
  const readme = readFileSync(join(CLIENT_DIR, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## A first example'));
  const code = /```js\n([\s\S]*?)```/.exec(section)[1];
  assert.match(code, /from 'mnemo-client'/);
  const app = mkdtempSync(join(tmpdir(), 'mnemo-js-app-'));
  try {
    // What `npm install /path/to/clients/js ws` leaves: a link to the
    // folder, and ws in the project.
    mkdirSync(join(app, 'node_modules'));
    symlinkSync(CLIENT_DIR, join(app, 'node_modules', 'mnemo-client'), 'dir');
    symlinkSync(join(here, 'node_modules', 'ws'),
                join(app, 'node_modules', 'ws'), 'dir');
    writeFileSync(join(app, 'example.mjs'),
                  code.replace('ws://127.0.0.1:3001', srv.url));
    const run = spawnSync(process.execPath, ['example.mjs'],
                          { cwd: app, encoding: 'utf8', timeout: 15000 });
    assert.equal(run.status, 0, run.stderr);
    const lines = run.stdout.trim().split('\n');
    assert.match(lines[0], /^\[ 2, 3 \] Float32Array\(3\) \[ 0\.600000\d*, 0\.800000\d*, 0 \]$/);
    assert.equal(lines[1], 'the sky is blue');
  } finally {
    rmSync(app, { recursive: true, force: true });
  }
});

test('index.d.ts declares every method the client has, and tsc accepts ' +
     'it and a program using it (and refuses wrong calls)', async (t) => {
  const dts = readFileSync(join(CLIENT_DIR, 'index.d.ts'), 'utf8');
  const body = dts.slice(dts.indexOf('export declare class MnemoClient'));
  const methods = Object.getOwnPropertyNames(MnemoClient.prototype)
      .filter(n => n !== 'constructor' && !n.startsWith('_'));
  for (const m of methods)
    assert.match(body, new RegExp(`\\n  (readonly )?${m}[(<:]`), m);
  const pkg = JSON.parse(readFileSync(join(CLIENT_DIR, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'mnemo-client');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.peerDependenciesMeta.ws.optional, true);

  const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
  if (!existsSync(tsc)) {
    t.skip('typescript is not installed in tests/node (make deps-test)');
    return;
  }
  // types/tsconfig.json: --strict, es2022, no DOM or Node typings.
  const run = spawnSync(process.execPath, [tsc, '-p', join(here, 'types')],
                        { encoding: 'utf8', timeout: 60000 });
  assert.equal(run.status, 0, run.stdout + run.stderr);
});
