"""mnemo_client: a Python client for mnemod, the mnemo memory server.

    import numpy as np, mnemo_client

    with mnemo_client.Client("ws://127.0.0.1:3001") as c:       # blocking
        c.create_collection("notes", dim=3)
        c.add_memories("notes", [{"id": "a", "embedding": [1, 0, 0],
                                  "content": "the sky is blue"}])
        hits = c.search_memories("notes", np.array([[0.9, 0.1, 0]]), k=1)

    async with mnemo_client.connect("ws://127.0.0.1:3001") as c:  # asyncio
        res = await c.process_embeddings(np.ones((4, 8)), normalize=True)

Both faces are one implementation (the blocking Client runs the
AsyncClient on an event loop in a background thread). numpy arrays travel
in binary frames and come back as numpy arrays viewing the reply; lists
travel as JSON. Errors raise MnemoError subclasses (see
mnemo_client.errors). README.md next to this package has the details.
"""
from .aio import API_METHODS, DEFAULT_URL, AsyncClient, connect
from .errors import (ClientTimeout, ConnectFailed, ConnectionLost,
                     InternalError, InvalidParams, InvalidRequest,
                     MethodNotFound, MnemoError, Overloaded, ParseError,
                     ProcessingError, RateLimited, RequestTimeout,
                     ResourceError, error_from_reply)
from .sync import Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "Client", "connect", "DEFAULT_URL", "API_METHODS",
    "MnemoError", "ParseError", "InvalidRequest", "MethodNotFound",
    "InvalidParams", "InternalError", "ResourceError", "ProcessingError",
    "RequestTimeout", "RateLimited", "Overloaded", "ClientTimeout",
    "ConnectionLost", "ConnectFailed", "error_from_reply",
]
