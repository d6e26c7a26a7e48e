// clients/js in a real browser: the system Chromium, headless, driven by
// playwright-core, loads index.js as an ES module into an application page
// and talks to a real mnemod with the browser's own WebSocket
// (binary frames, the token in the URL, typed errors). Chromium is
// required, as for the dashboard test (`make deps-test` installs it).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { startServer } from './helpers.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM))
  throw new Error(`${CHROMIUM} is missing: this test needs Chromium (Debian ` +
                  'package "chromium"; `make deps-test` installs it, or set ' +
                  'CHROMIUM to a Chromium binary)');
const { chromium } = await import('playwright-core');
const SOURCE = readFileSync(join(here, '..', '..', 'clients', 'js', 'index.js'),
                            'utf8');

let srv, browser;
before(async () => {
  srv = await startServer({ server: { rate_limit: 0, auth_tokens: ['b-tok'] },
                            processing: { cache_size: '1MB' } });
  browser = await chromium.launch({ executablePath: CHROMIUM });
});
after(async () => {
  await browser?.close();
  assert.equal(await srv.stop(), 0);
});

test('the library in Chromium: global WebSocket, binary frames, JSON, ' +
     'typed errors, token as ?token=', async () => {
  // bypassCSP: the dashboard's policy allows its own inline script only.
  const page = await browser.newPage({ bypassCSP: true });
  const problems = [];
  page.on('pageerror', e => problems.push(e.message));
  // A page that mnemod serves (its dashboard), and the library served by
  // the test beside it: Chromium's local network access checks keep pages
  // that come from elsewhere (even a route of the test) from opening
  // loopback sockets.
  const ORIGIN = `http://127.0.0.1:${srv.port}`;
  await page.route(`${ORIGIN}/app/mnemo-client/index.js`, route =>
      route.fulfill({ body: SOURCE, contentType: 'text/javascript' }));
  await page.goto(`${ORIGIN}/?token=b-tok`);
  const out = await page.evaluate(async ({ url }) => {
    const m = await import('/app/mnemo-client/index.js');
    const r = {};
    try {
      await m.connect(url, { timeout: 5000 });
    } catch (e) {
      r.noToken = [e.name, e instanceof m.ConnectionError];
    }
    const c = await m.connect(url, { token: 'b-tok', timeout: 10000 });
    const rows = [new Float32Array([3, 4, 0]), new Float32Array([1, 2, 3])];
    const bin = await c.processEmbeddings(rows, { normalize: true });
    r.binary = { isTensor: bin.processed instanceof m.Tensor,
                 f32: bin.processed.data instanceof Float32Array,
                 aligned: bin.processed.data.byteOffset % 8 === 0,
                 data: Array.from(bin.processed.data) };
    const json = await c.processEmbeddings([[3, 4, 0], [1, 2, 3]],
                                           { normalize: true });
    r.json = json.processed;
    const q = await c.processEmbeddings(rows, { quantization: 'int8' });
    r.int8 = { i8: q.processed.data instanceof Int8Array,
               codes: q.processed.toArray(), scales: q.scales };
    try {
      await c.processEmbeddings(new Float32Array(512 * 1024), { normalize: true });
    } catch (e) {
      r.resource = [e.name, e instanceof m.ResourceError, e.requested > e.available];
    }
    try {
      await c.call('nope');
    } catch (e) {
      r.notFound = [e.name, e.code];
    }
    r.health = (await c.health()).status;
    await c.close();
    return r;
  }, { url: `ws://127.0.0.1:${srv.port}` });
  assert.deepEqual(problems, []);
  assert.deepEqual(out.noToken, ['ConnectionError', true]);
  assert.equal(out.binary.isTensor, true);
  assert.equal(out.binary.f32, true);
  assert.equal(out.binary.aligned, true);
  const want = [0.6, 0.8, 0, ...[1, 2, 3].map(x => x / Math.sqrt(14))];
  out.binary.data.forEach((x, i) => assert.ok(Math.abs(x - want[i]) < 1e-7));
  assert.deepEqual(out.binary.data, out.json.flat().map(Math.fround));
  assert.equal(out.int8.i8, true);
  assert.deepEqual(out.int8.codes, [[95, 127, 0], [42, 85, 127]]);
  out.int8.scales.forEach((s, i) => assert.ok(
      Math.abs(s - [4, 3][i] / 127) < 1e-7, String(s)));
  assert.deepEqual(out.resource, ['ResourceError', true, true]);
  assert.deepEqual(out.notFound, ['MethodNotFoundError', -32601]);
  assert.equal(out.health, 'ok');
  await page.close();
});
