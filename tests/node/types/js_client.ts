// Type-checked (never run) by js_client.test.mjs with tsc --strict, and no
// DOM or Node typings: the calls of clients/js/README.md and the seed's
// Quick Reference, and wrong calls that index.d.ts must refuse.
import {
  ConnectionError, MnemoError, ResourceError, Tensor, TimeoutError,
  connect, hpcServiceFactory,
} from '../../../clients/js/index.js';
import type {
  CollectionInfo, ProcessResult, SearchHit,
} from '../../../clients/js/index.js';

export async function readme(): Promise<void> {
  const client = await connect('ws://127.0.0.1:3001', { token: 't', timeout: 5000,
                                                        reconnect: { retries: 5 } });
  // Typed arrays: a Tensor comes back.
  const rows = [new Float32Array([3, 4, 0]), new Float32Array([1, 1, 1])];
  const r = await client.processEmbeddings(rows, { normalize: true });
  const t: Tensor = r.processed;
  const f: Float32Array | Float64Array | Int8Array | Uint8Array | Uint16Array = t.data;
  const n: number = r.metadata.count;
  // Plain arrays: arrays of the same depth come back.
  const j = await client.processEmbeddings([[3, 4, 0]], { quantization: 'int8' });
  const codes: number[][] = j.processed;
  const scales: number[] | undefined = j.scales;
  const v = await client.processEmbeddings([3, 4, 0]);
  const one: number[] = v.processed;
  // The seed's form.
  const s: ProcessResult = await client.processEmbeddings({
    embeddings: rows, options: { normalize: true, reduce_dimensions: 2 },
    chatId: 'c' });

  const info: CollectionInfo = await client.createCollection(
      { name: 'notes', dim: 3, metric: 'cosine', dtype: 'float16' });
  await client.addMemories('notes', [
    { id: 'a', embedding: [1, 0, 0], content: 'x', metadata: { k: 1 } },
    { embedding: new Float32Array(3), chatId: 'c', significance: 0.5 }]);
  await client.addMemories('notes', { embeddings: rows, memories: [{ id: 'b' }] });
  const { id } = await client.storeMemory('notes', { embedding: [0, 1, 0] });
  const hits = await client.searchMemories('notes', [[0.9, 0.1, 0]], {
    k: 1, filter: { chatId: 'c', metadata: { k: 1 } }, include: ['content'] });
  const top: SearchHit = hits.results[0][0];
  const score: number = top.score;
  const got = await client.getMemories('notes', [id], { include: ['embedding'] });
  const emb: number[] | undefined = got.memories[0].embedding;
  await client.updateMemory('notes', id, { significance: 1 });
  await client.deleteMemories('notes', [id]);
  await client.getCollection('notes');
  await client.listCollections();
  await client.dropCollection('notes');

  await client.fitPCA({ name: 'm', embeddings: rows, n_components: 2 });
  await client.fitPCA({ name: 'm', collection: 'notes', n_components: 2 });
  await client.listPCAModels();
  await client.deletePCAModel('m');

  const chunk = await client.allocateMemory(4096, { chatId: 'c' });
  await client.processChunk(chunk.chunkId, rows, { normalize: true });
  const rb = await client.readChunk(chunk.chunkId, { encoding: 'binary' });
  const rbe: Tensor | [] = rb.embeddings;
  const rj = await client.readChunk(chunk.chunkId);
  const rje: number[][] = rj.embeddings;
  await client.listChunks('c');
  await client.freeMemory(chunk.chunkId);

  const m = await client.getMetrics();
  const avail: number = m.memory.available;
  const h = await client.health();
  const state: 'normal' | 'high_load' | 'recovery' = h.state;
  const c = await client.cleanup();
  const freed: number = c.freed_bytes;
  await client.ping();
  await client.listTools();
  await client.callTool('health', {});
  const any: { x: number } = await client.call<{ x: number }>('health', {}, { timeout: 10 });
  client.on('disconnect', (e) => { const code: number = e.code; void code; });
  await client.close();

  try {
    await client.health();
  } catch (error) {
    if (error instanceof ResourceError) {
      const need: number | undefined = error.requested;
      void need;
    } else if (error instanceof TimeoutError) {
      const local: boolean = error.local;
      void local;
    } else if (error instanceof ConnectionError) {
      const cc: number | null = error.closeCode;
      void cc;
    } else if (error instanceof MnemoError) {
      const code: number | null = error.code;
      void code;
    }
  }

  // Wrong calls that the types must refuse.
  // @ts-expect-error metric is one of cosine, ip, l2
  await client.createCollection({ name: 'x', dim: 3, metric: 'dot' });
  // @ts-expect-error dim is required
  await client.createCollection({ name: 'x' });
  // @ts-expect-error quantization has no "int2"
  await client.processEmbeddings([[1]], { quantization: 'int2' });
  // @ts-expect-error ids are an array
  await client.deleteMemories('notes', 'a');
  // @ts-expect-error a memory needs its embedding
  await client.storeMemory('notes', { content: 'no vector' });
  // @ts-expect-error k is a number
  await client.searchMemories('notes', [1, 0, 0], { k: '3' });
  // @ts-expect-error fitPCA needs n_components
  await client.fitPCA({ name: 'm', embeddings: rows });
  // @ts-expect-error a Tensor result is not an array
  const bad: number[][] = r.processed;
  void [f, n, codes, scales, one, s, info, score, emb, rbe, rje, avail, state,
        freed, any, bad];
}

// The seed's Quick Reference, as written.
export async function quickReference(embeddings: Float32Array[]): Promise<void> {
  // Initialize Service
  const service = await hpcServiceFactory.initialize();

  // Process Data
  const result = await service.processEmbeddings({
    embeddings,
    options: {
      normalize: true,
      reduce_dimensions: 256
    }
  });

  // Monitor Health
  const metrics = await service.getMetrics();
  void [result, metrics];

  const data = { embeddings, options: { normalize: true } };
  try {
    await service.processEmbeddings(data);
  } catch (error) {
    if (error instanceof ResourceError) {
      await service.cleanup();
    }
    throw error;
  }
}
