// mnemo-client: a JavaScript client for mnemod, the mnemo memory server.
//
// One WebSocket (subprotocol "mcp") carries JSON-RPC 2.0 requests; replies
// are matched to requests by id, so any number may be in flight at once.
// Typed arrays (Float32Array, Float64Array, or {data, shape} tensors) go in
// binary frames: a 4-byte little-endian JSON length, the JSON, then the raw
// bytes the JSON's tensors point at (docs/API.md, "Binary frames"). Binary
// replies have 8-byte aligned payloads, and the tensors in them come back as
// Tensor objects whose data is a typed-array view on the received message,
// not a copy. Plain arrays of numbers go as JSON and come back as JSON.
//
// DESIGN: a request in flight when the socket drops is rejected with a
// ConnectionError and never sent again, because the server may already have
// applied it (an addMemories, say). Only requests that were never written
// (made while a reconnect was under way) wait for the next socket. A
// per-request timeout rejects that request alone; the socket stays up and
// a late reply to it is dropped.
//
// Runs in browsers (the global WebSocket) and in Node (the global WebSocket
// of Node 22 and later, else the npm package `ws`, an optional peer
// dependency). No build step: this file is the package.

/** Where mnemod listens by default. */
export const DEFAULT_URL = 'ws://127.0.0.1:3001';
const SUBPROTOCOL = 'mcp';
const DEFAULT_TIMEOUT_MS = 60000;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/**
 * Every error this library raises. Server errors carry the JSON-RPC error
 * object's code, message and data; errors of the connection have code null.
 */
export class MnemoError extends Error {
  /**
   * @param {string} message
   * @param {number|null} [code] the JSON-RPC error code
   * @param {any} [data] the error's data member, when the server sent one
   */
  constructor(message, code = null, data = undefined) {
    super(message);
    this.name = new.target.name;
    /** @type {number|null} */
    this.code = code;
    /** @type {any} */
    this.data = data;
    /** @type {string|undefined} the method of the request that failed */
    this.method = undefined;
  }

  /**
   * The error class for a JSON-RPC error object, filled in.
   * @param {{code: number, message: string, data?: any}} err
   * @returns {MnemoError}
   */
  static fromJSON(err) {
    const code = typeof err?.code === 'number' ? err.code : null;
    const message = typeof err?.message === 'string' ? err.message
                                                     : 'unknown error';
    const Cls = (code !== null && ERROR_CLASSES.get(code)) || MnemoError;
    return Cls === MnemoError ? new MnemoError(message, code, err?.data)
                              : new Cls(message, err?.data);
  }
}

/** -32700: the server could not parse a message (id is null). */
export class ParseError extends MnemoError {
  constructor(message, data) { super(message, -32700, data); }
}
/** -32600: not a valid JSON-RPC request. */
export class InvalidRequestError extends MnemoError {
  constructor(message, data) { super(message, -32600, data); }
}
/** -32601: no such method. */
export class MethodNotFoundError extends MnemoError {
  constructor(message, data) { super(message, -32601, data); }
}
/** -32602: bad params; the message names the parameter. */
export class InvalidParamsError extends MnemoError {
  constructor(message, data) { super(message, -32602, data); }
}
/** -32603: the server failed (e.g. the data directory cannot be written). */
export class InternalError extends MnemoError {
  constructor(message, data) { super(message, -32603, data); }
}
/** -32000: not enough memory; data is {requested, available} in bytes. */
export class ResourceError extends MnemoError {
  constructor(message, data) { super(message, -32000, data); }
  /** @returns {number|undefined} bytes asked for */
  get requested() { return this.data?.requested; }
  /** @returns {number|undefined} bytes there were */
  get available() { return this.data?.available; }
}
/** -32001: the computation failed (device or numerical error). */
export class ProcessingError extends MnemoError {
  constructor(message, data) { super(message, -32001, data); }
}
/**
 * -32002: not done in time. From the server (processing.timeout), or from
 * this client's own per-request timeout (then `local` is true and the
 * request may still be running on the server).
 */
export class TimeoutError extends MnemoError {
  constructor(message, data, local = false) {
    super(message, -32002, data);
    /** @type {boolean} */
    this.local = local;
  }
  /** @returns {number|undefined} */
  get timeoutMs() { return this.data?.timeout_ms; }
}
/** -32003: server.rate_limit exceeded; retryAfterMs says when to retry. */
export class RateLimitError extends MnemoError {
  constructor(message, data) { super(message, -32003, data); }
  /** @returns {number|undefined} */
  get retryAfterMs() { return this.data?.retry_after_ms; }
}
/**
 * -32004: the server's queue is full, or it is shutting down and did not
 * run the request: send it again later (or to another server).
 */
