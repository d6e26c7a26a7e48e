// Types for mnemo-client (index.js), written by hand from docs/API.md.
// They depend on no DOM or Node typings.

/** Where mnemod listens by default: ws://127.0.0.1:3001. */
export declare const DEFAULT_URL: string;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export interface JsonRpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/** Every error the client raises. code is null for connection errors. */
export declare class MnemoError extends Error {
  constructor(message: string, code?: number | null, data?: unknown);
  code: number | null;
  data: any;
  /** The method of the request that failed. */
  method: string | undefined;
  /** The subclass for a JSON-RPC error object's code. */
  static fromJSON(err: JsonRpcErrorObject): MnemoError;
}
/** -32700 */
export declare class ParseError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32700;
}
/** -32600 */
export declare class InvalidRequestError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32600;
}
/** -32601 */
export declare class MethodNotFoundError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32601;
}
/** -32602: the message names the parameter. */
export declare class InvalidParamsError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32602;
}
/** -32603 */
export declare class InternalError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32603;
}
/** -32000: not enough memory. */
export declare class ResourceError extends MnemoError {
  constructor(message: string, data?: { requested: number; available: number });
  code: -32000;
  data: { requested: number; available: number } | undefined;
  /** Bytes asked for. */
  readonly requested: number | undefined;
  /** Bytes there were. */
  readonly available: number | undefined;
}
/** -32001: the computation failed. */
export declare class ProcessingError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32001;
}
/** -32002: from the server, or the client's own timeout (local: true). */
export declare class TimeoutError extends MnemoError {
  constructor(message: string, data?: { timeout_ms: number }, local?: boolean);
  code: -32002;
  data: { timeout_ms: number } | undefined;
  /** True when this client gave up waiting (the server may still run it). */
  local: boolean;
  readonly timeoutMs: number | undefined;
}
/** -32003: server.rate_limit exceeded. */
export declare class RateLimitError extends MnemoError {
  constructor(message: string, data?: { retry_after_ms: number });
  code: -32003;
  data: { retry_after_ms: number } | undefined;
  readonly retryAfterMs: number | undefined;
}
/** -32004: queue full or shutting down; the request was not run. */
export declare class OverloadedError extends MnemoError {
  constructor(message: string, data?: unknown);
  code: -32004;
}
/** The connection failed or was lost (requests in flight get this). */
export declare class ConnectionError extends MnemoError {
  constructor(message: string,
              init?: { closeCode?: number | null; reason?: string; cause?: unknown });
  code: null;
  /** The WebSocket close code (1006: dropped without a close frame). */
  closeCode: number | null;
  reason: string;
}

// ---------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------

/** Element types of tensors that the server takes as input. */
export type InputDtype = 'float32' | 'float16' | 'bfloat16' | 'float64';
/** Element types of results. */
export type ResultDtype =
  | 'float32' | 'float16' | 'bfloat16' | 'int8' | 'uint8' | 'int4' | 'binary';
export type Dtype = InputDtype | ResultDtype;

export type TensorData =
  | Float32Array | Float64Array | Int8Array | Uint8Array | Uint16Array;

/**
 * A dense tensor: shape [rows, cols] or [cols]; data is a typed array
 * (Float32Array for float32, Int8Array for int8, Uint8Array for uint8 and
 * packed int4 / binary rows, Uint16Array for float16 / bfloat16 bits).
 * Tensors of binary replies are views on the received message.
 */
export declare class Tensor {
  constructor(data: TensorData, shape?: number[], dtype?: Dtype);
  dtype: Dtype;
  shape: number[];
  data: TensorData;
  readonly rows: number;
  readonly cols: number;
  /** Row i as a view (packed bytes for int4 and binary). */
  row(i: number): TensorData;
  /** Plain numbers, as the JSON encoding would give them. */
  toArray(): number[] | number[][];
}

