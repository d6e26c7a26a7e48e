"""Client: the blocking face of AsyncClient, for scripts and notebooks.

A Client owns an event loop running in a background thread, and the
AsyncClient on it; each method hands its coroutine to that loop and waits
for the result. Being the same implementation, it speaks the same wire
(binary frames for numpy arrays, many requests in flight) and raises the
same exceptions. It may be shared by threads: calls from several threads
at once travel together on the one socket. It works where an event loop is
already running in the calling thread (Jupyter), since it never runs one
there.
"""
import asyncio
import functools
import threading

from .aio import API_METHODS, DEFAULT_URL, AsyncClient
from .errors import ConnectionLost

__all__ = ["Client"]


class Client:
    """A blocking connection to mnemod:

        with mnemo_client.Client("ws://127.0.0.1:3001") as c:
            c.health()

    or `c = Client(url)` ... `c.close()`. The constructor connects (and
    raises ConnectFailed when it cannot); the arguments are those of
    mnemo_client.connect. Every method of AsyncClient is here with the
    same signature, returning its result instead of a coroutine.
    """

    def __init__(self, url=DEFAULT_URL, **kw):
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="mnemo-client")
        self._thread.start()
        self._async = None
        try:
            self._async = self._wait(AsyncClient.open(url, **kw))
        except BaseException:
            self._stop()
            raise

    def _run(self):
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _wait(self, coro):
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a Client method was called from its own "
                               "event loop thread; use the AsyncClient "
                               "there")
        if not self._thread.is_alive():
            coro.close()
            raise ConnectionLost(None, "", "closed by the client")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # KeyboardInterrupt while waiting: stop the call
            raise

    def _stop(self):
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    @property
    def timeout(self):
        """Seconds to wait for each reply (None: no limit)."""
        return self._async.timeout

    @timeout.setter
    def timeout(self, value):
        self._async.timeout = value

    @property
    def closed(self):
        return self._async is None or self._async.closed

    @property
    def in_flight(self):
        return self._async.in_flight

    def close(self):
        """Close the connection and stop the background loop. Calls in
        flight in other threads fail with ConnectionLost. Closing twice
        is harmless."""
        if self._async is not None and self._thread.is_alive():
            try:
                self._wait(self._async.close())
            finally:
                self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<mnemo_client.Client {self.url} {state}>"


def _blocking(name):
    coroutine_function = getattr(AsyncClient, name)

    @functools.wraps(coroutine_function)
    def method(self, *args, **kwargs):
        return self._wait(getattr(self._async, name)(*args, **kwargs))

    return method


for _name in API_METHODS:
    setattr(Client, _name, _blocking(_name))
del _name
