"""AsyncClient: the asyncio client, and the one implementation behind the
blocking Client (mnemo_client.sync).

One WebSocket (subprotocol "mcp") carries any number of requests at once:
each gets its own id and a future that a single reader task completes
when the reply with that id arrives, so `asyncio.gather` of many calls
shares the socket. Params holding numpy arrays go as binary frames; the
rest as JSON text (see mnemo_client.wire).
"""
import asyncio
import itertools
import logging

import websockets

from . import wire
from .errors import (ClientTimeout, ConnectFailed, ConnectionLost,
                     MnemoError, error_from_reply)

__all__ = ["AsyncClient", "connect", "DEFAULT_URL", "API_METHODS"]

log = logging.getLogger("mnemo_client")

DEFAULT_URL = "ws://127.0.0.1:3001"

class _ClientTimeout:
    """Stands for "the client's timeout" in a call's timeout parameter."""

    def __repr__(self):
        return "<the client's timeout>"


_DEFAULT = _ClientTimeout()

# The public methods that talk to the server; mnemo_client.sync gives the
# blocking Client one of each.
API_METHODS = (
    "call", "process_embeddings", "fit_pca", "list_pca_models",
    "delete_pca_model", "get_metrics", "health", "cleanup",
    "create_collection", "list_collections", "get_collection",
    "drop_collection", "add_memories", "store_memory", "get_memories",
    "update_memory", "search_memories", "delete_memories",
    "allocate_memory", "process_chunk", "read_chunk", "list_chunks",
    "free_memory", "ping", "list_tools", "call_tool",
)


def _params(**kw):
    """The given keyword arguments without those left at None."""
    return {k: v for k, v in kw.items() if v is not None}


def _status_of(exc):
    """The HTTP status of a refused handshake, in websockets' legacy
    (InvalidStatusCode.status_code) and new (InvalidStatus.response)
    exceptions."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status


def _close_of(exc):
    """(code, reason) of a websockets.ConnectionClosed."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return rcvd.code, rcvd.reason
    return 1006, ""


async def _open_socket(url, headers, connect_timeout, max_size, compression,
                       ping_interval, ssl):
    kw = dict(subprotocols=["mcp"], max_size=max_size,
              compression=compression, open_timeout=connect_timeout,
              ping_interval=ping_interval)
    if ssl is not None:
        kw["ssl"] = ssl
    try:  # websockets >= 13: the new asyncio implementation
        from websockets.asyncio.client import connect as ws_connect
        kw["additional_headers"] = headers
    except ImportError:  # websockets 10 to 12 (Debian 12 has 10.4)
        ws_connect = websockets.connect
        kw["extra_headers"] = headers
    return await ws_connect(url, **kw)


