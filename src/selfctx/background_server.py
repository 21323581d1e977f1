"""Run a FastAPI app with uvicorn on a background thread (`serve_in_thread`, and the tests' fakes)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class RunningServer:
    """A uvicorn server on a background thread; `base_url` ends in /v1. Use as a context manager."""

    def __init__(self, app: Any, host: str, port: int, on_stop: Callable[[], None] | None = None) -> None:
        import uvicorn

        self.app = app
        self._on_stop = on_stop
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="selfctx-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def stats(self) -> Any:
        """What the app counts (`app.state.stats`)."""
        return self.app.state.stats

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._on_stop is not None:
            self._on_stop()  # e.g. drain the model's worker once no request is left
        self._socket.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
