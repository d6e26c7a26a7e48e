// The peer for MCP over HTTP: what a user of the official TypeScript MCP
// SDK (@modelcontextprotocol/sdk, Streamable HTTP, the SDK's own
// stateful-server pattern: one transport and McpServer per session, JSON
// replies) would write to offer processEmbeddings with normalize.
//
//   node bench/peers/mcp_sdk_server.mjs [--port N]
// prints "listening on http://127.0.0.1:PORT/mcp" when ready. The SDK is
// resolved from tests/node/node_modules (make deps-test installs it).
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'tests', 'node', 'package.json'));
const sdk = (p) => import(require.resolve(`@modelcontextprotocol/sdk/${p}`));
const { McpServer } = await sdk('server/mcp.js');
const { StreamableHTTPServerTransport } = await sdk('server/streamableHttp.js');
const { isInitializeRequest } = await sdk('types.js');
const { z } = await import(require.resolve('zod'));

function newServer() {
  const server = new McpServer({ name: 'peer', version: '1.0.0' });
  server.registerTool('processEmbeddings', {
    description: 'L2-normalize each embedding',
    inputSchema: {
      embeddings: z.array(z.array(z.number())),
      options: z.object({ normalize: z.boolean().optional() }).optional(),
    },
  }, async ({ embeddings, options }) => {
    const processed = embeddings.map((row) => {
      if (options && options.normalize === false) return row;
      let s = 0;
      for (const v of row) s += v * v;
      const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
      return row.map((v) => Math.fround(v * inv));
    });
    const result = { processed, metadata: { count: processed.length } };
    return { content: [{ type: 'text', text: JSON.stringify(result) }],
             structuredContent: result };
  });
  return server;
}

const transports = new Map();

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const http = createServer(async (req, res) => {
  try {
    if (req.url !== '/mcp' || req.method !== 'POST') {
      res.writeHead(405).end();
      return;
    }
    const body = await readBody(req);
    const sid = req.headers['mcp-session-id'];
    let transport = sid && transports.get(sid);
    if (!transport) {
      if (sid || !isInitializeRequest(body)) {
        res.writeHead(400).end('{"error":"no session"}');
        return;
      }
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: true,
        onsessioninitialized: (id) => transports.set(id, transport),
      });
      transport.onclose = () => transports.delete(transport.sessionId);
      await newServer().connect(transport);
    }
    await transport.handleRequest(req, res, body);
  } catch (e) {
    if (!res.headersSent) res.writeHead(500);
    res.end(String(e));
  }
});

const i = process.argv.indexOf('--port');
http.keepAliveTimeout = 60000;
http.listen(i > 0 ? Number(process.argv[i + 1]) : 0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${http.address().port}/mcp`);
});
