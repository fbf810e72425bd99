"""Clients for a ckbd Triton server: ``TritonDecoder`` and ``TritonEncoder``.

They have the ``decode``/``encode`` methods of the in-process codec, so the CLI swaps them in for
``--server``. Each thread gets its own connection (tritonclient's clients are not thread-safe), which
is how a batch goes out as concurrent requests. Server-side errors become a one-line
:class:`ServerError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ckbd.errors import CkbdError, ImageError, UsageError, require
from ckbd.runtime.bitstream import DEFAULT_MAX_PIXELS
from ckbd.runtime.stream_io import StreamData
from ckbd.serving.repository import DECODE_MODEL, ENCODE_MODEL

T = TypeVar("T")
R = TypeVar("R")


class ServerError(CkbdError):
    """The server answered a request with an error, or could not be reached."""


def parse_url(url: str) -> tuple[str, str]:
    """``host:port`` or ``http://host:port`` -> ("http", "host:port"); ``grpc://host:port`` -> ("grpc", ...)."""
    for scheme in ("http", "grpc"):
        if url.startswith(f"{scheme}://"):
            address = url[len(scheme) + 3:].rstrip("/")
            break
    else:
        if "://" in url:
            raise UsageError(f"unsupported server URL '{url}': use host:port (HTTP) or grpc://host:port")
        scheme, address = "http", url.rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"server URL '{url}' needs a host and a port, e.g. 127.0.0.1:8000")
    return scheme, address


class _TritonClient:
    def __init__(self, url: str, model: str, timeout_s: float, concurrency: int) -> None:
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.module = require(f"tritonclient.{self.protocol}", "serve", "--server")
        self.utils = require("tritonclient.utils", "serve", "--server")
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self.module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            else:
                client = self.module.InferenceServerClient(self.address)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def infer(self, name: str, array: np.ndarray, datatype: str, output: str) -> np.ndarray:
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        options = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self._client().infer(self.model, [tensor], **options)
        except self.utils.InferenceServerException as exc:
            raise ServerError(f"server {self.url}: {_one_line(exc.message() or str(exc))}") from None
        except (OSError, TimeoutError) as exc:
            raise ServerError(f"cannot reach the server at {self.url}: {exc}") from None
        return result.as_numpy(output)  # type: ignore[no-any-return]

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R | CkbdError]:
        """``fn`` over ``items`` as concurrent requests; a failed item yields its error, in order."""
        def safe(item: T) -> R | CkbdError:
            try:
                return fn(item)
            except CkbdError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(safe, items))

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()


def _one_line(message: str) -> str:
    message = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if message.startswith("[") and "] " in message:  # HTTP status prefix, e.g. "[500] "
        message = message.split("] ", 1)[1]
    return message


class TritonDecoder:
    """Bitstream bytes -> uint8 H x W x 3, decoded by a ckbd Triton server."""

    #: Reading a stream locally is bounded like the in-process decoder; the server applies its own limits.
    max_pixels = DEFAULT_MAX_PIXELS

    def __init__(self, url: str, model: str = DECODE_MODEL, timeout_s: float = 120.0, concurrency: int = 4) -> None:
        self._client = _TritonClient(url, model, timeout_s, concurrency)

    def check_header(self, header: object) -> None:
        """The server checks the stream against its model; nothing is known about that model here."""

    def decode(self, data: bytes | StreamData) -> np.ndarray:
        """Decode on the server: the file's bytes, or a stream ``read_stream`` read (as a local decoder takes)."""
        payload = data.data if isinstance(data, StreamData) else data
        image = self._client.infer("bitstream", np.array([[payload]], dtype=np.object_), "BYTES", "image")
        return np.ascontiguousarray(image[0])

    def decode_many(self, streams: Sequence[bytes]) -> list[np.ndarray | CkbdError]:
        return self._client.map(self.decode, streams)

    def close(self) -> None:
        self._client.close()


class TritonEncoder:
    """uint8 H x W x 3 -> bitstream bytes, encoded by a ckbd Triton server."""

    def __init__(self, url: str, model: str = ENCODE_MODEL, timeout_s: float = 120.0, concurrency: int = 4) -> None:
        self._client = _TritonClient(url, model, timeout_s, concurrency)

    def encode(self, image: np.ndarray) -> bytes:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError("expected a uint8 H x W x 3 RGB array")
        out = self._client.infer("image", np.ascontiguousarray(image[None]), "UINT8", "bitstream")
        value = out.reshape(-1)[0]
        return value if isinstance(value, bytes) else bytes(value)

    def encode_many(self, images: Sequence[np.ndarray]) -> list[bytes | CkbdError]:
        return self._client.map(self.encode, images)

    def close(self) -> None:
        self._client.close()
