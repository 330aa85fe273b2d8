"""Fuzzing every file-facing reader with Hypothesis: IDX files (raw and gzipped), checkpoints, ONNX,
TorchScript and torch.export files, images for predict, random and mutated, and the page server's requests.
Each case must end in a right answer or a one-line error and a non-zero exit: never a traceback, a hang, or a
file written where the command was not asked to write; a TorchScript or .pt2 file that does not match its
SHA-256 never reaches torch's loader; the server answers every request with an HTTP status, never 500, and
never with a byte from outside its folder.

    pytest tests/test_fuzz.py                                    # the default budget: seconds per reader
    HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py --hypothesis-show-statistics   # tox -e fuzz

The entry points run in-process (main([...]) with capsys) for speed; one test runs the command line itself.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from export import cli as export_cli
from export import integrity, page_server, to_onnx, to_pt2, to_torchscript, verify
from mnist_zoo import data, recipes
from mnist_zoo.cli import main
from mnist_zoo.models import list_models
from mnist_zoo.recipes import Recipe, recipe_for
from mnist_zoo.util import UserError, sha256_file

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "quick", max_examples=25, deadline=None, database=None, suppress_health_check=_SLOW_OK
)
settings.register_profile("fuzz", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))
HANG_S = 60  # a case that runs longer than this is a hang (a few, reading the data, take a second)
ROOT = Path(__file__).resolve().parents[1]


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` in the code under test hides it."""


@contextlib.contextmanager
def case(directory: Path) -> Iterator[None]:
    """One fuzz case, run inside `directory` (the working directory too), which must hold afterwards exactly
    the files it held before; a case that runs past HANG_S fails."""

    def hung(*_) -> None:
        raise Hung(f"no answer after {HANG_S} s")

    before = sorted(directory.rglob("*"))
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_S)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(directory)
            yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert sorted(directory.rglob("*")) == before, "a reader wrote a file"


def one_line_error(code: int, err: str) -> None:
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1, (code, err)


@st.composite
def mutated(draw: st.DrawFn, good: bytes) -> bytes:
    """`good` with a few bit flips, cuts, insertions, deletions and overwrites."""
    blob = bytearray(good)
    for _ in range(draw(st.integers(1, 6))):
        if not blob:
            break
        at = draw(st.integers(0, len(blob) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "overwrite"]))
        if op == "flip":
            blob[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del blob[at:]
        elif op == "delete":
            del blob[at : at + draw(st.integers(1, 512))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=64))
            blob[at : at + (len(chunk) if op == "overwrite" else 0)] = chunk
    return bytes(blob)


def inputs(good: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(good), st.binary(max_size=2048))


# --- IDX files ---------------------------------------------------------------------------------------------

