"""Fuzzing every file-facing reader with Hypothesis: IDX files (raw and gzipped), checkpoints, ONNX files and
images for predict, random and mutated. Each case must end in a right answer or a one-line error and a non-zero
exit: never a traceback, a hang, or a file written where the command was not asked to write.

    pytest tests/test_fuzz.py                                    # the default budget: seconds per reader
    HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py --hypothesis-show-statistics   # tox -e fuzz

The entry points run in-process (main([...]) with capsys) for speed; one test runs the command line itself.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from export import cli as export_cli
from export import to_onnx, verify
from mnist_zoo import data
from mnist_zoo.cli import main
from mnist_zoo.models import list_models
from mnist_zoo.util import UserError

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
