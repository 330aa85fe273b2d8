"""The exported models in a browser: a static draw-a-digit page on onnxruntime-web, and its local server.

    python -m export lenet --web                  # artifacts/lenet.onnx and the page in artifacts/web/
    python -m export all --web --out /tmp/zoo     # every model, with a model picker on the page
    python -m export serve artifacts              # http://127.0.0.1:8000/ (Ctrl-C stops it)
    >>> from export import web
    >>> web.build(Path("artifacts/web"), [Path("artifacts/lenet.onnx")], web.ort_web_files())

The page folder holds index.html and app.js (the page), predict.js (the predictor: an ES module another page can
import), the .onnx files and models.json (the picker's list), and onnxruntime-web's plain WebAssembly build
(ort.wasm.min.mjs, without the WebGPU/JSEP parts, and the Emscripten loader and .wasm it imports). No build
step, no bundler, no CDN: nothing is fetched from anywhere else, so it works with the network unplugged.

onnxruntime-web comes from npm at the version pinned below (`npm pack`), is checked against the pinned SHA-256
of its tarball and of the three files used, and is kept in the cache beside MNIST's
($XDG_CACHE_HOME/mnist-zoo/onnxruntime-web/). `--ort-web DIR` takes a local copy instead.

The page is served by export/page_server.py (`python -m export serve DIR`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from export.common import first_line, write_failure
from export.integrity import onnx_metadata, read_artifact
from export.page_server import DEFAULT_PORT, HOST, page_dir, serve, server  # noqa: F401 (as web.serve, ...)
from mnist_zoo.data import cache_dir
from mnist_zoo.util import OUR_TEMP_FILE, UserError, WriteFailed, atomic_write_bytes, check_output_dir, err

ORT_WEB_VERSION = "1.30.0"
ORT_WEB = f"onnxruntime-web@{ORT_WEB_VERSION}"
ORT_WEB_TARBALL = f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"  # as `npm pack` names it; 33 MB
ORT_WEB_SHA256 = "d2228df7e4616bc3348bf504ee888f3bec43789a273f0a63f3e68d203ce3bf71"
ORT_WEB_FILES = {  # package/dist/<name>: what the page loads (14 MB), also pinned for an unpacked copy
    "ort.wasm.min.mjs": "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}
PAGE = Path(__file__).with_name("page")  # index.html, app.js, predict.js
MODELS_JSON = "models.json"  # the picker's list
NPM_TIMEOUT_S = 300


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked(name: str, data: bytes, where: str) -> bytes:
    if _sha256(data) != ORT_WEB_FILES[name]:
        raise UserError(f"{where}: {name} does not match the pinned SHA-256 of {ORT_WEB}")
    return data


def _from_tarball(data: bytes, where: str) -> dict[str, bytes]:
    if _sha256(data) != ORT_WEB_SHA256:
        raise UserError(
            f"{where}: SHA-256 mismatch ({len(data):,} bytes; expected the pinned sum of {ORT_WEB_TARBALL}): "
            "corrupt, truncated or another version; delete it and run again"
        )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {n: _checked(n, tar.extractfile(f"package/dist/{n}").read(), where) for n in ORT_WEB_FILES}


def _from_local(directory: Path) -> dict[str, bytes]:
    """--ort-web DIR: the tarball `npm pack` writes (or a folder holding it), or the unpacked package
    (node_modules/onnxruntime-web)."""
    if directory.is_file():
        return _from_tarball(directory.read_bytes(), str(directory))
    if (directory / ORT_WEB_TARBALL).is_file():
        return _from_tarball((directory / ORT_WEB_TARBALL).read_bytes(), str(directory / ORT_WEB_TARBALL))
    dist = directory / "dist"
    if all((dist / n).is_file() for n in ORT_WEB_FILES):
        return {n: _checked(n, (dist / n).read_bytes(), str(dist)) for n in ORT_WEB_FILES}
    raise UserError(
        f"--ort-web {directory} holds neither {ORT_WEB_TARBALL} nor the unpacked package (dist/ort.wasm.min.mjs)"
    )


def _npm_pack(cached: Path) -> bytes:
    ways_out = f"or pass --ort-web DIR holding {ORT_WEB_TARBALL} (`npm pack {ORT_WEB}` on a machine with npm)"
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"{ORT_WEB} is not in the cache ({cached.parent}) and npm is not installed: install npm (this "
            f"command then fetches it with `npm pack`), {ways_out}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        with err.status(f"fetching {ORT_WEB} with npm pack (33 MB) ..."):
            try:
                proc = subprocess.run(
                    [npm, "pack", ORT_WEB, "--silent"],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise UserError(f"npm pack {ORT_WEB} took over {NPM_TIMEOUT_S} s; {ways_out}") from None
        tarball = Path(tmp) / ORT_WEB_TARBALL
        if proc.returncode != 0 or not tarball.is_file():
            why = ((proc.stderr or proc.stdout).strip().splitlines() or ["no tarball written"])[-1]
            raise UserError(f"npm pack {ORT_WEB} failed ({why[:160]}); {ways_out}")
        return tarball.read_bytes()


def ort_web_files(local: str | Path | None = None) -> dict[str, bytes]:
    """file name -> bytes of onnxruntime-web's WebAssembly build, verified: from `local` (--ort-web DIR) when
    given, else from the cache, else from npm (then cached). Every failure is a one-line UserError."""
    if local is not None:
        return _from_local(Path(local).expanduser())
    cached = cache_dir() / "onnxruntime-web" / ORT_WEB_TARBALL
    if cached.is_file():
        try:
            return _from_tarball(cached.read_bytes(), str(cached))
        except (UserError, tarfile.TarError, OSError) as e:  # a damaged cache is fetched again, not fatal
            err.print(f"mnist-zoo: cached onnxruntime-web unusable ({e}); fetching it again", highlight=False)
    data = _npm_pack(cached)
    files = _from_tarball(data, f"npm pack {ORT_WEB}")
    atomic_write_bytes(cached, data)
    return files


def _page_files() -> set[str]:
    """The names of what build() writes, besides the models (*.onnx)."""
    return {p.name for p in PAGE.iterdir()} | set(ORT_WEB_FILES) | {MODELS_JSON}


def check_page_dir(web_dir: Path) -> None:
    """Fail now, before any export work, unless `web_dir` is missing or a folder of what --web writes (the page,
    onnxruntime-web, *.onnx, models.json; a killed write's temporary file), each a regular file, and the .onnx
    files readable. Anything else (a file or a link where the folder belongs, a subfolder, a link, a foreign
    file) is one line: build() replaces files there, and must not replace, or list, what is not its own."""
    where = f"--web: {web_dir}"
    if web_dir.is_symlink():
        raise UserError(f"{where} is a symbolic link, not the page folder; remove it or choose another --out")
    if not web_dir.exists():
        return
    if not web_dir.is_dir():
        raise UserError(f"{where} is a file, not the page folder; move it or choose another --out")
    ours = _page_files()
    try:
        entries = sorted(web_dir.iterdir())
    except OSError as e:
        raise UserError(f"{where}: cannot list it ({e.strerror or e})") from None
    foreign = [
        p.name + ("/" if p.is_dir() else "")
        for p in entries
        if p.is_symlink()
        or not p.is_file()
        or not (p.name in ours or p.suffix == ".onnx" or OUR_TEMP_FILE.fullmatch(p.name))
    ]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"{where} holds what --web does not write ({shown}; links and folders count): move them or "
            "choose another --out"
        )
    for p in entries:
        if p.suffix == ".onnx":
            _model_entry(p)  # listed in models.json later: a damaged one is refused now
    check_output_dir(web_dir, where)


def _model_entry(path: Path) -> dict:
    """The picker's entry of one .onnx file (from its metadata); UserError for a file that is no ONNX model."""
    try:
        meta = onnx_metadata(onnx.load_from_string(read_artifact(path)))
        accuracy = meta.get("test_accuracy")
        accuracy = accuracy and float(accuracy)
    except (DecodeError, ValueError) as e:
        raise UserError(f"{path} is not a readable ONNX model ({first_line(e)}); remove it") from None
    return {"name": meta.get("model", path.stem), "file": path.name, "test_accuracy": accuracy}


def _fsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def build(web_dir: Path, models: list[Path], ort_files: dict[str, bytes]) -> Path:
    """Write or update the page in `web_dir`: the page, onnxruntime-web, copies of the verified `models` (.onnx)
    and models.json, which lists every .onnx in the folder, the most accurate first (models exported there
    earlier stay on the picker). What changed is written to a staging folder beside `web_dir` first, then
    renamed into it file by file, models.json last: a full disk (WriteFailed) leaves `web_dir` as it was."""
    check_page_dir(web_dir)  # again, just before writing: nothing foreign is replaced
    files = {p.name: p.read_bytes() for p in sorted(PAGE.iterdir())} | ort_files
    files |= {m.name: read_artifact(m) for m in models}
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".web.{os.getpid()}.", suffix=".tmp", dir=web_dir.parent))
    except OSError as e:
        raise write_failure(e, f"the page in {web_dir}", f" ({web_dir} was left as it was)") from None
    try:
        onnx_files = {p.name: p for p in web_dir.glob("*.onnx")} if web_dir.is_dir() else {}
        for name, data in files.items():
            if not ((web_dir / name).is_file() and (web_dir / name).read_bytes() == data):
                _fsynced(staging / name, data)
                if name.endswith(".onnx"):
                    onnx_files[name] = staging / name
        picked = sorted(p for n, p in onnx_files.items() if not n.endswith(".int8.onnx"))
        entries = sorted((_model_entry(p) for p in picked), key=lambda e: -(e["test_accuracy"] or 0))
        listing = json.dumps({"models": entries, "onnxruntime_web": ORT_WEB_VERSION}, indent=1)
        _fsynced(staging / MODELS_JSON, listing.encode())
        web_dir.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == MODELS_JSON):  # renames need no space
            os.replace(path, web_dir / path.name)
    except (OSError, WriteFailed) as e:
        raise write_failure(e, f"the page in {web_dir}", f" ({web_dir} was left as it was)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return web_dir
