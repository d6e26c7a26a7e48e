// The dashboard at / in a real browser: the system Chromium, headless,
// driven by playwright-core, against a real mnemod. What the page shows is
// checked against an independent client (npm ws) making the same JSON-RPC
// calls. Chromium is required: without it this test fails (CI installs it
// with `make deps-test`).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { RpcClient, WebSocket, randomRows, startServer } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM))
  throw new Error(`${CHROMIUM} is missing: the dashboard test needs Chromium ` +
                  '(Debian package "chromium"; `make deps-test` installs it, or ' +
                  'set CHROMIUM to a Chromium binary)');
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  throw new Error('npm playwright-core is missing in tests/node: run ' +
                  '`make deps-test` (or `npm install` in tests/node): ' + e.message);
}

const REFRESH_MS = 2000; // the page's refresh period
const XSS = '<img src=x onerror="window.__xss=1">';

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM });
});
after(async () => { await browser?.close(); });

// A page that records console errors, uncaught exceptions, failed requests
// and HTTP errors.
async function openPage(url) {
  const page = await browser.newPage();
  const problems = [];
  page.on('console', m => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page.on('pageerror', e => problems.push('page error: ' + e.message));
  page.on('requestfailed', r => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', r => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  await page.goto(url);
  return { page, problems };
}

// Stop mnemod; after a passing test, it must have exited cleanly (0: no
// sanitizer report under make test-asan).
async function stopped(srv, passed) {
  const rc = await srv.stop();
  if (passed) assert.equal(rc, 0, 'mnemod exit status; its log:\n' + srv.log.slice(-30).join('\n'));
}

const pageUrl = (srv, query = '') => `http://127.0.0.1:${srv.port}/${query}`;
const textOf = (page, sel) => page.locator(sel).textContent();
const attrOf = (page, sel, name) => page.locator(sel).getAttribute(name);
const refreshes = async page => Number(await attrOf(page, '#updated', 'data-n') || 0);

// Wait until the page has finished n more refreshes than now.
async function waitRefreshes(page, n = 1) {
  const from = await refreshes(page);
  await page.waitForFunction(
    want => Number(document.getElementById('updated').dataset.n || 0) >= want,
    from + n, { timeout: (n + 2) * REFRESH_MS });
}

async function waitConnected(page) {
  await page.waitForSelector('#conn[data-state="connected"]', { timeout: 10000 });
  await page.waitForSelector('#h-uptime[data-seconds]', { timeout: 3 * REFRESH_MS });
}

test('health, metrics, collections and chunks match an independent client', async () => {
  const srv = await startServer({});
  const client = await RpcClient.connect(srv.url);
  let passed = false;
  try {
    const { page, problems } = await openPage(pageUrl(srv));
    await waitConnected(page);
    assert.equal(await attrOf(page, '#banner', 'data-kind'), '');
    assert.equal(await page.locator('#banner').isHidden(), true);

    // Health: the page's sample is older than the client's.
    const shownUptime = Number(await attrOf(page, '#h-uptime', 'data-seconds'));
    const h = await client.call('health');
    assert.equal(await textOf(page, '#h-status'), h.status);
    assert.equal(await attrOf(page, '#h-state', 'data-state'), h.state);
    assert.ok(['normal', 'high_load', 'recovery'].includes(h.state));
    assert.equal(await textOf(page, '#h-backend'), h.backend);
    assert.equal(await textOf(page, '#h-device'), h.device);
    assert.equal(await textOf(page, '#h-version'), h.version);
    assert.ok(shownUptime <= h.uptime_s && h.uptime_s - shownUptime < 3 * REFRESH_MS / 1000 + 1,
              `uptime shown ${shownUptime} s, health says ${h.uptime_s} s`);

    // A collection and N memories made by the other client show up within
    // a few refreshes, with the server's own figures.
    const N = 37, dim = 8;
    await client.call('createCollection', { name: 'notes', dim, metric: 'l2', dtype: 'float16' });
    const rows = randomRows(N, dim, 7);
    await client.call('addMemories', {
      collection: 'notes',
      memories: rows.map((v, i) => ({ id: `m${i}`, embedding: Array.from(v), content: `memory ${i}` })),
    });
    const row = page.locator('#collections tbody tr[data-name="notes"]');
    await page.waitForSelector(`#collections tbody tr[data-name="notes"][data-count="${N}"]`,
                               { timeout: 4 * REFRESH_MS });
    const listed = (await client.call('listCollections')).collections.find(c => c.name === 'notes');
    assert.equal(listed.count, N);
    const cells = await row.locator('td').allTextContents();
    assert.deepEqual(cells.slice(0, 6), ['notes', String(dim), 'l2', 'float16', String(N), String(listed.chunks)]);
    const tierBytes = await row.locator('td[data-bytes]').evaluateAll(
      tds => tds.map(td => Number(td.dataset.bytes)));
    assert.deepEqual(tierBytes, ['l1', 'l2', 'l3'].map(t => listed.tiers[t].bytes));

    // getMetrics: a sample taken before a refresh bounds what it shows from
    // below, one taken after from above; memory tiers as the server says.
    const m1 = await client.call('getMetrics');
    await waitRefreshes(page, 2);
    const total = Number(await attrOf(page, '#r-total', 'data-value'));
    const l2Used = Number(await attrOf(page, '#tier-l2', 'data-used'));
    const l2Budget = Number(await attrOf(page, '#tier-l2', 'data-total'));
    const m2 = await client.call('getMetrics');
    assert.ok(m1.requests.total <= total && total <= m2.requests.total,
              `requests shown ${total}, client saw ${m1.requests.total} then ${m2.requests.total}`);
    assert.equal(m1.store.tiers.l2.used, m2.store.tiers.l2.used, 'the store moved during the check');
    assert.equal(l2Used, m2.store.tiers.l2.used);
    assert.equal(l2Budget, m2.store.tiers.l2.budget);
    assert.equal(Number(await attrOf(page, '#tier-l3', 'data-used')), m2.store.tiers.l3.used);
    assert.equal(Number(await attrOf(page, '#r-errors', 'data-value')), m2.requests.errors);
    const methods = await page.locator('#methods tbody td:first-child').allTextContents();
    assert.ok(methods.includes('addMemories') && methods.includes('createCollection'), methods.join());

    // Request rate from successive samples: a burst of 300 requests shows.
    await Promise.all(Array.from({ length: 300 }, () => client.call('health')));
    await page.waitForFunction(
      () => Number(document.getElementById('r-rate').dataset.value) > 20,
      null, { timeout: 4 * REFRESH_MS });

    // Server strings are shown as text, never as markup. Collection names
    // cannot hold HTML (the server refuses them), so the markup goes where
    // the server does keep it: a chunk's chatId, a memory's content and
    // metadata (shown by the search form).
    await assert.rejects(client.call('createCollection', { name: XSS, dim: 4 }),
                         e => e.code === -32602 && /name/.test(e.message));
    const chunk = await client.call('allocateMemory', { size: 1024, chatId: XSS });
    await client.call('addMemories', {
      collection: 'notes',
      memories: [{ id: 'xss', embedding: Array.from(rows[0]), content: XSS, metadata: { note: XSS } }],
    });
    const chunkRow = `#chunks tbody tr[data-id="${chunk.chunkId}"]`;
    await page.waitForSelector(chunkRow, { timeout: 4 * REFRESH_MS });
    assert.equal(await textOf(page, chunkRow + ' td:nth-child(2)'), XSS);
    assert.equal(await page.locator('img').count(), 0);
    await row.click();
    await page.waitForSelector('#detail:not([hidden])');
    await page.fill('#q-vec', Array.from(rows[0]).join(', '));
    await page.fill('#q-k', '3');
    await page.click('#search button[type="submit"]');
    await page.waitForSelector('#results:not([hidden])');
    const hits = await client.call('searchMemories', { collection: 'notes', query: Array.from(rows[0]), k: 3 });
    const shownIds = await page.locator('#results tbody tr td:nth-child(2)').allTextContents();
    assert.deepEqual(shownIds, hits.results[0].map(x => x.id));
    const contents = await page.locator('#results tbody tr td:nth-child(7)').allTextContents();
    assert.ok(contents.includes(XSS), contents.join(' | '));
    const metas = await page.locator('#results tbody tr td:nth-child(8)').allTextContents();
    assert.ok(metas.includes(JSON.stringify({ note: XSS })), metas.join(' | '));
    assert.equal(await page.locator('img').count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);

    assert.deepEqual(problems, []);
    await page.close();
    passed = true;
  } finally {
    client.close();
    await stopped(srv, passed);
  }
});

test('with server.auth_tokens: no token says so, ?token= works', async () => {
  const tok = 'dash-t0ken';
  const srv = await startServer({ server: { auth_tokens: [tok] } });
  let passed = false;
  try {
    const bare = await openPage(pageUrl(srv));
    await bare.page.waitForSelector('#banner[data-kind="auth"]', { timeout: 10000 });
    assert.match(await textOf(bare.page, '#banner'), /needs an access token.*\?token=/);
    assert.equal(await attrOf(bare.page, '#conn', 'data-state'), 'disconnected');
    assert.ok(srv.log.some(l => /missing or wrong token/.test(l)),
              'the server did not log a refused token:\n' + srv.log.join('\n'));
    await bare.page.close();

    const wrong = await openPage(pageUrl(srv, '?token=nope'));
    await wrong.page.waitForSelector('#banner[data-kind="auth"]', { timeout: 10000 });
    assert.match(await textOf(wrong.page, '#banner'), /refused the connection with the token/);
    await wrong.page.close();

    const good = await openPage(pageUrl(srv, '?token=' + tok));
    await waitConnected(good.page);
    const ws = new WebSocket(srv.url, 'mcp', { headers: { authorization: 'Bearer ' + tok } });
    await new Promise((ok, fail) => { ws.once('open', ok); ws.once('error', fail); });
    const client = new RpcClient(ws);
    const h = await client.call('health');
    client.close();
    assert.equal(await textOf(good.page, '#h-backend'), h.backend);
    assert.equal(await attrOf(good.page, '#banner', 'data-kind'), '');
    assert.deepEqual(good.problems, []);
    await good.page.close();
    passed = true;
  } finally {
    await stopped(srv, passed);
  }
});

test('mnemod stopped: the disconnected banner; restarted: reconnects by itself', async () => {
  let srv = await startServer({});
  let passed = false;
  try {
    const client = await RpcClient.connect(srv.url);
    await client.call('createCollection', { name: 'kept', dim: 4 });
    await client.call('addMemories', { collection: 'kept', embeddings: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]] });
    client.close();
    const { page } = await openPage(pageUrl(srv));
    await waitConnected(page);
    await page.waitForSelector('#collections tbody tr[data-name="kept"][data-count="3"]',
                               { timeout: 3 * REFRESH_MS });

    const { port, dir } = srv;
    assert.equal(await srv.stop({ keep: true }), 0, srv.log.join('\n'));
    await page.waitForSelector('#conn[data-state="disconnected"]', { timeout: 5000 });
    // SIGTERM: the server says it is going away (1001), then no longer answers.
    await page.waitForSelector('#banner[data-kind="disconnected"]', { timeout: 10000 });
    assert.match(await textOf(page, '#banner'), /Disconnected/);
    assert.equal(await page.locator('#banner').isVisible(), true);

    srv = await startServer({}, { port, dir });
    await waitConnected(page);
    await page.waitForFunction(() => document.getElementById('banner').hidden, null,
                               { timeout: 3 * REFRESH_MS });
    // The new process's figures, and the durable collection.
    await waitRefreshes(page, 1);
    const client2 = await RpcClient.connect(srv.url);
    const h = await client2.call('health');
    client2.close();
    const shown = Number(await attrOf(page, '#h-uptime', 'data-seconds'));
    assert.ok(shown <= h.uptime_s, `uptime shown ${shown} s, the new server's is ${h.uptime_s} s`);
    await page.waitForSelector('#collections tbody tr[data-name="kept"][data-count="3"]',
                               { timeout: 3 * REFRESH_MS });
    await page.close();
    passed = true;
  } finally {
    await stopped(srv, passed);
  }
});