/** A typed tensor given as data and shape. */
export interface TensorLike {
  data: Float32Array | Float64Array | Uint16Array;
  shape?: number[];
  dtype?: InputDtype;
}
/** The typed inputs: sent in binary frames (or base64 with binary: false). */
export type TypedTensorInput =
  | Float32Array
  | Float64Array
  | Float32Array[]
  | Float64Array[]
  | Tensor
  | TensorLike;
/** Tensors in JSON as the server reads them (docs/API.md, "Tensors"). */
export type Base64Tensor = { dtype: InputDtype; shape: number[]; data: string };
export type JsonTensorInput =
  | number[]
  | number[][]
  | Record<string, number>
  | Record<string, number>[]
  | Base64Tensor;
export type TensorInput = TypedTensorInput | JsonTensorInput;

/** What comes back where a tensor is: arrays from JSON, else a Tensor. */
export type TensorResult = number[] | number[][] | Tensor;

// ---------------------------------------------------------------------------
// Params and results (docs/API.md)
// ---------------------------------------------------------------------------

export type Encoding = 'json' | 'base64' | 'binary';
export type Quantization =
  | boolean | 'int8' | 'int8_affine' | 'int4' | 'fp16' | 'bf16' | 'binary';

export interface ProcessOptions {
  normalize?: boolean;
  dimension_reduction?: boolean | number;
  reduce_dimensions?: number;
  pca_model?: string;
  whiten?: boolean;
  quantization?: Quantization;
  quantization_bits?: 1 | 4 | 8 | 16;
  precision?: 'float32' | 'float16' | 'bfloat16';
  batch_size?: number;
  encoding?: Encoding;
}

export interface ProcessEmbeddingsParams {
  embeddings: TensorInput;
  options?: ProcessOptions;
  chatId?: string;
}

export interface ProcessMetadata {
  processing_time: number;
  dimensions: number;
  device: string;
  count: number;
  dtype: ResultDtype;
  zero_rows: number;
  quantization: string;
  normalized: boolean;
  pca_model?: string;
  whiten?: boolean;
  explained_variance_ratio?: number[];
  total_explained_variance?: number;
  cpu_fallback?: boolean;
  batched_with?: number;
  chatId?: string;
}

export interface ProcessResult<P = TensorResult> {
  processed: P;
  /** int8 / int4: one scale per row. */
  scales?: number[];
  /** int8_affine: value = vmin[d] + code * scale[d]. */
  affine?: { vmin: number[]; scale: number[] };
  metadata: ProcessMetadata;
}

export type FitPCAParams = {
  name: string;
  n_components: number;
  whiten?: boolean;
} & ({ embeddings: TensorInput; collection?: undefined }
   | { collection: string; embeddings?: undefined });

export interface FitPCAResult {
  name: string;
  n_components: number;
  input_dim: number;
  n_samples: number;
  whiten: boolean;
  explained_variance_ratio: number[];
  total_explained_variance: number;
  replaced: boolean;
  cpu_fallback?: boolean;
}

export interface PCAModelInfo {
  name: string;
  input_dim: number;
  n_components: number;
  n_samples: number;
  whiten: boolean;
  total_explained_variance: number;
  created: number;
}

export interface Metrics {
  memory: {
    chunks: number;
    usage: number;
    available: number;
    cache_size: number;
    state: string;
  };
  hpc: {
    gpu_memory: number;
    gpu_memory_total: number;
    gpu_memory_free: number;
    cpu_memory: number;
    cpu_memory_total: number;
    cpu_memory_free: number;
    rss: number;
    active_processes: number;
    backend: string;
    device: string;
  };
  pca_models: number;
  uptime_s: number;
  counters?: Record<string, number>;
  gauges?: Record<string, number>;
  [key: string]: unknown;
}

export type MemoryState = 'normal' | 'high_load' | 'recovery';

export interface Health {
  status: string;
  state: MemoryState;
  backend: string;
  device: string;
  uptime_s: number;
  version: string;
  memory: { host_bytes: number; cache_size: number; usage_ratio: number };
  [key: string]: unknown;
}

