"""The page server (`python -m export serve DIR`, export/page_server.py) against hostile and unlucky clients.

    pytest tests/test_server.py

Only regular files directly in the page folder are served (no traversal, no symlink, no listing, no dotfile,
no FIFO); malformed requests get an HTTP error; a client that hangs up leaves no trace; threads stay bounded
however many connections are open, and idle ones are closed; a Host other than localhost, 127.0.0.1 or [::1]
with the server's port is refused (DNS rebinding); the command line ends like every other command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from export import cli, page_server, web, web_browser

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"the secret outside the page folder"


@pytest.fixture
def site(tmp_path):
    """(server, page folder): the page plus traps, served on a free port in a thread."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    page = tmp_path / "web"
    page.mkdir()
    for f in web.PAGE.iterdir():
        (page / f.name).write_bytes(f.read_bytes())
    (page / "big.onnx").write_bytes(os.urandom(4 << 20))
    (page / "link.txt").symlink_to(tmp_path / "secret.txt")  # a symlink out of the folder
    (page / "inner-link.js").symlink_to(page / "app.js")  # and one inside it: no symlink is served
    (page / "sub").mkdir()
    (page / "sub" / "x.js").write_text("1")
    (page / ".lenet.onnx.123.abcdefgh.tmp").write_bytes(b"a staging leftover")
    if hasattr(os, "mkfifo"):
        os.mkfifo(page / "fifo")
    httpd = page_server.server(tmp_path, port=0)
    with web_browser.serving(httpd):
        yield httpd, page


def request(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send `raw` as it is and return everything the server answers until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = b""
        try:
            s.sendall(raw)
            while chunk := s.recv(1 << 16):
                data += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass  # the server may close a hostile connection before reading all of it
    return data


def get(port: int, target: str, host: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    host = f"localhost:{port}" if host is None else host
    answer = request(
        port, f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_serves_the_page_files_and_nothing_else(site, capfd):
    httpd, page = site
    port = httpd.server_port
    assert get(port, "/") == (200, (page / "index.html").read_bytes())
    assert get(port, "/big.onnx") == (200, (page / "big.onnx").read_bytes())
    assert get(port, "/app.js?v=2") == (200, (page / "app.js").read_bytes())
    refused = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/link.txt",
        "/inner-link.js",
        "/sub",
        "/sub/",
        "/sub/x.js",
        "/.lenet.onnx.123.abcdefgh.tmp",
        "/fifo",  # opened without blocking, then refused as not a regular file
        "/index.html%00.js",
        "/nothing",
        f"/{'a' * 5000}",
    ]
    for target in refused:
        status, body = get(port, target)
        assert status == 404 and SECRET not in body, target
    assert get(port, "//etc/passwd")[0] == 400 and get(port, f"http://localhost:{port}/")[0] == 400
    assert "Traceback" not in capfd.readouterr().err


def test_hostile_requests_get_an_http_error(site, capfd):
    httpd, _ = site
    port = httpd.server_port
    cases = {
        b"GARBAGE\r\n\r\n": 400,
        b"\x00\x01\x02\xff\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 40_000 + b"\r\n\r\n": 431,
        f"POST / HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 5\r\n\r\nhello".encode(): 413,
        f"DELETE / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode(): 405,
        f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: -1\r\n\r\n".encode(): 400,
    }
    for raw, status in cases.items():
        answer = request(port, raw)
        assert answer.startswith(b"HTTP/1.") and int(answer.split()[1]) == status, (raw[:60], answer[:80])
    assert get(port, "/")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_host_header_against_dns_rebinding(site):
    httpd, _ = site
    port = httpd.server_port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"LocalHost:{port}"):
        assert get(port, "/", host)[0] == 200, host
    for host in (
        "",
        "evil.example",
        f"evil.example:{port}",
        f"localhost:{port + 1}",
        "localhost",
        "127.0.0.1",
    ):
        assert get(port, "/", host)[0] == 403, host
    # HTTP/1.0 without any Host: refused too
    assert request(port, b"GET / HTTP/1.0\r\n\r\n").split()[1] == b"403"


def test_client_hangups_are_quiet(site, capfd):
    httpd, _ = site
    port = httpd.server_port
    for _ in range(20):  # ask for 4 MB and hang up at once, some with a reset (SO_LINGER 0)
        s = socket.create_connection(("127.0.0.1", port))
        if _ % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.sendall(f"GET /big.onnx HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        s.close()
    time.sleep(0.5)
    assert get(port, "/")[0] == 200
    assert capfd.readouterr().err == ""


def test_threads_and_connections_are_bounded(site, monkeypatch):
    httpd, _ = site
    port = httpd.server_port
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(page_server.CONNECTION_LIMIT + 20)]
    try:
        time.sleep(0.5)
        assert threading.active_count() == before  # no thread per connection
        assert len(httpd._server.task_dispatcher.threads) == page_server.THREADS
    finally:
        for s in idle:
            s.close()
    assert get(port, "/")[0] == 200


def test_idle_connections_are_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(page_server, "IDLE_TIMEOUT_S", 1)
    (tmp_path / "index.html").write_text("hi")
    with web_browser.serving(page_server.server(tmp_path, port=0)) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        assert s.recv(10) == b""  # closed by the server, not by the timeout of this socket
        assert time.monotonic() - started < 8
        s.close()


@pytest.mark.parametrize("port", ["-1", "65536", "99999999999999999999"])
def test_bad_ports_are_one_line(tmp_path, port, capsys):
    (tmp_path / "index.html").write_text("hi")
    assert cli.main(["serve", str(tmp_path), "--port", port]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --port must be 0 to 65535") and err.count("\n") == 1


def test_a_busy_port_is_one_line(tmp_path, capsys):
    (tmp_path / "index.html").write_text("hi")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.main(["serve", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize(
    "sig, code, message", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_serve_stops_on_signals_like_every_command(tmp_path, sig, code, message):
    (tmp_path / "index.html").write_text("hi")
    proc = subprocess.Popen(
        [sys.executable, "-m", "export", "serve", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = proc.stdout.readline()  # "serving ... on http://127.0.0.1:PORT/ ..."
    assert line.startswith("serving "), line
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    assert get(port, "/") == (200, b"hi")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (code, f"error: {message}\n")
