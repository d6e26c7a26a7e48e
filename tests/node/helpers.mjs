// Helpers for the Node tests: start a real mnemod on a free port with a
// temporary data directory, and a minimal JSON-RPC client over npm `ws`.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, 'node_modules', 'ws')))
  throw new Error('tests/node/node_modules is missing: run `make deps` ' +
                  '(or `npm install` in tests/node)');

const { WebSocket } = await import('ws');
export { WebSocket };

export const MNEMOD = process.env.MNEMOD ||
  resolve(here, '..', '..', 'build', 'bin', 'mnemod');

// port 0: any free one. dir: reuse a data directory (to restart a server
// that was stopped with stop({ keep: true })).
export async function startServer(config = {}, { port = 0, dir = null } = {}) {
  dir = dir || mkdtempSync(join(tmpdir(), 'mnemo-node-'));
  const cfg = join(dir, 'config.json');
  writeFileSync(cfg, JSON.stringify(config));
  const proc = spawn(MNEMOD, ['--config', cfg, '--port', String(port), '--data-dir',
                              join(dir, 'data'), '--device', 'cpu'],
                     { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  const lines = createInterface({ input: proc.stderr });
  const listening = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(
      'mnemod did not start:\n' + log.join('\n'))), 30000);
    lines.on('line', line => {
      log.push(line);
      const m = /listening on ws:\/\/[^:\s]+:(\d+)/.exec(line);
      if (m) { clearTimeout(timer); ok(Number(m[1])); }
    });
    proc.on('exit', code => {
      clearTimeout(timer);
      fail(new Error(`mnemod exited with ${code}:\n` + log.join('\n')));
    });
  });
  return {
    port: listening, log, proc, dir,
    url: `ws://localhost:${listening}`,
    async stop({ keep = false } = {}) {
      // Still running: neither an exit status nor a signal (a process
      // killed by a test has exitCode null for good).
      if (proc.exitCode === null && proc.signalCode === null) {
        const done = new Promise(ok => proc.on('exit', ok));
        proc.kill('SIGTERM');
        await done;
      }
      if (!keep) rmSync(dir, { recursive: true, force: true });
      return proc.exitCode;
    },
  };
}

// Open a WebSocket the way the seed does: new WebSocket(url, 'mcp').
export function open(url, protocol = 'mcp') {
  const ws = protocol ? new WebSocket(url, protocol) : new WebSocket(url);
  return new Promise((ok, fail) => {
    ws.once('open', () => ok(ws));
    ws.once('error', fail);
  });
}

// A JSON-RPC client over one socket: requests are matched by id, so they
// may be answered in any order.
export class RpcClient {
  constructor(ws) {
    this.ws = ws;
    this.next = 1;
    this.pending = new Map();
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const msg = JSON.parse(data.toString());
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) {
        const e = new Error(msg.error.message);
        e.code = msg.error.code;
        e.data = msg.error.data;
        p.fail(e);
      } else {
        p.ok(msg.result);
      }
    });
  }
  static async connect(url) { return new RpcClient(await open(url)); }
  call(method, params) {
    const id = this.next++;
    return new Promise((ok, fail) => {
      this.pending.set(id, { ok, fail });
      this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }
  processEmbeddings(params) { return this.call('processEmbeddings', params); }
  getMetrics() { return this.call('getMetrics'); }
  cleanup() { return this.call('cleanup'); }
  close() { this.ws.close(); }
}

// Deterministic pseudo-random floats (mulberry32).
export function randoms(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  };
}

export function randomRows(rows, cols, seed) {
  const r = randoms(seed);
  return Array.from({ length: rows }, () => {
    const v = new Float32Array(cols);
    for (let i = 0; i < cols; i++) v[i] = r();
    return v;
  });
}