export interface CleanupResult {
  freed_bytes: number;
  rss_before: number;
  rss_after: number;
  scratch_released: number;
  heap_free_before: number;
  heap_free_after: number;
  trimmed: boolean;
  chunks_freed: number;
  state: string;
}

export type Metric = 'cosine' | 'ip' | 'l2';
export type StorageDtype = 'float32' | 'float16' | 'int8' | 'binary';

export interface CreateCollectionParams {
  name: string;
  dim: number;
  metric?: Metric;
  dtype?: StorageDtype;
  pca_model?: string;
  normalize?: boolean;
}

export interface TierInfo { chunks: number; bytes: number }

export interface CollectionInfo {
  name: string;
  dim: number;
  width: number;
  metric: Metric;
  dtype: StorageDtype;
  normalize: boolean;
  pca_model: string | null;
  created: number;
  count: number;
  chunks: number;
  row_bytes: number;
  tiers: { l1: TierInfo; l2: TierInfo; l3: TierInfo };
}

/** JSON values of metadata. */
export type JsonValue =
  | string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export interface MemoryFields {
  id?: string;
  content?: string;
  metadata?: { [key: string]: JsonValue };
  chatId?: string;
  /** Unix seconds; default: now. */
  timestamp?: number;
  /** In [0, 1]; default: computed by the server. */
  significance?: number;
}
export interface NewMemory extends MemoryFields {
  embedding: TensorInput;
}

export type AddMemoriesBatch =
  | { embeddings: TensorInput; memories?: MemoryFields[] }
  | { memories: NewMemory[]; embeddings?: undefined };

export interface AddMemoriesResult { ids: string[]; count: number }

/** What a memory read returns besides id, chatId, timestamp, significance. */
export type IncludeField = 'content' | 'metadata' | 'embedding';

export interface Memory {
  id: string;
  chatId?: string;
  timestamp: number;
  significance: number;
  content?: string;
  metadata?: { [key: string]: JsonValue };
  /** With include: ['embedding']: the stored vector, decoded. */
  embedding?: number[];
}

export interface GetMemoriesOptions { include?: IncludeField[] }
export interface GetMemoriesResult {
  memories: Memory[];
  missing: string[];
  count: number;
}

export interface MemoryChanges {
  content?: string;
  metadata?: { [key: string]: JsonValue };
  significance?: number;
  include?: IncludeField[];
}

export interface SearchFilter {
  chatId?: string;
  since?: number;
  until?: number;
  metadata?: { [key: string]: string | number | boolean | null };
}

export interface SearchOptions {
  /** 1 to 4096; default 10. */
  k?: number;
  filter?: SearchFilter;
  min_similarity?: number;
  time_decay?: number;
  significance_weight?: number;
  now?: number;
  include?: IncludeField[];
  reinforce?: boolean;
}

export interface SearchHit extends Memory {
  score: number;
  similarity: number;
  decay: number;
}

export interface SearchResult {
  /** One ranked list per query vector. */
  results: SearchHit[][];
  metadata: { search_time: number; queries: number; k: number;
              cpu_fallback?: boolean };
}

export interface DeleteMemoriesResult { deleted: number; missing: string[] }
export interface DropCollectionResult {
  name: string;
  dropped: boolean;
  count: number;
}

export interface AllocateOptions { chatId?: string; chunkId?: string }
export interface ChunkInfo {
  chunkId: string;
  size: number;
  created: number;
  lastAccessed: number;
  chatId?: string;
  rows: number;
  width: number;
  used: number;
}
export interface ProcessChunkOptions { normalize?: boolean; pca_model?: string }
export interface ProcessChunkResult {
  chunkId: string;
  rows: number;
  width: number;
  used: number;
  size: number;
  written: number;
  cpu_fallback?: boolean;
}
export interface ReadChunkResult<E = TensorResult> {
  chunkId: string;
  /** JSON arrays, or a Tensor with encoding "binary" / "base64". */
  embeddings: E;
  rows: number;
  width: number;
  used: number;
  size: number;
}
/** The seed's MemoryChunk shape. */
export interface MemoryChunk {
  id: string;
  size: number;
  created: number;
  lastAccessed: number;
  metadata: { chatId?: string; rows: number; width: number; used: number };
}
export interface ListChunksResult { chunks: MemoryChunk[]; count: number }

