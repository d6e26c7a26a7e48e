"""The exceptions of mnemo_client.

Every error the server answers with becomes a `MnemoError` (or the subclass
for its code) carrying the JSON-RPC `code`, `message` and `data`. Failures
of the connection itself are `ConnectionLost` (the socket closed with
requests in flight, or a call on a closed client) and `ConnectFailed` (the
handshake was refused or the server could not be reached); a request the
client gave up waiting for is `ClientTimeout`.
"""

__all__ = [
    "MnemoError", "ParseError", "InvalidRequest", "MethodNotFound",
    "InvalidParams", "InternalError", "ResourceError", "ProcessingError",
    "RequestTimeout", "RateLimited", "Overloaded", "ClientTimeout",
    "ConnectionLost", "ConnectFailed", "error_from_reply",
]


class MnemoError(Exception):
    """An error answered by mnemod: `code` (the JSON-RPC error code),
    `message` (what was wrong, as the server said it) and `data` (the
    error's data object, or None). Client-side failures (ClientTimeout,
    ConnectionLost, ConnectFailed) are MnemoErrors with code None."""

    code = None

    def __init__(self, code, message, data=None):
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self):
        head = f"[{self.code}] " if self.code is not None else ""
        tail = f" (data: {self.data})" if self.data else ""
        return f"{head}{self.message}{tail}"

    def _get(self, key):
        return self.data.get(key) if isinstance(self.data, dict) else None


class ParseError(MnemoError):
    """-32700: the server could not parse what was sent."""


class InvalidRequest(MnemoError):
    """-32600: not a valid JSON-RPC request."""


class MethodNotFound(MnemoError):
    """-32601: no method of that name."""


class InvalidParams(MnemoError):
    """-32602: a parameter is missing or wrong; the message names it."""


class InternalError(MnemoError):
    """-32603: the server failed (for example its data directory cannot be
    written)."""


class ResourceError(MnemoError):
    """-32000: not enough memory. `requested` and `available` are in
    bytes (None when the server did not say)."""

    @property
    def requested(self):
        return self._get("requested")

    @property
    def available(self):
        return self._get("available")


class ProcessingError(MnemoError):
    """-32001: the computation failed (device or numerical error)."""


class RequestTimeout(MnemoError, TimeoutError):
    """-32002: the server gave up after processing.timeout ms
    (`timeout_ms`). Also the base class of ClientTimeout, so that
    `except RequestTimeout` catches both kinds of timeout."""

    @property
    def timeout_ms(self):
        return self._get("timeout_ms")


class RateLimited(MnemoError):
    """-32003: more than server.rate_limit requests per minute on this
    connection; retry after `retry_after_ms`."""

    @property
    def retry_after_ms(self):
        return self._get("retry_after_ms")


class Overloaded(MnemoError):
    """-32004: the server's queue is full, or it is shutting down and
    answers what is queued without running it; retry later (on another
    server when it is shutting down)."""


class ClientTimeout(RequestTimeout):
    """The client stopped waiting for a reply after `timeout` seconds.
    The connection stays usable; the server may still carry the request
    out (a late reply is dropped). code is None."""

    def __init__(self, method, timeout):
        super().__init__(None, f"no reply to {method} within {timeout} s",
                         {"timeout_s": timeout})
        self.method = method
        self.timeout = timeout


class ConnectionLost(MnemoError, ConnectionError):
    """The connection closed: every request in flight fails with this
    (none is sent again: the server may have applied it), and so does
    every later call. `close_code` and `close_reason` are the WebSocket
    close status and reason (1006 and "" when the socket just dropped;
    None when the client itself closed)."""

    def __init__(self, close_code, close_reason, message=None):
        if message is None:
            message = (f"connection closed (code {close_code}"
                       + (f": {close_reason}" if close_reason else "") + ")")
        super().__init__(None, message,
                         {"close_code": close_code,
                          "close_reason": close_reason})
        self.close_code = close_code
        self.close_reason = close_reason


class ConnectFailed(MnemoError, ConnectionError):
    """The connection could not be opened: `status` is the HTTP status of
    a refused handshake (401 without a valid token, 403 for a refused
    Origin, 503 while the server shuts down) or None when the server could
    not be reached at all."""

    def __init__(self, url, status, message):
        super().__init__(None, message, {"url": url, "status": status})
        self.url = url
        self.status = status


_BY_CODE = {
    -32700: ParseError,
    -32600: InvalidRequest,
    -32601: MethodNotFound,
    -32602: InvalidParams,
    -32603: InternalError,
    -32000: ResourceError,
    -32001: ProcessingError,
    -32002: RequestTimeout,
    -32003: RateLimited,
    -32004: Overloaded,
}


def error_from_reply(error):
    """The exception for a JSON-RPC error object {code, message, data?}."""
    if not isinstance(error, dict):
        return MnemoError(None, f"malformed error in reply: {error!r}")
    code = error.get("code")
    cls = _BY_CODE.get(code, MnemoError)
    return cls(code, str(error.get("message", "")), error.get("data"))