export class OverloadedError extends MnemoError {
  constructor(message, data) { super(message, -32004, data); }
}
/**
 * The connection failed or was lost. Requests in flight when it dropped
 * are rejected with this; they may or may not have been applied.
 * closeCode and reason are the WebSocket close code and reason.
 */
export class ConnectionError extends MnemoError {
  constructor(message, { closeCode = null, reason = '', cause } = {}) {
    super(message, null, undefined);
    /** @type {number|null} */
    this.closeCode = closeCode;
    /** @type {string} */
    this.reason = reason;
    if (cause !== undefined) this.cause = cause;
  }
}

const ERROR_CLASSES = new Map([
  [-32700, ParseError], [-32600, InvalidRequestError],
  [-32601, MethodNotFoundError], [-32602, InvalidParamsError],
  [-32603, InternalError], [-32000, ResourceError],
  [-32001, ProcessingError], [-32002, TimeoutError],
  [-32003, RateLimitError], [-32004, OverloadedError],
]);

// ---------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------

const ELEMENT_SIZE = { float32: 4, float64: 8, float16: 2, bfloat16: 2,
                       int8: 1, uint8: 1 };

/** Bytes in one row of cols elements of dtype (int4 and binary pack). */
function rowBytes(dtype, cols) {
  if (dtype === 'int4') return Math.ceil(cols / 2);
  if (dtype === 'binary') return Math.ceil(cols / 8);
  return cols * ELEMENT_SIZE[dtype];
}