export interface McpTool {
  name: string;
  title?: string;
  description: string;
  inputSchema: { [key: string]: unknown };
  outputSchema?: { [key: string]: unknown };
}
export interface CallToolResult {
  content: { type: string; text: string }[];
  structuredContent?: { [key: string]: unknown };
  isError: boolean;
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

export interface CallOptions {
  /** ms; 0: no timeout. Default: the client's timeout. */
  timeout?: number;
}

export interface ReconnectOptions {
  /** Attempts before giving up (default: no limit). */
  retries?: number;
  /** First delay in ms (default 100). */
  minDelay?: number;
  /** Longest delay in ms (default 5000). */
  maxDelay?: number;
  /** Growth of the delay per attempt (default 2). */
  factor?: number;
}

/** A WebSocket class: the WHATWG one, or npm ws's. */
export type WebSocketClass = new (
  url: string, protocols?: string | string[], options?: any) => any;

export interface ConnectOptions {
  /** Sent as Authorization: Bearer (npm ws) or ?token= (browsers). */
  token?: string;
  /** Per-request timeout in ms (default 60000; 0: none). */
  timeout?: number;
  /** Connect timeout in ms (default: timeout). */
  connectTimeout?: number;
  /** Reconnect after a lost connection (default false). */
  reconnect?: boolean | ReconnectOptions;
  /** Typed arrays in binary frames (default true); false: base64 text. */
  binary?: boolean;
  /** The WebSocket class to use (default: global, else npm ws). */
  WebSocket?: WebSocketClass;
  /** Options for npm ws's constructor (headers, agent, ...). */
  wsOptions?: { [key: string]: unknown };
}

export interface ClientEvents {
  disconnect: { code: number; reason: string };
  reconnecting: { attempt: number; delay: number };
  reconnect: { attempt: number };
  close: { code: number; reason: string };
  error: Error;
}

type NotJson = { encoding?: 'binary' | 'base64' };
type AsJson = { encoding?: 'json' };

export declare class MnemoClient {
  private constructor();
  readonly url: string;
  readonly connected: boolean;
  readonly inFlight: number;

  on<E extends keyof ClientEvents>(event: E,
                                   fn: (arg: ClientEvents[E]) => void): this;
  off<E extends keyof ClientEvents>(event: E,
                                    fn: (arg: ClientEvents[E]) => void): this;

  /** Any method by name. */
  call<T = any>(method: string, params?: object, callOptions?: CallOptions): Promise<T>;
  /** A notification: no id, no reply. */
  notify(method: string, params?: object): void;
  /** Close; requests in flight are rejected with ConnectionError. */
  close(code?: number, reason?: string): Promise<void>;

  // processEmbeddings: typed input (or encoding binary / base64) gives a
  // Tensor; plain arrays give arrays of the same depth.
  processEmbeddings(embeddings: TypedTensorInput | Base64Tensor,
                    options?: ProcessOptions & NotJson,
                    callOptions?: CallOptions): Promise<ProcessResult<Tensor>>;
  processEmbeddings(embeddings: TensorInput,
                    options: ProcessOptions & { encoding: 'binary' | 'base64' },
                    callOptions?: CallOptions): Promise<ProcessResult<Tensor>>;
  processEmbeddings(embeddings: number[][] | Record<string, number>[],
                    options?: ProcessOptions & AsJson,
                    callOptions?: CallOptions): Promise<ProcessResult<number[][]>>;
  processEmbeddings(embeddings: number[] | Record<string, number>,
                    options?: ProcessOptions & AsJson,
                    callOptions?: CallOptions): Promise<ProcessResult<number[]>>;
  processEmbeddings(embeddings: TensorInput, options?: ProcessOptions,
                    callOptions?: CallOptions): Promise<ProcessResult>;
  /** The seed's form: processEmbeddings({embeddings, options, chatId}). */
  processEmbeddings(params: ProcessEmbeddingsParams,
                    callOptions?: CallOptions): Promise<ProcessResult>;