FUZZED_IDX = "t10k-labels-idx1-ubyte"  # the smallest file; the other three are the real ones, linked


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
@settings(PROFILE, max_examples=max(5, PROFILE.max_examples // 3))  # each case hashes 55 MB of real data
@given(draw=st.data())
def test_idx_files(compressed, draw, capsys, monkeypatch):
    real = data.fetch()
    capsys.readouterr()  # what fetching the real files said (a first download) is not this case's output
    labels = (real / FUZZED_IDX).read_bytes()
    blob = draw.draw(inputs(gzip.compress(labels, mtime=0) if compressed else labels))
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory() as cache,
        monkeypatch.context() as m,
    ):
        d = Path(tmp)
        for name in data.SHA256:
            if name != FUZZED_IDX:
                (d / name).symlink_to(real / name)
        (d / (f"{FUZZED_IDX}.gz" if compressed else FUZZED_IDX)).write_bytes(blob)
        # verified .gz data is cached there, as documented; undone after each case (Hypothesis runs many in one
        # call), so that the next case finds the real files where they were, not in a deleted folder
        m.setenv("XDG_CACHE_HOME", cache)
        with case(d):
            code = main(["data", "--data-dir", str(d)])
    captured = capsys.readouterr()
    event(f"exit {code}")
    if code == 0:  # the file still holds the real labels: nothing else passes the SHA-256
        assert (gzip.decompress(blob) if compressed else blob) == labels
        assert "test: 10,000 images" in captured.out
    else:
        one_line_error(code, captured.err)


# --- checkpoints -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@settings(PROFILE)
@given(draw=st.data())
def test_checkpoints(name, draw, small_trained, capsys):
    blob = draw.draw(inputs(small_trained(name)[2].read_bytes()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        path.write_bytes(blob)
        with case(Path(tmp)):
            code = main(["evaluate", str(path), "--json", "--threads", "1"])
    captured = capsys.readouterr()
    event(f"exit {code}")
    if code == 0:  # weights changed in place still make a model: it is scored, honestly
        record = json.loads(captured.out)
        assert record["model"] in list_models() and 0 <= record["test_accuracy"] <= 1
    else:
        one_line_error(code, captured.err)


# --- recipe files ------------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Numbers as text: past what json.dumps writes (4,300 digits is Python's int limit), past a float's range.
_NUMBER_TEXT = st.one_of(
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(
        ["1e999", "-1e400", "NaN", "Infinity", "-Infinity", "-0.0", "1.5", "1.0", "0", "-1", "1e-400"]
    ),
)


def _nested(n: int, opener: str) -> str:
    return (
        (opener * n) + ("]" if opener == "[" else "}") * n if opener == "[" else '{"a":' * n + "1" + "}" * n
    )


@st.composite
def recipe_texts(draw: st.DrawFn, good: dict) -> bytes:
    """A recipe file: the good one with one setting (or the model, the schema, the recipe) replaced by any JSON
    value or number, an unknown setting, nested deep, any JSON document, or the good file's bytes mutated."""
    kind = draw(st.sampled_from(["setting", "number", "key", "top", "nested", "document", "mutated"]))
    doc = json.loads(json.dumps(good))
    if kind in ("setting", "number"):
        key = draw(st.sampled_from(sorted(doc["recipe"])))
        if kind == "number":
            marker = "@@NUMBER@@"
            doc["recipe"][key] = marker
            return json.dumps(doc).replace(f'"{marker}"', draw(_NUMBER_TEXT)).encode()
        doc["recipe"][key] = draw(_JSON)
    elif kind == "key":  # an unknown setting, its name any text
        doc["recipe"][draw(st.text(max_size=12))] = draw(_JSON)
    elif kind == "top":
        doc[draw(st.sampled_from(["schema", "model", "recipe", "extra"]))] = draw(_JSON)
    elif kind == "nested":
        depth = draw(st.integers(1, 5000))
        inner = _nested(depth, draw(st.sampled_from(["[", "{"])))
        doc["recipe"][draw(st.sampled_from(sorted(doc["recipe"])))] = "@@DEEP@@"
        return json.dumps(doc).replace('"@@DEEP@@"', inner).encode()
    elif kind == "document":
        return json.dumps(draw(_JSON)).encode()
    else:
        return draw(inputs(json.dumps(good).encode()))
    return json.dumps(doc).encode()


@settings(PROFILE, max_examples=PROFILE.max_examples * 4)  # a case costs a millisecond
@given(draw=st.data())
def test_recipe_files(draw, tmp_path_factory):
    """read_recipe_file, the reader behind `train --recipe-file`: a recipe whose every setting has its type and
    can train, or one UserError line naming the file; never another exception (RecursionError, TypeError ...)."""
    good = {"schema": recipes.RECIPE_SCHEMA, "model": "mlp", "recipe": asdict(recipe_for("mlp"))}
    blob = draw.draw(recipe_texts(good))
    path = tmp_path_factory.mktemp("recipe") / "best.json"
    path.write_bytes(blob)
    with case(path.parent):
        try:
            recipe = recipes.read_recipe_file(path, "mlp")
        except UserError as e:
            message = str(e)
            assert message.startswith(f"--recipe-file {path}") and "\n" not in message, message
            reason = message.removeprefix(f"--recipe-file {path}: ").split(", got")[0]
            event(f"refused: {re.sub(r'[0-9]+', 'N', reason)[:40]}")
            return
    event("read")
    types = {f.name: f.type for f in fields(Recipe)}
    for key, value in asdict(recipe).items():
        wanted = {"str": str, "int": int, "float": (int, float), "bool": bool}[types[key]]
        assert isinstance(value, wanted) and (types[key] == "bool" or not isinstance(value, bool)), (
            key,
            value,
        )
    assert recipes.check(recipe) == recipe


# --- ONNX files --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_onnx(small_trained, tmp_path_factory) -> bytes:
    model, meta, _ = small_trained("mlp")
    metadata = export_cli.artifact_metadata("mlp", meta)
    return to_onnx.export_onnx(
        model, tmp_path_factory.mktemp("fuzz") / "mlp.onnx", metadata=metadata
    ).read_bytes()


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "unsealed"])
@settings(PROFILE)
@given(draw=st.data())
def test_onnx_files(sealed, draw, mlp_onnx):
    """ort_session: a session, or a UserError. Unsealed, the damaged file reaches onnx.checker and onnxruntime."""
    blob = draw.draw(inputs(mlp_onnx))
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "mlp.onnx"
        target.write_bytes(blob)
        with case(Path(tmp)):
            try:
                session = verify.ort_session(target, check_seal=sealed)
            except UserError as e:
                event(f"refused: {str(e).split(' (')[0].removeprefix(str(target)).strip()[:40]}")
                return
    event("loaded")
    assert session.get_inputs()


# --- TorchScript and torch.export files ----------------------------------------------------------------------

TORCH_FORMATS = {  # format -> (exporter, loader, the torch module whose load must not see an unverified file)
    "torchscript": (to_torchscript.export_torchscript, to_torchscript.load_torchscript, torch.jit),
    "pt2": (to_pt2.export_pt2, to_pt2.load_pt2, torch.export),
}


@pytest.fixture(scope="module")
def mlp_torch_files(small_trained, tmp_path_factory) -> dict[str, bytes]:
    model, meta, _ = small_trained("mlp")
    metadata = export_cli.artifact_metadata("mlp", meta)
    folder = tmp_path_factory.mktemp("fuzz-torch")
    return {
        fmt: export(model, folder / f"mlp.{fmt}", metadata=metadata).read_bytes()
        for fmt, (export, _, _) in TORCH_FORMATS.items()
    }


@pytest.mark.parametrize("digest", ["genuine", "matching"])
@pytest.mark.parametrize("fmt", list(TORCH_FORMATS))
@settings(PROFILE)
@given(draw=st.data())
def test_torch_files(fmt, digest, draw, mlp_torch_files, monkeypatch):
    """genuine: the damaged file beside the exporter's NAME.sha256: refused before torch's loader runs, unless
    it is the very file. matching: a NAME.sha256 made for the damaged bytes (what a careless copy would do), so
    torch's loader parses them: a module whose weights still match their digest, or a one-line UserError."""
    good = mlp_torch_files[fmt]
    blob = draw.draw(inputs(good))
    _, load, module = TORCH_FORMATS[fmt]
    torch_load, seen = module.load, []

    def watched(*args, **kwargs):
        seen.append(1)
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(module, "load", watched)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / f"mlp.{fmt}"
        target.write_bytes(blob)
        integrity.write_digest(
            target, sha256_file(target) if digest == "matching" else hashlib.sha256(good).hexdigest()
        )
        with case(Path(tmp)):
            try:
                loaded, meta = load(target)
            except UserError as e:
                assert "\n" not in str(e)
                event(f"refused: {str(e).removeprefix(str(target)).split(' (')[0].strip()[:40]}")
                assert seen == [] or digest == "matching"
                return
    event("loaded")
    assert blob == good or digest == "matching"
    assert meta["model"] == "mlp" and callable(loaded)


# --- the page server's requests ------------------------------------------------------------------------------

SECRET = b"a secret beside the page folder"


@pytest.fixture(scope="module")
def page_site(tmp_path_factory):
    """(port, page folder): a small page, a symlink out of it, a subfolder and a dotfile, served in a thread."""
    root = tmp_path_factory.mktemp("fuzz-site")
    (root / "secret.txt").write_bytes(SECRET)
    page = root / "web"
    page.mkdir()
    (page / "index.html").write_text("<p>page</p>")
    (page / "app.js").write_text("export {};")
    (page / "m.onnx").write_bytes(bytes(range(256)) * 64)
    (page / "link.txt").symlink_to(root / "secret.txt")
    (page / "sub").mkdir()
    (page / "sub" / "secret.txt").write_bytes(SECRET)
    (page / ".hidden").write_bytes(SECRET)
    httpd = page_server.server(root, port=0)
    from export.web_browser import serving

    with serving(httpd):
        yield httpd.server_port, page


PIECES = ["/", "..", ".", "%2e", "%2E%2e", "%2f", "%00", "%ff", "\\", "//", "index.html", "app.js", "m.onnx"]
PIECES += ["link.txt", "secret.txt", "sub", ".hidden", "?", "#", ";", "*", "http://localhost", "~"]


@st.composite
def requests(draw: st.DrawFn, port: int) -> bytes:
    """A raw HTTP/1.x request: a method, a target built from path pieces, a version, a Host that may be right,
    wrong or absent, extra header lines, maybe a body. Half are well formed apart from their path (what a
    browser could send, so that the file-serving code is reached); the rest are damaged anywhere, or are
    plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=512))
    clean = draw(st.booleans())
    ascii_noise = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8)
    noise = ascii_noise if clean else ascii_noise | st.text(max_size=4)
    target = "/" + "".join(draw(st.lists(st.sampled_from(PIECES) | noise, max_size=6)))
    if not clean and draw(st.booleans()):
        target = target[1:]
    good_host = [f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"]
    bad_host = ["evil.example", f"localhost:{port + 1}", "localhost"]
    if clean:
        method = draw(st.sampled_from([b"GET", b"HEAD"]))
        version, host = b"HTTP/1.1", draw(st.sampled_from(good_host))
    else:
        method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"PUT", b"get", b"G\x00T", b""]))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]))
        host = draw(st.none() | st.sampled_from(good_host + bad_host) | st.text(max_size=20))
    lines = [b" ".join(p for p in (method, target.encode("utf-8", "surrogatepass"), version) if p)]
    if host is not None:
        lines.append(b"Host: " + host.encode("utf-8", "surrogatepass"))
    field = st.sampled_from([b"Accept", b"If-None-Match", b"Range", b"X-Forwarded-Host", b"Content-Length"])
    value = ascii_noise.map(str.encode) if clean else st.binary(max_size=40)
    header = st.tuples(field, value).map(lambda h: h[0] + b": " + h[1])
    extra = header if clean else header | st.binary(max_size=60)
    lines += [x.replace(b"\r", b"").replace(b"\n", b"") for x in draw(st.lists(extra, max_size=3))]
    lines.append(b"Connection: close")
    body = (
        b""
        if clean
        else draw(st.sampled_from([b"", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"]))
    )
    return b"\r\n".join(lines) + b"\r\n" + body + b"\r\n" + (b"" if clean else draw(st.binary(max_size=16)))


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        answer = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # all sent: the server sees the end rather than waiting for more
            while chunk := s.recv(1 << 16):
                answer += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return answer


@settings(PROFILE, max_examples=PROFILE.max_examples * 4)  # a request costs milliseconds
@given(draw=st.data())
def test_server_requests(draw, page_site, capfd):
    port, page = page_site
    data = draw.draw(requests(port))
    answer = _raw(port, data)
    served = {p.name: p.read_bytes() for p in page.iterdir() if p.is_file() and not p.is_symlink()}
    assert SECRET not in answer
    if answer:  # nothing at all: the server closed a connection whose request never ended
        assert answer.startswith(b"HTTP/1."), answer[:80]
        status = int(answer.split()[1])
        event(f"status {status}")
        assert status != 500 and status in (200, 304, 400, 403, 404, 405, 413, 431, 501, 505), answer[:80]
        if status == 200 and data.startswith(b"GET"):  # the first answer's body (more may follow: pipelining)
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert rest[:length] in served.values()
    else:
        event("closed")
    assert _raw(port, f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()).startswith(
        b"HTTP/1.1 200"
    )
    assert "Traceback" not in capfd.readouterr().err


# --- images for predict ------------------------------------------------------------------------------------

FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK"]


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a small image in some format and mode, maybe damaged afterwards; or random bytes."""
    fmt, mode = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    image = Image.new(mode, (width, height))
    pixels = draw(st.binary(min_size=len(image.tobytes()), max_size=len(image.tobytes())))
    image.frombytes(pixels)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return ".bin", draw(st.binary(max_size=1024))  # a mode the format cannot hold: random bytes instead
    good = buffer.getvalue()
    return f".{fmt.lower()}", draw(st.one_of(st.just(good), mutated(good)))


@settings(PROFILE)
@given(file=image_files())
def test_images(file, small_trained, capsys):
    suffix, blob = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"digit{suffix}"
        path.write_bytes(blob)
        with case(Path(tmp)):
            code = main(["predict", str(small_trained("lenet")[2]), str(path), "--json", "--threads", "1"])
    captured = capsys.readouterr()
    [result] = json.loads(captured.out)["results"]
    event(f"exit {code}")
    if code == 0:
        assert result["ok"] and 0 <= result["digit"] <= 9 and captured.err == ""
    else:
        assert code == 1 and not result["ok"]
        assert captured.err == f"error: {path}: {result['error']}\n"


def test_the_command_line_itself(small_trained, tmp_path):
    """Damaged inputs through `python -m mnist_zoo`, as a user runs it: one line, exit 1, nothing written."""
    good, ckpt = small_trained("mlp")[2].read_bytes(), str(small_trained("mlp")[2])
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 3])
    (tmp_path / "noise.png").write_bytes(os.urandom(3000))
    files = sorted(tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnist_zoo", *args, "--threads", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for args in (["evaluate", "cut.pt"], ["predict", ckpt, "noise.png"])
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        one_line_error(proc.returncode, err)
    assert sorted(tmp_path.iterdir()) == files


# ==============================================================================================================
# Benchmark JSON files (bench/results.py, bench/check.py): `python -m bench report`, `compare` and `check` on
# random JSON, a real run's file with a field of any type or a field gone, a row of another kind, deep nesting
# and mutated bytes. Every case ends in a right answer or one line, never a traceback, nothing written.
# ==============================================================================================================

BENCH_COMMANDS = ["report", "compare", "check"]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


def _bench_doc() -> dict:
    from test_bench import deployed, doc_of, run_rows  # tests/test_bench.py's run (tests/ is on sys.path)

    return doc_of(deployed(run_rows()))


@pytest.fixture(scope="module")
def bench_site(tmp_path_factory) -> Path:
    """A folder with a good run (the other side of `compare`) and a baseline made from it (for `check`)."""
    from bench import check, results

    directory = tmp_path_factory.mktemp("bench-fuzz")
    (directory / "good.json").write_text(json.dumps(_bench_doc()))
    fresh = check.metrics(results.rows_of(_bench_doc()))
    (directory / "baseline.json").write_text(json.dumps(check.make_baseline(fresh, {"threads": [2]})))
    return directory


@st.composite
def bench_files(draw: st.DrawFn) -> bytes:
    from bench.results import ROW_FIELDS

    doc = _bench_doc()
    rows = [b["extra_info"] for b in doc["benchmarks"]]
    how = draw(st.sampled_from(["random", "field", "fields", "number", "drop", "kind", "deep", "bytes"]))
    event(f"bench file: {how}")
    if how == "random":
        return json.dumps(draw(_JSON)).encode()
    if how == "deep":
        depth = draw(st.integers(1, 5000))
        return b'{"benchmarks": ' + b"[" * depth + b"]" * depth + b"}"
    if how == "bytes":
        return draw(mutated(json.dumps(doc).encode()))
    for _ in range(draw(st.integers(1, 3)) if how == "fields" else 1):
        row = draw(st.sampled_from(rows))
        if how == "drop":
            row.pop(draw(st.sampled_from(sorted(row))))
        elif how == "number":  # the right type, an odd value: NaN, infinity, 0, negative, huge
            numeric = sorted(
                k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
            )
            row[draw(st.sampled_from(numeric))] = draw(
                st.floats() | st.integers() | st.sampled_from([0, -1, 1e308])
            )
        elif how == "kind":
            row["kind"] = draw(st.sampled_from(["inference", "accuracy", "epoch", "time-to-accuracy", "tutorial",
                                                "peer", "scaling", "other"]))  # fmt: skip
        else:
            row[draw(st.sampled_from(sorted({*ROW_FIELDS, *row})))] = draw(_JSON)
    return json.dumps(doc).encode()


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return all(map(_finite, children))


@pytest.mark.parametrize("command", BENCH_COMMANDS)
@settings(PROFILE)
@given(file=bench_files())
def test_bench_files(command, file, bench_site, capsys):
    from bench.__main__ import main as bench_main

    path = bench_site / "run.json"
    path.write_bytes(file)
    argv = {
        "report": ["report", str(path)],
        "compare": ["compare", str(bench_site / "good.json"), str(path)],
        "check": ["check", "--results", str(path), "--baseline", str(bench_site / "baseline.json")],
    }[command]
    with case(bench_site):
        code = bench_main(argv)
    err = capsys.readouterr().err
    event(f"exit {code}")
    if code == 0:
        assert err == "", err
        assert _finite(json.loads(file)), "a NaN or an infinity was read"  # Python's json takes them
    else:  # check: exit 1 for a regression or 75 for a busy machine, also one line
        one_line_error(code, err)
        assert code in (1, 75) if command == "check" else code == 1