function viewFor(dtype, buffer, byteOffset, byteLength) {
  switch (dtype) {
    case 'float32': return new Float32Array(buffer, byteOffset, byteLength / 4);
    case 'float64': return new Float64Array(buffer, byteOffset, byteLength / 8);
    case 'float16':
    case 'bfloat16': return new Uint16Array(buffer, byteOffset, byteLength / 2);
    case 'int8': return new Int8Array(buffer, byteOffset, byteLength);
    default: return new Uint8Array(buffer, byteOffset, byteLength);
  }
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

const bf16Scratch = new DataView(new ArrayBuffer(4));
function bf16ToFloat(h) {
  bf16Scratch.setUint32(0, h << 16);
  return bf16Scratch.getFloat32(0);
}

/**
 * A dense tensor: dtype, shape ([rows, cols], or [cols] for one vector) and
 * its bytes as a typed array: Float32Array (float32), Float64Array
 * (float64), Int8Array (int8), Uint8Array (uint8, and int4 / binary packed
 * per row: two codes per byte low nibble first, eight bits per byte least
 * significant first), Uint16Array (float16 / bfloat16 bit patterns).
 * Tensors from binary replies view the received message without copying.
 */
export class Tensor {
  /**
   * @param {Float32Array|Float64Array|Int8Array|Uint8Array|Uint16Array} data
   * @param {number[]} [shape] default: one vector of data.length
   * @param {string} [dtype] default: from data's type (float32, float64,
   *   int8, uint8)
   */
  constructor(data, shape, dtype) {
    if (!ArrayBuffer.isView(data) || data instanceof DataView)
      throw new TypeError('Tensor data must be a typed array');
    this.dtype = dtype || dtypeOf(data);
    if (!this.dtype)
      throw new TypeError(`Tensor: give the dtype of a ${data.constructor.name}`);
    this.shape = shape ? [...shape] : [data.length];
    if (this.shape.length < 1 || this.shape.length > 2 ||
        !this.shape.every(n => Number.isInteger(n) && n >= 0))
      throw new TypeError(`Tensor shape must be [rows, cols] or [cols]; ` +
                          `got ${JSON.stringify(shape)}`);
    const need = this.rows * rowBytes(this.dtype, this.cols);
    if (need !== data.byteLength)
      throw new TypeError(`Tensor: shape ${JSON.stringify(this.shape)} of ` +
                          `${this.dtype} needs ${need} bytes; data has ` +
                          `${data.byteLength}`);
    this.data = data;
  }
  /** @returns {number} rows (1 for one vector) */
  get rows() { return this.shape.length === 2 ? this.shape[0] : 1; }
  /** @returns {number} columns */
  get cols() { return this.shape[this.shape.length - 1]; }
  /**
   * Row i as a view (for int4 and binary: its packed bytes).
   * @param {number} i
   */
  row(i) {
    if (!(i >= 0 && i < this.rows)) throw new RangeError(`row ${i} of ${this.rows}`);
    const n = rowBytes(this.dtype, this.cols) /
              (this.data.BYTES_PER_ELEMENT || 1);
    return this.data.subarray(i * n, (i + 1) * n);
  }
  /**
   * The values as plain numbers: nested arrays for [rows, cols], one array
   * for [cols]. float16 / bfloat16 decoded, int4 unpacked (-8..7), binary
   * as 0 / 1: what the JSON encoding would have given.
   * @returns {number[]|number[][]}
   */
  toArray() {
    const rows = [];
    for (let r = 0; r < this.rows; r++) {
      const src = this.row(r);
      const out = new Array(this.cols);
      for (let c = 0; c < this.cols; c++) {
        switch (this.dtype) {
          case 'float16': out[c] = halfToFloat(src[c]); break;
          case 'bfloat16': out[c] = bf16ToFloat(src[c]); break;
          case 'int4': {
            const b = src[c >> 1];
            const v = c & 1 ? b >> 4 : b & 15;
            out[c] = v >= 8 ? v - 16 : v;
            break;
          }
          case 'binary': out[c] = (src[c >> 3] >> (c & 7)) & 1; break;
          default: out[c] = src[c];
        }
      }
      rows.push(out);
    }
    return this.shape.length === 1 ? rows[0] : rows;
  }
}

function dtypeOf(a) {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  if (typeof Float16Array !== 'undefined' && a instanceof Float16Array)
    return 'float16';
  if (a instanceof Int8Array) return 'int8';
  if (a instanceof Uint8Array) return 'uint8';
  return null;
}

const FLOAT_INPUT = new Set(['float32', 'float64', 'float16', 'bfloat16']);

/**
 * A typed tensor param as {dtype, shape, bytes}, or null when the value is
 * plain JSON (numbers, nested arrays, a base64 tensor object).
 */
function typedInput(v) {
  if (v instanceof Tensor) return { dtype: v.dtype, shape: v.shape, bytes: v.data };
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
    const dtype = dtypeOf(v);
    if (!dtype || !FLOAT_INPUT.has(dtype))
      throw new TypeError(`a ${v.constructor.name} is not an embedding: use ` +
                          'Float32Array, Float64Array, or a Tensor with a dtype');
    return { dtype, shape: [v.length], bytes: v };
  }
  if (Array.isArray(v) && v.length > 0 && ArrayBuffer.isView(v[0])) {
    // Rows of typed arrays: one contiguous [rows, cols] tensor.
    const dtype = dtypeOf(v[0]);
    const cols = v[0].length;
    if (!dtype || !FLOAT_INPUT.has(dtype))
      throw new TypeError(`rows of ${v[0].constructor.name} are not embeddings`);
    const Ctor = v[0].constructor;
    const flat = new Ctor(v.length * cols);
    v.forEach((row, i) => {
      if (!(row instanceof Ctor) || row.length !== cols)
        throw new TypeError(`row ${i}: every row must be a ${Ctor.name} of ` +
                            `${cols} values`);
      flat.set(row, i * cols);
    });
    return { dtype, shape: [v.length, cols], bytes: flat };
  }
  if (v && typeof v === 'object' && !Array.isArray(v) &&
      ArrayBuffer.isView(v.data)) {
    const t = new Tensor(v.data, v.shape, v.dtype);
    return { dtype: t.dtype, shape: t.shape, bytes: t.data };
  }
  return null;
}