  fitPCA(params: FitPCAParams, callOptions?: CallOptions): Promise<FitPCAResult>;
  listPCAModels(callOptions?: CallOptions):
      Promise<{ models: PCAModelInfo[]; count: number }>;
  deletePCAModel(name: string, callOptions?: CallOptions):
      Promise<{ name: string; deleted: boolean }>;
  getMetrics(callOptions?: CallOptions): Promise<Metrics>;
  health(callOptions?: CallOptions): Promise<Health>;
  cleanup(callOptions?: CallOptions): Promise<CleanupResult>;

  createCollection(params: CreateCollectionParams,
                   callOptions?: CallOptions): Promise<CollectionInfo>;
  listCollections(callOptions?: CallOptions):
      Promise<{ collections: CollectionInfo[]; count: number }>;
  getCollection(name: string, callOptions?: CallOptions): Promise<CollectionInfo>;
  dropCollection(name: string, callOptions?: CallOptions):
      Promise<DropCollectionResult>;
  addMemories(collection: string, memories: NewMemory[] | AddMemoriesBatch,
              callOptions?: CallOptions): Promise<AddMemoriesResult>;
  storeMemory(collection: string, memory: NewMemory,
              callOptions?: CallOptions): Promise<{ id: string }>;
  getMemories(collection: string, ids: string[], options?: GetMemoriesOptions,
              callOptions?: CallOptions): Promise<GetMemoriesResult>;
  updateMemory(collection: string, id: string, changes: MemoryChanges,
               callOptions?: CallOptions): Promise<Memory>;
  searchMemories(collection: string, query: TensorInput, options?: SearchOptions,
                 callOptions?: CallOptions): Promise<SearchResult>;
  deleteMemories(collection: string, ids: string[],
                 callOptions?: CallOptions): Promise<DeleteMemoriesResult>;

  allocateMemory(size: number, options?: AllocateOptions,
                 callOptions?: CallOptions): Promise<ChunkInfo>;
  processChunk(chunkId: string, embeddings: TensorInput,
               options?: ProcessChunkOptions,
               callOptions?: CallOptions): Promise<ProcessChunkResult>;
  readChunk(chunkId: string, options: { encoding: 'binary' | 'base64' },
            callOptions?: CallOptions): Promise<ReadChunkResult<Tensor | []>>;
  readChunk(chunkId: string, options?: { encoding?: 'json' },
            callOptions?: CallOptions): Promise<ReadChunkResult<number[][]>>;
  listChunks(chatId?: string | { chatId?: string },
             callOptions?: CallOptions): Promise<ListChunksResult>;
  freeMemory(chunkId: string, callOptions?: CallOptions):
      Promise<{ chunkId: string; freed: boolean }>;

  /** MCP ping. */
  ping(callOptions?: CallOptions): Promise<{}>;
  /** MCP tools/list. */
  listTools(callOptions?: CallOptions): Promise<{ tools: McpTool[] }>;
  /** MCP tools/call. */
  callTool(name: string, args?: { [key: string]: unknown },
           callOptions?: CallOptions): Promise<CallToolResult>;
}

/** Connect to mnemod (default url ws://127.0.0.1:3001). */
export declare function connect(url?: string,
                                options?: ConnectOptions): Promise<MnemoClient>;
export declare function connect(options: ConnectOptions & { url?: string }):
    Promise<MnemoClient>;

/** The seed's Quick Reference: hpcServiceFactory.initialize({url}). */
export declare const hpcServiceFactory: {
  initialize(options?: ConnectOptions & { url?: string }): Promise<MnemoClient>;
};

declare const _default: {
  connect: typeof connect;
  hpcServiceFactory: typeof hpcServiceFactory;
  MnemoClient: typeof MnemoClient;
  Tensor: typeof Tensor;
};
export default _default;
