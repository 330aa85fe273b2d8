"""The local server of the page that `python -m export --web` writes: `python -m export serve DIR`.

    python -m export serve artifacts              # http://127.0.0.1:8000/ (Ctrl-C stops it)
    python -m export serve artifacts --port 0     # any free port
    >>> from export import page_server, web_browser
    >>> with web_browser.serving(page_server.server("artifacts", port=0)) as url: ...

The server is waitress (a pure-Python WSGI server with no dependencies, strict request parsing and bounded
resources) running the small static app below, not http.server: waitress answers malformed requests with 400
itself, limits header and body sizes, serves from a fixed pool of THREADS threads, accepts at most
CONNECTION_LIMIT connections and closes idle ones after IDLE_TIMEOUT_S, and a client that hangs up costs a
closed socket, not a traceback. The app binds 127.0.0.1 only and serves GET and HEAD of the regular files
directly in the page folder (the page is flat): no directory listing, no subfolder, no dotfile (a staging
leftover), no symlink (opened with O_NOFOLLOW relative to the folder, so nothing outside it is reachable),
nothing but the names a page file can have. It answers only requests whose Host is localhost, 127.0.0.1 or
[::1] with its port: a web page on another site that points its own host name at 127.0.0.1 (DNS rebinding)
gets 403, not the files. It serves .wasm as application/wasm and .mjs as JavaScript whatever the system's MIME
tables say (Windows' registry can call .js text/plain, which browsers refuse for modules), and sends the two
headers that make the page cross-origin isolated: performance.now() then ticks every 5 µs rather than 100 µs,
and onnxruntime-web may use more than one wasm thread (without them it uses one).
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

from mnist_zoo.util import UserError, err, out

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
THREADS = 4  # requests answered at once (a browser opens at most 6 connections to one host)
CONNECTION_LIMIT = 32  # open connections; more wait in the listen queue until one closes
IDLE_TIMEOUT_S = 30  # an idle keep-alive connection is closed after this long
MAX_HEADER_BYTES = 16 << 10  # request line and headers; a page's requests need under 2 KiB
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}
# What a page file may be called: no separator, no NUL, no leading dot (so neither `..` nor a dotfile).
SERVABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")


class StaticPage:
    """The WSGI app: GET and HEAD of the regular files directly in `root`, for the Host names of `port`."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.hosts = {f"{name}:{port}" for name in ("localhost", "127.0.0.1", "[::1]")}
        if port == 80:  # a browser leaves the default port out of Host
            self.hosts |= {"localhost", "127.0.0.1", "[::1]"}
        # The folder, opened once: every file is opened relative to it, never by a path that a symlink or a
        # renamed folder could redirect (where the OS allows; elsewhere by path, refusing symlinks).
        at = os.open in os.supports_dir_fd
        self.root_fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if at else None

    def close(self) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    def _open(self, name: str) -> tuple[io.BufferedReader, os.stat_result] | None:
        """The file `name` directly in the folder, open, if it is a regular file (not a link, a folder, a
        device or a FIFO); else None."""
        if not SERVABLE.fullmatch(name):
            return None
        flags = (
            os.O_RDONLY
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_BINARY", 0)
        )
        try:
            if self.root_fd is not None:
                fd = os.open(name, flags, dir_fd=self.root_fd)
            elif (self.root / name).is_symlink():
                return None
            else:
                fd = os.open(self.root / name, flags)
        except (OSError, ValueError):
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb"), st

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            status, headers, body = self._answer(environ, method, path)
        except Exception as e:  # never a traceback to the client or the terminal
            status, headers, body = _plain("500 Internal Server Error", f"{type(e).__name__}")
        if int(status[:3]) >= 400:  # failures only, one line each, in ASCII whatever the request held
            line = f"mnist-zoo: server: {status[:3]} {quote(method[:16])} {quote(path[:200])}"
            err.print(line, highlight=False, markup=False, soft_wrap=True)
        start_response(status, headers + _COMMON)
        return body

    def _answer(self, environ: dict, method: str, path: str) -> tuple[str, list, Iterable[bytes]]:
        if environ.get("HTTP_HOST", "").lower() not in self.hosts:
            return _plain("403 Forbidden", "this server answers only to localhost, 127.0.0.1 and [::1]")
        uri = environ.get("REQUEST_URI", "")
        if not uri.startswith("/") or uri.startswith("//"):  # absolute-form (a proxy's), `*` or a bare name
            return _plain("400 Bad Request", "the request target must be a path")
        if method not in ("GET", "HEAD"):
            return _plain("405 Method Not Allowed", "GET or HEAD only", [("Allow", "GET, HEAD")])
        name = "index.html" if path == "/" else path[1:] if path.startswith("/") else ""
        opened = self._open(name)
        if opened is None:
            return _plain("404 Not Found", "not found")
        f, st = opened
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        headers = [("ETag", etag), ("Content-Type", TYPES.get(Path(name).suffix, "application/octet-stream"))]
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            f.close()
            return "304 Not Modified", headers, []
        headers.append(("Content-Length", str(st.st_size)))
        if method == "HEAD":
            f.close()
            return "200 OK", headers, []
        wrapper = environ.get("wsgi.file_wrapper")
        return "200 OK", headers, wrapper(f, 1 << 16) if wrapper else _chunks(f)