function bytesOf(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

function base64Encode(u8) {
  if (typeof Buffer !== 'undefined')
    return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('base64');
  let s = '';
  for (let i = 0; i < u8.length; i += 0x8000)
    s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(s);
}

function base64Decode(text) {
  if (typeof Buffer !== 'undefined') {
    const b = Buffer.from(text, 'base64');
    const out = new Uint8Array(b.length); // own, aligned buffer
    out.set(b);
    return out;
  }
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// Where tensors may stand in params: these keys at the top level, and the
// embedding of each of params.memories (addMemories).
const TENSOR_KEYS = ['embeddings', 'embedding', 'query'];

/**
 * Turn params with typed tensors into the wire form. binary: tensors become
 * buffer references into a payload; otherwise base64 tensor objects.
 * Returns {params, payload: [{offset, bytes}], size, typed}.
 */
function encodeTensors(params, binary) {
  if (!params || typeof params !== 'object' || Array.isArray(params))
    return { params, parts: [], size: 0, typed: false };
  const parts = [];
  let size = 0;
  const wire = (v) => {
    const t = typedInput(v);
    if (!t) return v;
    const bytes = bytesOf(t.bytes);
    if (!binary)
      return { dtype: t.dtype, shape: t.shape, data: base64Encode(bytes) };
    const offset = (size + 7) & ~7;
    size = offset + bytes.byteLength;
    parts.push({ offset, bytes });
    return { dtype: t.dtype, shape: t.shape,
             buffer: { offset, length: bytes.byteLength } };
  };
  let out = params;
  for (const k of TENSOR_KEYS) {
    if (params[k] === undefined) continue;
    const w = wire(params[k]);
    if (w !== params[k]) {
      if (out === params) out = { ...params };
      out[k] = w;
    }
  }
  if (Array.isArray(params.memories)) {
    let mems = params.memories;
    params.memories.forEach((m, i) => {
      if (!m || typeof m !== 'object' || m.embedding === undefined) return;
      const w = wire(m.embedding);
      if (w === m.embedding) return;
      if (mems === params.memories) mems = [...params.memories];
      mems[i] = { ...m, embedding: w };
    });
    if (mems !== params.memories) {
      if (out === params) out = { ...params };
      out.memories = mems;
    }
  }
  return { params: out, parts, size, typed: out !== params };
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function binaryFrame(json, parts, size) {
  const j = encoder.encode(json);
  const head = 4 + j.length;
  const frame = new Uint8Array(head + size);
  new DataView(frame.buffer).setUint32(0, j.length, true);
  frame.set(j, 4);
  for (const p of parts) frame.set(p.bytes, head + p.offset);
  return frame;
}

// The result fields that carry tensors, per method.
const RESULT_TENSORS = { processEmbeddings: 'processed', readChunk: 'embeddings' };

/**
 * Replace a tensor object in a result by a Tensor: a view into the binary
 * reply (payload: {buffer, offset, length}), or decoded from base64.
 */
function decodeTensor(v, payload) {
  if (!v || typeof v !== 'object' || Array.isArray(v) ||
      typeof v.dtype !== 'string' || !Array.isArray(v.shape))
    return v;
  const cols = v.shape[v.shape.length - 1];
  const rows = v.shape.length === 2 ? v.shape[0] : 1;
  const need = rows * rowBytes(v.dtype, cols);
  if (typeof v.data === 'string') {
    const u8 = base64Decode(v.data);
    return new Tensor(viewFor(v.dtype, u8.buffer, 0, u8.length), v.shape, v.dtype);
  }
  if (v.buffer && payload) {
    const { offset, length } = v.buffer;
    if (!(offset >= 0 && length === need && offset + length <= payload.length))
      throw new MnemoError(`a reply tensor points outside its frame ` +
                           `(${JSON.stringify(v.buffer)}, payload ` +
                           `${payload.length} bytes)`);
    let buf = payload.buffer;
    let at = payload.offset + offset;
    const align = ELEMENT_SIZE[v.dtype] || 1;
    if (at % align !== 0) {
      // Not aligned (cannot happen with mnemod, which pads): copy.
      buf = buf.slice(at, at + length);
      at = 0;
    }
    return new Tensor(viewFor(v.dtype, buf, at, length), v.shape, v.dtype);
  }
  return v;
}

/** Parse a received message: text, or a binary frame. */
function parseMessage(data) {
  if (typeof data === 'string') return { msg: JSON.parse(data), payload: null };
  let buffer, base, len;
  if (data instanceof ArrayBuffer) {
    buffer = data; base = 0; len = data.byteLength;
  } else if (ArrayBuffer.isView(data)) {
    buffer = data.buffer; base = data.byteOffset; len = data.byteLength;
  } else {
    throw new MnemoError('received a message of an unknown type');
  }
  if (len < 4) throw new MnemoError(`binary reply of ${len} bytes: too short`);
  const n = new DataView(buffer, base, 4).getUint32(0, true);
  if (4 + n > len)
    throw new MnemoError(`binary reply: JSON length ${n} exceeds the frame`);
  const msg = JSON.parse(decoder.decode(new Uint8Array(buffer, base + 4, n)));
  return { msg, payload: { buffer, offset: base + 4 + n, length: len - 4 - n } };
}

// ---------------------------------------------------------------------------
// WebSocket implementation
// ---------------------------------------------------------------------------

let wsModule = null;

/** npm ws, found from this file or else from the working directory. */
async function loadWs() {
  if (wsModule) return wsModule;
  const name = 'ws'; // a variable: bundlers leave the import alone
  let first;
  try {
    const m = await import(name);
    wsModule = m.default || m.WebSocket;
    return wsModule;
  } catch (e) {
    first = e;
  }
  // A package installed from a folder is a symlink, and Node resolves from
  // its real path: look from the application (working directory, main
  // script) too.
  const mod = 'node:module';
  const url = 'node:url';
  try {
    const { createRequire } = await import(mod);
    const { pathToFileURL } = await import(url);
    const from = [pathToFileURL(process.cwd() + '/').href];
    if (process.argv?.[1]) from.push(pathToFileURL(process.argv[1]).href);
    for (const base of from) {
      let path;
      try {
        path = createRequire(base).resolve(name);
      } catch {
        continue;
      }
      const m = await import(pathToFileURL(path).href);
      wsModule = m.default || m.WebSocket;
      return wsModule;
    }
  } catch {
    /* not Node */
  }
  throw new ConnectionError(
      'no WebSocket implementation: this runtime has no global WebSocket; ' +
      'install the npm package ws (npm install ws) or pass options.WebSocket',
      { cause: first });
}

async function pickWebSocket(options) {
  if (options.WebSocket) return options.WebSocket;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  return loadWs();
}

/** npm ws (takes headers) rather than the WHATWG WebSocket (does not). */
function isNodeWs(WS) {
  return typeof WS === 'function' &&
         (typeof WS.Server === 'function' ||
          typeof WS.WebSocketServer === 'function' ||
          typeof WS.createWebSocketStream === 'function');
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) &&
         !ArrayBuffer.isView(v) && !(v instanceof Tensor);
}

function delay(ms) { return new Promise(ok => setTimeout(ok, ms)); }

/**
 * A connection to mnemod. Make one with connect(); every API method is a
 * method here, and call() reaches any method by name.
 */
export class MnemoClient {
  #url;
  #opts;
  #WS;
  #ws = null;
  #nextId = 1;
  #pending = new Map();  // id -> {resolve, reject, timer, method}
  #queued = [];          // not yet written: waiting for a reconnect
  #closing = false;      // close() was called, or the client gave up
  #finished = false;     // 'close' emitted, #closed resolved
  #reconnecting = false;
  #listeners = new Map();
  #closed = null;        // resolves when the client is closed for good
  #resolveClosed;

  /** Use connect(). */
  constructor(url, options, WS) {
    this.#url = url;
    this.#opts = options;
    this.#WS = WS;
    this.#closed = new Promise(ok => { this.#resolveClosed = ok; });
  }

  /** @returns {string} the server's URL (without the token) */
  get url() { return this.#url; }
  /** @returns {boolean} whether the socket is open now */
  get connected() { return !!this.#ws && this.#ws.readyState === 1; }
  /** @returns {number} requests sent and not yet answered */
  get inFlight() { return this.#pending.size; }

  /**
   * Listen to 'disconnect' ({code, reason}), 'reconnecting' ({attempt,
   * delay}), 'reconnect' ({attempt}), 'close' ({code, reason}) and 'error'
   * (an Error that belongs to no request, such as an unparsable reply).
   */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return this;
  }
  off(event, fn) { this.#listeners.get(event)?.delete(fn); return this; }
  #emit(event, arg) {
    for (const fn of this.#listeners.get(event) || []) {
      try { fn(arg); } catch { /* a listener's failure is its own */ }
    }
  }

  /** Open the socket; resolves when it is open. */
  async _open() {
    const opts = this.#opts;
    const WS = this.#WS;
    let url = this.#url;
    let wsOptions;
    if (opts.token) {
      if (isNodeWs(WS)) {
        wsOptions = { headers: { Authorization: `Bearer ${opts.token}` } };
      } else {
        const u = new URL(url);
        u.searchParams.set('token', opts.token);
        url = u.href;
      }
    }
    if (isNodeWs(WS)) {
      wsOptions = { ...(opts.wsOptions || {}), ...(wsOptions || {}),
                    headers: { ...(opts.wsOptions?.headers || {}),
                               ...(wsOptions?.headers || {}) } };
    }
    const ws = wsOptions ? new WS(url, SUBPROTOCOL, wsOptions)
                         : new WS(url, SUBPROTOCOL);
    ws.binaryType = 'arraybuffer';
    await new Promise((ok, fail) => {
      let lastError = null;
      const limit = opts.connectTimeout ?? opts.timeout ?? DEFAULT_TIMEOUT_MS;
      const timer = limit > 0 ? setTimeout(() => {
        cleanup();
        try { ws.close(); } catch { /* not open yet */ }
        fail(new ConnectionError(
            `could not connect to ${this.#url} within ${limit} ms`));
      }, limit) : null;
      const onOpen = () => { cleanup(); ok(); };
      const onError = (e) => { lastError = e; };
      const onClose = (e) => {
        cleanup();
        const why = lastError?.message || lastError?.error?.message || '';
        fail(new ConnectionError(
            `could not connect to ${this.#url}` + (why ? `: ${why}` : '') +
            ` (close code ${e.code}${e.reason ? `: ${e.reason}` : ''})`,
            { closeCode: e.code, reason: e.reason || '',
              cause: lastError?.error || undefined }));
      };
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        ws.removeEventListener('open', onOpen);
        ws.removeEventListener('close', onClose);
        ws.removeEventListener('error', onError);
      };
      ws.addEventListener('open', onOpen);
      ws.addEventListener('error', onError);
      ws.addEventListener('close', onClose);
    });
    this.#ws = ws;
    // npm ws throws an 'error' event that nobody listens to: listen always.
    ws.addEventListener('error', () => {});
    ws.addEventListener('message', (e) => this.#onMessage(e.data));
    ws.addEventListener('close', (e) => this.#onClose(ws, e.code, e.reason || ''));
  }

  #onMessage(data) {
    let parsed;
    try {
      parsed = parseMessage(data);
    } catch (e) {
      this.#emit('error', e instanceof MnemoError ? e : new MnemoError(
          `unparsable reply from the server: ${e.message}`));
      return;
    }
    const replies = Array.isArray(parsed.msg) ? parsed.msg : [parsed.msg];
    for (const msg of replies) {
      const p = msg && this.#pending.get(msg.id);
      if (!p) {
        if (msg && msg.error && msg.id == null)
          this.#emit('error', MnemoError.fromJSON(msg.error));
        continue; // a late reply to a request that timed out
      }
      this.#pending.delete(msg.id);
      if (p.timer) clearTimeout(p.timer);
      if (msg.error) {
        const err = MnemoError.fromJSON(msg.error);
        err.method = p.method;
        p.reject(err);
        continue;
      }
      let result = msg.result;
      try {
        const key = RESULT_TENSORS[p.method];
        if (key && result && typeof result === 'object' && key in result)
          result = { ...result, [key]: decodeTensor(result[key], parsed.payload) };
      } catch (e) {
        p.reject(e);
        continue;
      }
      p.resolve(result);
    }
  }

  #onClose(ws, code, reason) {
    if (this.#ws !== ws) return;
    this.#ws = null;
    const how = `close code ${code}${reason ? `: ${reason}` : ''}`;
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
      const err = new ConnectionError(
          this.#closing
              ? `${p.method}: the client was closed with this request in flight`
              : `${p.method}: the connection to ${this.#url} was lost with ` +
                `this request in flight (${how}); it was not sent again, ` +
                'and it may or may not have been applied',
          { closeCode: code, reason });
      err.method = p.method;
      p.reject(err);
    }
    this.#emit('disconnect', { code, reason });
    if (!this.#closing && this.#opts.reconnect) {
      this.#reconnect(code, reason);
    } else {
      this.#finish(code, reason);
    }
  }

  #finish(code, reason) {
    this.#closing = true;
    if (this.#finished) return;
    this.#finished = true;
    for (const q of this.#queued.splice(0)) {
      if (q.timer) clearTimeout(q.timer);
      const err = new ConnectionError(
          `${q.method}: not sent: the client is closed (close code ${code}` +
          `${reason ? `: ${reason}` : ''})`, { closeCode: code, reason });
      err.method = q.method;
      q.reject(err);
    }
    this.#emit('close', { code, reason });
    this.#resolveClosed();
  }

  async #reconnect(code, reason) {
    this.#reconnecting = true;
    const r = this.#opts.reconnect === true ? {} : this.#opts.reconnect;
    const retries = r.retries ?? Infinity;
    const min = r.minDelay ?? 100;
    const max = r.maxDelay ?? 5000;
    const factor = r.factor ?? 2;
    for (let attempt = 1; attempt <= retries && !this.#closing; attempt++) {
      const base = Math.min(max, min * factor ** (attempt - 1));
      const wait = Math.round(base * (0.75 + Math.random() * 0.5));
      this.#emit('reconnecting', { attempt, delay: wait });
      await delay(wait);
      if (this.#closing) break;
      try {
        await this._open();
      } catch {
        continue;
      }
      if (this.#closing) { this.#ws?.close(1000); break; }
      this.#reconnecting = false;
      this.#emit('reconnect', { attempt });
      for (const q of this.#queued.splice(0)) this.#write(q);
      return;
    }
    this.#reconnecting = false;
    if (!this.#ws) this.#finish(code, reason);
  }

  #write(q) {
    this.#pending.set(q.id, q);
    try {
      this.#ws.send(q.frame);
      q.frame = null; // the socket has it now: let it go before the reply
    } catch (e) {
      this.#pending.delete(q.id);
      if (q.timer) clearTimeout(q.timer);
      q.reject(new ConnectionError(`${q.method}: could not send: ${e.message}`,
                                   { cause: e }));
    }
  }

  /**
   * Call any method by name.
   * @param {string} method
   * @param {object} [params]
   * @param {{timeout?: number}} [callOptions] timeout in ms (0: none);
   *   default: the client's
   * @returns {Promise<any>} the result; rejects with a MnemoError subclass
   */
  call(method, params, callOptions = {}) {
    return new Promise((resolve, reject) => {
      if (this.#closing) {
        const err = new ConnectionError(`${method}: the client is closed`);
        err.method = method;
        reject(err);
        return;
      }
      const id = this.#nextId++;
      let frame;
      try {
        const enc = encodeTensors(params, this.#opts.binary !== false);
        const msg = { jsonrpc: '2.0', id, method };
        if (enc.params !== undefined && enc.params !== null)
          msg.params = enc.params;
        const json = JSON.stringify(msg);
        frame = enc.parts.length ? binaryFrame(json, enc.parts, enc.size)
                                 : json;
      } catch (e) {
        reject(e);
        return;
      }
      const q = { id, method, frame, resolve, reject, timer: null };
      const limit = callOptions?.timeout ?? this.#opts.timeout ??
                    DEFAULT_TIMEOUT_MS;
      if (limit > 0) {
        q.timer = setTimeout(() => {
          this.#pending.delete(id);
          const i = this.#queued.indexOf(q);
          if (i >= 0) this.#queued.splice(i, 1);
          const err = new TimeoutError(
              `${method}: no reply within ${limit} ms (client timeout); ` +
              (i >= 0 ? 'it was never sent (no connection)'
                      : 'the request may still run on the server'),
              { timeout_ms: limit }, true);
          err.method = method;
          reject(err);
        }, limit);
      }
      if (this.connected) {
        this.#write(q);
      } else if (this.#reconnecting) {
        this.#queued.push(q);
      } else {
        if (q.timer) clearTimeout(q.timer);
        const err = new ConnectionError(`${method}: not connected`);
        err.method = method;
        reject(err);
      }
    });
  }

  /**
   * Send a notification (no id, no reply).
   * @param {string} method
   * @param {object} [params]
   */
  notify(method, params) {
    if (!this.connected) throw new ConnectionError(`${method}: not connected`);
    const enc = encodeTensors(params, this.#opts.binary !== false);
    const msg = { jsonrpc: '2.0', method };
    if (enc.params !== undefined && enc.params !== null) msg.params = enc.params;
    const json = JSON.stringify(msg);
    this.#ws.send(enc.parts.length ? binaryFrame(json, enc.parts, enc.size)
                                   : json);
  }

  /**
   * Close the connection. Requests in flight are rejected with a
   * ConnectionError; no reconnect follows.
   * @returns {Promise<void>} when the socket is closed
   */
  close(code = 1000, reason = '') {
    if (!this.#closing) {
      this.#closing = true;
      if (this.#ws) {
        this.#ws.close(code, reason);
      } else {
        this.#finish(code, reason);
      }
    }
    return this.#closed;
  }

  // --- Processing --------------------------------------------------------

  /**
   * Normalize, reduce (PCA) and quantize embeddings. Either
   * processEmbeddings(embeddings, options) or, the seed's way,
   * processEmbeddings({embeddings, options, chatId}). Typed arrays go in a
   * binary frame and `processed` comes back as a Tensor; plain arrays come
   * back as arrays.
   */
  processEmbeddings(embeddings, options, callOptions) {
    if (isPlainObject(embeddings) && 'embeddings' in embeddings)
      return this.call('processEmbeddings', embeddings, options);
    return this.call('processEmbeddings', { embeddings, options }, callOptions);
  }
  /** Fit a PCA model: {name, embeddings | collection, n_components, whiten}. */
  fitPCA(params, callOptions) { return this.call('fitPCA', params, callOptions); }
  listPCAModels(callOptions) { return this.call('listPCAModels', undefined, callOptions); }
  deletePCAModel(name, callOptions) {
    return this.call('deletePCAModel', { name }, callOptions);
  }
  getMetrics(callOptions) { return this.call('getMetrics', undefined, callOptions); }
  health(callOptions) { return this.call('health', undefined, callOptions); }
  cleanup(callOptions) { return this.call('cleanup', undefined, callOptions); }

  // --- Collections and memories ------------------------------------------

  /** createCollection({name, dim, metric, dtype, pca_model, normalize}). */
  createCollection(params, callOptions) {
    return this.call('createCollection', params, callOptions);
  }
  listCollections(callOptions) {
    return this.call('listCollections', undefined, callOptions);
  }
  getCollection(name, callOptions) {
    return this.call('getCollection', { name }, callOptions);
  }
  dropCollection(name, callOptions) {
    return this.call('dropCollection', { name }, callOptions);
  }
  /**
   * addMemories(collection, [{id, embedding, content, metadata, chatId,
   * timestamp, significance}, ...]), or addMemories(collection, {embeddings,
   * memories}) with one tensor for the whole batch.
   */
  addMemories(collection, memories, callOptions) {
    const params = Array.isArray(memories) ? { collection, memories }
                                           : { ...memories, collection };
    return this.call('addMemories', params, callOptions);
  }
  /** storeMemory(collection, {embedding, content, metadata, ...}) -> {id}. */
  storeMemory(collection, memory, callOptions) {
    return this.call('storeMemory', { ...memory, collection }, callOptions);
  }
  getMemories(collection, ids, options, callOptions) {
    return this.call('getMemories', { ...options, collection, ids }, callOptions);
  }
  /** updateMemory(collection, id, {content, metadata, significance, include}). */
  updateMemory(collection, id, changes, callOptions) {
    return this.call('updateMemory', { ...changes, collection, id }, callOptions);
  }
  /**
   * searchMemories(collection, query, {k, filter, min_similarity,
   * time_decay, significance_weight, now, include, reinforce}).
   */
  searchMemories(collection, query, options, callOptions) {
    return this.call('searchMemories', { ...options, collection, query },
                     callOptions);
  }
  deleteMemories(collection, ids, callOptions) {
    return this.call('deleteMemories', { collection, ids }, callOptions);
  }

  // --- Working-memory chunks ---------------------------------------------

  /** allocateMemory(size, {chatId, chunkId}). */
  allocateMemory(size, options, callOptions) {
    return this.call('allocateMemory', { ...options, size }, callOptions);
  }
  /** processChunk(chunkId, embeddings, {normalize, pca_model}). */
  processChunk(chunkId, embeddings, options, callOptions) {
    return this.call('processChunk', { chunkId, embeddings, options },
                     callOptions);
  }
  /** readChunk(chunkId, {encoding}): "binary" gives a Tensor view. */
  readChunk(chunkId, options, callOptions) {
    return this.call('readChunk', { ...options, chunkId }, callOptions);
  }
  /** listChunks() or listChunks(chatId). */
  listChunks(chatId, callOptions) {
    const params = typeof chatId === 'string' ? { chatId }
                                              : isPlainObject(chatId) ? chatId
                                                                      : undefined;
    return this.call('listChunks', params, callOptions);
  }
  freeMemory(chunkId, callOptions) {
    return this.call('freeMemory', { chunkId }, callOptions);
  }

  // --- MCP ---------------------------------------------------------------

  /** MCP ping: resolves to {}. */
  ping(callOptions) { return this.call('ping', undefined, callOptions); }
  /** MCP tools/list: {tools: [{name, description, inputSchema, ...}]}. */
  listTools(callOptions) { return this.call('tools/list', undefined, callOptions); }
  /** MCP tools/call: {content, structuredContent, isError}. */
  callTool(name, args, callOptions) {
    return this.call('tools/call', { name, arguments: args }, callOptions);
  }
}

/**
 * Connect to mnemod.
 * @param {string} [url] default ws://127.0.0.1:3001
 * @param {object} [options]
 * @param {string} [options.token] sent as Authorization: Bearer (npm ws) or
 *   ?token= (browsers, which cannot set headers)
 * @param {number} [options.timeout] per-request timeout in ms (default
 *   60000; 0: none); also the connect timeout unless connectTimeout is given
 * @param {number} [options.connectTimeout]
 * @param {boolean|{retries?: number, minDelay?: number, maxDelay?: number,
 *   factor?: number}} [options.reconnect] reconnect with exponential
 *   backoff after a lost connection (default false)
 * @param {boolean} [options.binary] typed arrays in binary frames (default
 *   true); false sends them as base64 in text frames
 * @param {any} [options.WebSocket] a WebSocket class to use
 * @param {object} [options.wsOptions] options for npm ws (headers, agent...)
 * @returns {Promise<MnemoClient>}
 */
export async function connect(url = DEFAULT_URL, options = {}) {
  if (isPlainObject(url)) { options = url; url = options.url ?? DEFAULT_URL; }
  const WS = await pickWebSocket(options);
  const client = new MnemoClient(url, { ...options }, WS);
  await client._open();
  return client;
}

/**
 * The seed's Quick Reference: `const service = await
 * hpcServiceFactory.initialize({url})`, then service.processEmbeddings({
 * embeddings, options}), service.getMetrics(), service.cleanup().
 */
export const hpcServiceFactory = {
  /** @param {object} [options] connect()'s options plus url */
  initialize(options = {}) {
    return connect(options.url ?? DEFAULT_URL, options);
  },
};

export default { connect, hpcServiceFactory, MnemoClient, Tensor };