class AsyncClient:
    """A connection to mnemod. Open one with `await mnemo_client.connect(url)`
    or `async with mnemo_client.connect(url) as c:`; close it with
    `await c.close()` (or the `async with`).

    Every method is a coroutine returning the method's `result` object as
    docs/API.md shows it (a dict), with tensors as numpy arrays where the
    reply carries them in binary or base64 (see mnemo_client.wire); a
    JSON-RPC error raises the MnemoError subclass of its code. `timeout`
    (seconds, None for no limit) bounds the wait for each reply: on expiry
    ClientTimeout is raised and the connection stays usable.
    """

    def __init__(self, ws, url, timeout=60.0, unpack=True):
        """Use connect(); this wraps an open websockets connection."""
        self._ws = ws
        self.url = url
        self.timeout = timeout
        self.unpack = unpack
        self._ids = itertools.count(1)
        self._pending = {}
        self._lost = None
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop())

    @classmethod
    async def open(cls, url=DEFAULT_URL, *, token=None, timeout=60.0,
                   connect_timeout=10.0, headers=None, unpack=True,
                   max_size=None, compression=None, ping_interval=20.0,
                   ssl=None):
        """Connect; see mnemo_client.connect for the arguments."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        try:
            ws = await _open_socket(url, hdrs, connect_timeout, max_size,
                                    compression, ping_interval, ssl)
        except websockets.InvalidHandshake as e:
            status = _status_of(e)
            raise ConnectFailed(url, status, f"{url}: handshake refused"
                                + (f" with HTTP {status}" if status else "")
                                + f" ({e})") from e
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(url, None, f"{url}: cannot connect "
                                f"({type(e).__name__}: {e})") from e
        return cls(ws, url, timeout, unpack)

    # -- the connection ---------------------------------------------------
    @property
    def closed(self):
        """True once the connection is closed (by either side)."""
        return self._lost is not None

    @property
    def in_flight(self):
        """Requests sent and not yet answered."""
        return len(self._pending)

    async def close(self):
        """Close the connection. Requests still in flight fail with
        ConnectionLost (close_code None). Closing twice is harmless."""
        if self._lost is None:
            self._lost = ConnectionLost(None, "", "closed by the client")
        self._fail_pending(self._lost)
        await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _fail_pending(self, exc):
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                # a fresh exception per request: each gets its own traceback
                fut.set_exception(ConnectionLost(exc.close_code,
                                                 exc.close_reason,
                                                 exc.message))

    async def _read_loop(self):
        lost = None
        try:
            while True:
                msg = await self._ws.recv()
                try:
                    self._dispatch(msg)
                except Exception:  # a bad reply must not stop the reader
                    log.exception("mnemo_client: cannot read a reply")
        except websockets.ConnectionClosed as e:
            lost = ConnectionLost(*_close_of(e))
        except asyncio.CancelledError:
            lost = ConnectionLost(None, "", "closed by the client")
            raise
        except Exception as e:  # noqa: BLE001 - reported to every caller
            lost = ConnectionLost(1006, "", f"connection failed: {e!r}")
        finally:
            if self._lost is None:
                self._lost = lost
            self._fail_pending(self._lost)

    def _dispatch(self, msg):
        obj, frame, start = wire.decode_message(msg)
        for reply in (obj if isinstance(obj, list) else [obj]):
            if not isinstance(reply, dict):
                log.warning("mnemo_client: not a reply: %r", reply)
                continue
            fut = self._pending.pop(reply.get("id"), None)
            if fut is None or fut.done():
                if "error" in reply and reply.get("id") is None:
                    log.warning("mnemo_client: server error without an "
                                "id: %s", reply["error"])
                # else: the reply to a request the caller gave up on
                continue
            if "error" in reply:
                fut.set_exception(error_from_reply(reply["error"]))
                continue
            try:
                result = wire.decode_tensors(reply.get("result"), frame,
                                             start, self.unpack)
            except (ValueError, TypeError, KeyError) as e:
                fut.set_exception(MnemoError(
                    None, f"cannot decode the reply: {e}", None))
            else:
                fut.set_result(result)

    async def call(self, method, params=None, *, timeout=_DEFAULT):
        """Call any method by its JSON-RPC name with a params dict; returns
        its result. numpy arrays anywhere in params make it a binary
        frame."""
        if self._lost is not None:
            raise ConnectionLost(self._lost.close_code,
                                 self._lost.close_reason, self._lost.message)
        if timeout is _DEFAULT:
            timeout = self.timeout
        rid = next(self._ids)
        request = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            request["params"] = params
        try:
            message = wire.encode_request(request)
        except (TypeError, ValueError) as e:  # NaN in a list, a set, ...
            raise type(e)(f"{method}: the params cannot be sent: {e}") from e
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut

        async def exchange():
            try:
                await self._ws.send(message)
            except websockets.ConnectionClosed as e:
                if self._lost is None:
                    self._lost = ConnectionLost(*_close_of(e))
                raise ConnectionLost(self._lost.close_code,
                                     self._lost.close_reason,
                                     self._lost.message) from e
            return await fut

        try:
            if timeout is None:
                return await exchange()
            try:
                return await asyncio.wait_for(exchange(), timeout)
            except asyncio.TimeoutError:
                if fut.done() and not fut.cancelled():
                    return fut.result()  # answered just at the deadline
                raise ClientTimeout(method, timeout) from None
        finally:
            self._pending.pop(rid, None)

    # -- processing -------------------------------------------------------
    async def process_embeddings(self, embeddings, *, normalize=None,
                                 quantization=None, dimension_reduction=None,
                                 reduce_dimensions=None, pca_model=None,
                                 whiten=None, quantization_bits=None,
                                 precision=None, batch_size=None,
                                 encoding=None, chat_id=None, options=None,
                                 timeout=_DEFAULT):
        """Normalize, reduce (PCA) and quantize a batch of vectors
        (processEmbeddings). Each keyword is the option of that name
        (None: not sent, the server's default); `options` is a dict of
        further options, which the keywords override. Returns the result
        dict: "processed" is a numpy array when `embeddings` was one (sent
        as a binary frame) or encoding is "binary" / "base64", nested lists
        for list input; "scales" (int8, int4), "affine" (int8_affine) and
        "metadata" as in docs/API.md."""
        opts = dict(options or {})
        opts.update(_params(
            normalize=normalize, quantization=quantization,
            dimension_reduction=dimension_reduction,
            reduce_dimensions=reduce_dimensions, pca_model=pca_model,
            whiten=whiten, quantization_bits=quantization_bits,
            precision=precision, batch_size=batch_size, encoding=encoding))
        params = {"embeddings": embeddings}
        if opts:
            params["options"] = opts
        if chat_id is not None:
            params["chatId"] = chat_id
        return await self.call("processEmbeddings", params, timeout=timeout)

    async def fit_pca(self, name, embeddings=None, *, n_components,
                      collection=None, whiten=None, timeout=_DEFAULT):
        """Fit a PCA model on `embeddings` (or on what `collection`
        holds) and keep it as `name` (fitPCA). Returns name, n_components,
        input_dim, n_samples, whiten, explained_variance_ratio,
        total_explained_variance, replaced."""
        return await self.call("fitPCA", _params(
            name=name, embeddings=embeddings, collection=collection,
            n_components=n_components, whiten=whiten), timeout=timeout)

    async def list_pca_models(self, *, timeout=_DEFAULT):
        """The PCA models: {"models": [...], "count"} (listPCAModels)."""
        return await self.call("listPCAModels", timeout=timeout)

    async def delete_pca_model(self, name, *, timeout=_DEFAULT):
        """Delete a PCA model: {"name", "deleted"} (deletePCAModel)."""
        return await self.call("deletePCAModel", {"name": name},
                               timeout=timeout)

    async def get_metrics(self, *, timeout=_DEFAULT):
        """Memory, compute and request figures (getMetrics)."""
        return await self.call("getMetrics", timeout=timeout)

    async def health(self, *, timeout=_DEFAULT):
        """Liveness and memory pressure: status, state, backend, ...
        (health)."""
        return await self.call("health", timeout=timeout)

    async def cleanup(self, *, timeout=_DEFAULT):
        """Release cached memory; reports the resident size before and
        after (cleanup)."""
        return await self.call("cleanup", timeout=timeout)

    # -- collections and memories -----------------------------------------
    async def create_collection(self, name, dim, *, metric=None, dtype=None,
                                pca_model=None, normalize=None,
                                timeout=_DEFAULT):
        """Create a collection of `dim`-wide embeddings (createCollection):
        metric "cosine" (default), "ip" or "l2"; dtype "float32" (default),
        "float16", "int8" or "binary". Returns its description."""
        return await self.call("createCollection", _params(
            name=name, dim=dim, metric=metric, dtype=dtype,
            pca_model=pca_model, normalize=normalize), timeout=timeout)

    async def list_collections(self, *, timeout=_DEFAULT):
        """Every collection: {"collections": [...], "count"}."""
        return await self.call("listCollections", timeout=timeout)

    async def get_collection(self, name, *, timeout=_DEFAULT):
        """One collection's description (getCollection)."""
        return await self.call("getCollection", {"name": name},
                               timeout=timeout)

    async def drop_collection(self, name, *, timeout=_DEFAULT):
        """Delete a collection and its memories: {"name", "dropped",
        "count"} (dropCollection)."""
        return await self.call("dropCollection", {"name": name},
                               timeout=timeout)

    async def add_memories(self, collection, memories=None, *,
                           embeddings=None, timeout=_DEFAULT):
        """Add memories, all or nothing (addMemories). `memories` is a list
        of dicts with the server's field names (id, embedding, content,
        metadata, chatId, timestamp, significance); `embeddings` (one row
        per memory) may bring the vectors instead. Returns {"ids",
        "count"}."""
        return await self.call("addMemories", _params(
            collection=collection, memories=memories, embeddings=embeddings),
            timeout=timeout)

    async def store_memory(self, collection, embedding, content=None, *,
                           id=None, metadata=None, chat_id=None,
                           timestamp=None, significance=None,
                           timeout=_DEFAULT):
        """Store one memory (storeMemory); returns its id (the server
        assigns one when `id` is None)."""
        result = await self.call("storeMemory", _params(
            collection=collection, embedding=embedding, content=content,
            id=id, metadata=metadata, chatId=chat_id, timestamp=timestamp,
            significance=significance), timeout=timeout)
        return result["id"]

    async def get_memories(self, collection, ids, *, include=None,
                           timeout=_DEFAULT):
        """Memories by id, in that order: {"memories", "missing", "count"}
        (getMemories). include: e.g. ["content", "metadata",
        "embedding"]."""
        return await self.call("getMemories", _params(
            collection=collection, ids=list(ids), include=include),
            timeout=timeout)

    async def update_memory(self, collection, id, *, content=None,
                            metadata=None, significance=None, include=None,
                            timeout=_DEFAULT):
        """Change a memory's content, metadata (replaced as a whole) or
        significance; returns the memory as it is now (updateMemory)."""
        return await self.call("updateMemory", _params(
            collection=collection, id=id, content=content, metadata=metadata,
            significance=significance, include=include), timeout=timeout)

    async def search_memories(self, collection, query, k=10, *, filter=None,
                              min_similarity=None, time_decay=None,
                              significance_weight=None, now=None,
                              include=None, reinforce=None,
                              timeout=_DEFAULT):
        """Exact search (searchMemories): for each query vector, the k best
        memories. Returns {"results": [[hit, ...] per query], "metadata"};
        a hit has id, score, similarity, significance, decay, timestamp,
        chatId, and content / metadata (or what include asks). filter:
        {"chatId", "since", "until", "metadata": {...}}."""
        return await self.call("searchMemories", _params(
            collection=collection, query=query, k=k, filter=filter,
            min_similarity=min_similarity, time_decay=time_decay,
            significance_weight=significance_weight, now=now,
            include=include, reinforce=reinforce), timeout=timeout)

    async def delete_memories(self, collection, ids, *, timeout=_DEFAULT):
        """Delete memories by id: {"deleted", "missing"}
        (deleteMemories)."""
        return await self.call("deleteMemories", {
            "collection": collection, "ids": list(ids)}, timeout=timeout)

    # -- working chunks ---------------------------------------------------
    async def allocate_memory(self, size, *, chat_id=None, chunk_id=None,
                              timeout=_DEFAULT):
        """Reserve `size` bytes of working memory (allocateMemory); returns
        the chunk (chunkId, size, rows, width, used, ...). A chunk that does
        not fit raises ResourceError (requested, available)."""
        return await self.call("allocateMemory", _params(
            size=size, chatId=chat_id, chunkId=chunk_id), timeout=timeout)

    async def process_chunk(self, chunk_id, embeddings, *, normalize=None,
                            pca_model=None, timeout=_DEFAULT):
        """Append rows to a chunk as float32, after normalize / pca_model
        (processChunk). Rows that do not fit raise ResourceError."""
        params = {"chunkId": chunk_id, "embeddings": embeddings}
        opts = _params(normalize=normalize, pca_model=pca_model)
        if opts:
            params["options"] = opts
        return await self.call("processChunk", params, timeout=timeout)

    async def read_chunk(self, chunk_id, *, encoding="binary",
                         timeout=_DEFAULT):
        """A chunk's rows (readChunk). Unlike the server's default, the rows
        come as a binary frame: "embeddings" is a float32 numpy view of the
        reply; encoding="json" gives nested lists."""
        return await self.call("readChunk", _params(
            chunkId=chunk_id, encoding=encoding), timeout=timeout)

    async def list_chunks(self, chat_id=None, *, timeout=_DEFAULT):
        """Working chunks, oldest first: {"chunks", "count"}
        (listChunks)."""
        return await self.call("listChunks", _params(chatId=chat_id),
                               timeout=timeout)

    async def free_memory(self, chunk_id, *, timeout=_DEFAULT):
        """Free a chunk now: {"chunkId", "freed"} (freeMemory)."""
        return await self.call("freeMemory", {"chunkId": chunk_id},
                               timeout=timeout)

    # -- MCP ----------------------------------------------------------------
    async def ping(self, *, timeout=_DEFAULT):
        """MCP ping: {}."""
        return await self.call("ping", timeout=timeout)

    async def list_tools(self, *, timeout=_DEFAULT):
        """The MCP tools with their JSON schemas: a list of dicts."""
        return (await self.call("tools/list", timeout=timeout))["tools"]

    async def call_tool(self, name, arguments=None, *, timeout=_DEFAULT):
        """Call a method as an MCP tool (tools/call): {"content",
        "structuredContent", "isError"}; a failure inside the tool is a
        result with isError true, not an exception."""
        return await self.call("tools/call", _params(
            name=name, arguments=arguments), timeout=timeout)


class _Connecting:
    """What connect() returns: await it for an AsyncClient, or use it in
    `async with` to close the client at the end of the block."""

    def __init__(self, url, kw):
        self._url = url
        self._kw = kw
        self._client = None

    def __await__(self):
        return AsyncClient.open(self._url, **self._kw).__await__()

    async def __aenter__(self):
        self._client = await AsyncClient.open(self._url, **self._kw)
        return self._client

    async def __aexit__(self, *exc):
        await self._client.close()


def connect(url=DEFAULT_URL, *, token=None, timeout=60.0,
            connect_timeout=10.0, headers=None, unpack=True, max_size=None,
            compression=None, ping_interval=20.0, ssl=None):
    """Open an AsyncClient: `async with connect(url) as c:` or
    `c = await connect(url)`.

    url: ws:// or wss:// address of mnemod. token: sent as
    "Authorization: Bearer <token>" (server.auth_tokens). timeout: seconds
    to wait for each reply (None: no limit; each method takes timeout= too).
    connect_timeout: seconds for the handshake. headers: extra HTTP
    headers. unpack: decode bfloat16 / int4 / binary results into plain
    arrays (False: views of the packed bytes). max_size: largest reply
    accepted (None: any). compression: None (default; tensors do not
    compress) or "deflate". ping_interval: WebSocket keep-alive pings,
    seconds (None: off). ssl: an ssl.SSLContext for wss://.
    A refused handshake or an unreachable server raises ConnectFailed."""
    return _Connecting(url, dict(
        token=token, timeout=timeout, connect_timeout=connect_timeout,
        headers=headers, unpack=unpack, max_size=max_size,
        compression=compression, ping_interval=ping_interval, ssl=ssl))