_COMMON = [
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cache-Control", "no-cache"),  # a page or model exported again shows at the next load
    ("X-Content-Type-Options", "nosniff"),
]


def _plain(status: str, text: str, headers: list | None = None) -> tuple[str, list, list[bytes]]:
    body = f"{status[4:]}: {text}\n".encode()
    return (
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(headers or [])],
        [body],
    )


def _chunks(f: io.BufferedReader) -> Iterable[bytes]:
    with f:
        while block := f.read(1 << 16):
            yield block


def page_dir(directory: str | Path) -> Path:
    """The folder holding index.html: `directory` itself or its web/ (the --out folder of an export)."""
    directory = Path(directory).expanduser()
    for candidate in (directory, directory / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise UserError(f"{directory} holds no page (index.html); write one with: python -m export lenet --web")


class Server:
    """The page of `directory` on 127.0.0.1:`port`, bound, not yet serving: serve_forever() until shutdown()
    (from another thread) or a signal, then server_close()."""

    def __init__(self, directory: str | Path, port: int = DEFAULT_PORT) -> None:
        try:
            from waitress.server import create_server
        except ImportError:
            raise UserError("serving the page needs waitress: pip install 'mnist-zoo[export]'") from None
        if not 0 <= port <= 65535:
            raise UserError(f"--port must be 0 to 65535 (0: any free port), got {port}")
        root = page_dir(directory)
        quiet_waitress()
        self._map: dict = {}
        try:
            self._server = create_server(
                _Deferred(),
                map=self._map,
                host=HOST,
                port=port,
                threads=THREADS,
                connection_limit=CONNECTION_LIMIT,
                channel_timeout=IDLE_TIMEOUT_S,
                cleanup_interval=max(1, IDLE_TIMEOUT_S // 4),
                max_request_header_size=MAX_HEADER_BYTES,
                max_request_body_size=0,
                expose_tracebacks=False,
                clear_untrusted_proxy_headers=True,
                ident="mnist-zoo",
                asyncore_use_poll=True,
            )
        except OSError as e:
            raise UserError(
                f"cannot listen on {HOST}:{port} ({e.strerror or e}); choose another --port"
            ) from None
        self.server_port = int(self._server.effective_port)  # waitress names it as a string
        self.server_address = (HOST, self.server_port)
        self.app = StaticPage(root, self.server_port)
        self._server.application = self.app
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        from waitress import wasyncore

        self._stopped.clear()
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (running in another thread) and wait until it has."""
        self._stop.set()
        self._server.pull_trigger()
        self._stopped.wait()

    def server_close(self) -> None:
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown(timeout=1)
        wasyncore.close_all(self._map)
        self.app.close()


class _Deferred:
    """A placeholder app: the real one needs the port, which is known once the socket is bound."""

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return _plain("503 Service Unavailable", "starting")[2]


def quiet_waitress() -> None:
    """waitress logs a warning each time a request waits for a thread and each exception with its traceback:
    keep its errors to one line each, the rest out of the terminal."""
    log = logging.getLogger("waitress")
    if not any(isinstance(h, _OneLine) for h in log.handlers):
        log.addHandler(_OneLine(logging.ERROR))
    log.propagate = False


class _OneLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().strip().splitlines() or ["?"]
        err.print(f"mnist-zoo: server: {lines[0][:200]}", highlight=False, markup=False, soft_wrap=True)


def server(directory: str | Path, port: int = DEFAULT_PORT) -> Server:
    """The server of the page in `directory` (or its web/) on 127.0.0.1:`port` (0: any free port), not yet
    serving; every failure (no page, a bad or busy port, no waitress) is a one-line UserError."""
    return Server(directory, port)


def serve(directory: str | Path, port: int = DEFAULT_PORT) -> int:
    """python -m export serve: serve the page until Ctrl-C or SIGTERM (then one line and 130 or 143, as every
    command: mnist_zoo.util.guarded)."""
    httpd = server(directory, port)
    url = f"http://{HOST}:{httpd.server_port}/"
    out.print(f"serving {httpd.app.root} on {url} (Ctrl-C stops it)", highlight=False, soft_wrap=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
