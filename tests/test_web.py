"""The web page (`python -m export lenet --web`) in a real browser: headless Chromium driven by Playwright.

    pytest tests/test_web.py -s        # -s shows the agreement figures
    MNIST_ZOO_SCREENSHOT=docs/web.png pytest tests/test_web.py -k drawn     # the README's screenshot

The browser tests are skipped, with the reason, without Chromium (Debian: apt-get install chromium), without
Playwright (pip install 'mnist-zoo[web]'), or when onnxruntime-web can be had neither from the cache nor from npm.
One browser for the session (conftest.py), one tab for the module; a request outside 127.0.0.1 or an error in
the page fails the test. The model is lenet trained with 2 epochs of the default recipe (>= 98.5%: drawn digits
need a real model, not the 1-epoch small_trained one), exported and served as the README says.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export import cli, to_onnx, web, web_browser
from export.verify import ort_session
from mnist_zoo import cli as zoo_cli
from mnist_zoo import data
from mnist_zoo.checkpoint import save_checkpoint
from mnist_zoo.models import get_model
from mnist_zoo.predict import prepare
from mnist_zoo.recipes import recipe_for
from mnist_zoo.train import train
from mnist_zoo.util import UserError

DIGITS = 200  # MNIST test digits given to the page, as they are and enlarged
ENLARGE = 8
PROBABILITY_ATOL = 1e-4
MIN_AGREEMENT = 0.98  # enlarged digits: the page's top-1 against `python -m mnist_zoo predict`


@dataclass
class Site:
    url: str
    out: Path  # the --out folder: lenet.onnx, web/
    checkpoint: Path
    ort_files: dict[str, bytes]


@pytest.fixture(scope="module")
def site(browser, ort_web_files, train_split, test_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    result = train("lenet", recipe_for("lenet", epochs=2), train_split, test_split, seed=0)
    meta = {"model": "lenet", "recipe": "default", "epochs": 2, "seed": 0, "data_sha256": data.DATA_SHA256}
    checkpoint = root / "checkpoints" / "lenet.pt"
    save_checkpoint(result.model, {**meta, "test_accuracy": result.final.accuracy}, checkpoint)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_ZOO_CHECKPOINTS", str(checkpoint.parent))
        assert cli.main(["lenet", "--web", "--out", str(root / "out"), "--no-progress"]) == 0
    with web_browser.serving(web.server(root / "out", port=0)) as url:
        yield Site(url, root / "out", checkpoint, ort_web_files)


@pytest.fixture(scope="module")
def tab(browser, site):
    tab = web_browser.open_tab(browser, site.url, viewport={"width": 720, "height": 760})
    tab.page.wait_for_selector("html[data-model=lenet]")
    return tab


def offline_and_clean(tab: web_browser.Tab) -> None:
    assert tab.outside == [], "requests outside 127.0.0.1"
    assert tab.errors == [], "errors in the page"


# Gives each file to the page's file input, as a user choosing it does (input.files, then a change event), and
# waits for #digit to show it: one call for all the files rather than three round trips each.
READ_FILES = """async (files) => {
  const [input, digit, preview] = ["input[type=file]", "#digit", "#preview"].map((s) => document.querySelector(s));
  const results = [];
  for (const [name, base64] of files) {
    const shown = new Promise((resolve) => {
      const watch = new MutationObserver(() => digit.dataset.source === name && resolve(true));
      watch.observe(digit, { attributes: true });
      setTimeout(() => resolve(false), 10000);
    });
    const chosen = new DataTransfer();
    chosen.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, { type: "image/png" }));
    input.files = chosen.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    if (!(await shown)) throw new Error(`${name}: no prediction shown`);
    const pixels = preview.getContext("2d").getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0);
    results.push([JSON.parse(digit.dataset.probabilities), Number(digit.textContent), Array.from(pixels)]);
  }
  return results;
}"""


def read_files(tab: web_browser.Tab, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, 10], the 28x28 previews [N, 28, 28]) after giving each file to the page."""
    files = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in paths]
    results = tab.page.evaluate(READ_FILES, files)
    probabilities = np.array([r[0] for r in results])
    assert [r[1] for r in results] == list(probabilities.argmax(1)), (
        "#digit's text is the most probable digit"
    )
    return probabilities, np.array([r[2] for r in results], dtype=np.uint8).reshape(-1, 28, 28)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.slow
def test_mnist_digits_read_as_onnxruntime_reads_them(site, tab, test_split, tmp_path):
    """28x28 MNIST PNGs through the file input: used as they are, read as onnxruntime in Python reads them."""
    images = test_split.images[:DIGITS]
    paths = []
    for i, image in enumerate(images.numpy()):
        paths.append(tmp_path / f"mnist-{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    page, previews = read_files(tab, paths)
    tab.page.set_input_files("input[type=file]", paths[0])  # and once the way Playwright chooses a file
    shown = tab.page.wait_for_selector(f'#digit[data-source="{paths[0].name}"]')
    assert json.loads(shown.get_attribute("data-probabilities")) == list(page[0])
    session = ort_session(site.out / "lenet.onnx")
    python = softmax(session.run(None, {"image": data.normalize(images).numpy()})[0])
    diff = np.abs(page - python).max()
    print(f"\n{DIGITS} MNIST digits: max |page - onnxruntime (Python)| probability {diff:.1e}")
    assert diff <= PROBABILITY_ATOL
    assert (page.argmax(1) == python.argmax(1)).all()
    assert (previews == images.numpy()).all(), "a 28x28 MNIST digit must reach the model unchanged"
    offline_and_clean(tab)


@pytest.mark.slow
def test_enlarged_digits_agree_with_python_predict(site, tab, test_split, tmp_path, capsys):
    """The same digits 8x larger, dark ink on a light background, through the page's full preparation."""
    paths = []
    for i, image in enumerate(test_split.images[:DIGITS].numpy()):
        paths.append(tmp_path / f"big-{i:03d}.png")
        size = 28 * ENLARGE
        Image.fromarray(255 - image).resize((size, size), Image.Resampling.BILINEAR).save(paths[-1])
    page, previews = read_files(tab, paths)
    capsys.readouterr()
    assert zoo_cli.main(["predict", str(site.checkpoint), *map(str, paths), "--json"]) == 0
    python = [r["digit"] for r in json.loads(capsys.readouterr().out)["results"]]
    agree = np.mean(page.argmax(1) == np.array(python))
    prepared = np.stack([prepare(p).image for p in paths]).astype(int)
    levels = np.abs(previews.astype(int) - prepared)
    with capsys.disabled():
        print(
            f"\n{DIGITS} digits enlarged {ENLARGE}x: top-1 agreement with `python -m mnist_zoo predict` "
            f"{agree:.1%}; prepared 28x28 images: {np.mean(levels == 0):.3%} of pixels equal, "
            f"{np.mean(levels <= 1):.3%} within one grey level, max {levels.max()}"
        )
    assert agree >= MIN_AGREEMENT
    offline_and_clean(tab)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> list[tuple[float, float]]:
    return [
        (cx + rx * math.sin(2 * math.pi * k / n), cy - ry * math.cos(2 * math.pi * k / n))
        for k in range(n + 1)
    ]


# Strokes as fractions of the pad, each a polyline drawn with the mouse button held.
DRAWN = {
    0: [_ellipse(0.5, 0.5, 0.22, 0.33)],
    1: [[(0.53, 0.15), (0.47, 0.85)]],
    7: [[(0.27, 0.2), (0.73, 0.2), (0.45, 0.85)]],
}


@pytest.mark.slow
@pytest.mark.parametrize("digit", list(DRAWN))
def test_drawn_digits(tab, digit, tmp_path):
    """Mouse strokes on the pad; the last one's page is the README's screenshot ($MNIST_ZOO_SCREENSHOT)."""
    page = tab.page
    page.click("#clear")
    page.wait_for_selector("#digit:not([data-probabilities])")
    box = page.locator("#pad").bounding_box()
    for stroke in DRAWN[digit]:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for p in points[1:]:
            page.mouse.move(*p, steps=4)
        page.mouse.up()
    page.wait_for_function("window.mnistZoo.busy === false")  # the last stroke has been read
    assert page.text_content("#digit") == str(digit), page.get_attribute("#digit", "data-probabilities")
    if digit == list(DRAWN)[-1]:
        page.locator("main").screenshot(path=os.environ.get("MNIST_ZOO_SCREENSHOT") or tmp_path / "web.png")
    offline_and_clean(tab)


@pytest.mark.slow
def test_model_picker(browser, site, tmp_path):
    """A second model in the folder puts a picker on the page, the most accurate model first."""
    torch.manual_seed(0)
    mlp = to_onnx.export_onnx(get_model("mlp").eval(), tmp_path / "mlp.onnx", metadata={"model": "mlp"})
    web.build(site.out / "web", [mlp], site.ort_files)
    models = json.loads((site.out / "web" / "models.json").read_text())["models"]
    assert [m["name"] for m in models] == ["lenet", "mlp"]  # the untrained mlp has no test accuracy
    tab = web_browser.open_tab(browser, site.url)
    tab.page.wait_for_selector("html[data-model=lenet]")
    assert tab.page.is_visible("#model")
    tab.page.select_option("#model", "mlp.onnx")
    tab.page.wait_for_selector("html[data-model=mlp]")
    offline_and_clean(tab)
    tab.page.context.close()
    (site.out / "web" / "mlp.onnx").unlink()
    web.build(site.out / "web", [], site.ort_files)  # models.json without it again


# --- without a browser ---------------------------------------------------------------------------------------


def test_server_types_headers_and_address(tmp_path):
    """127.0.0.1 only; .wasm and .mjs with the types browsers demand; the headers of cross-origin isolation."""
    shutil.copytree(web.PAGE, tmp_path / "web")
    (tmp_path / "web" / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "web" / "x.mjs").write_text("export {};")
    httpd = web.server(tmp_path, port=0)  # the --out folder: its web/ is served
    assert httpd.server_address[0] == "127.0.0.1"
    with web_browser.serving(httpd) as url:
        for name, kind in [("x.wasm", "application/wasm"), ("x.mjs", "text/javascript"), ("", "text/html")]:
            with urllib.request.urlopen(url + name) as r:
                assert r.headers["Content-Type"].split(";")[0] == kind
                assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_serve_needs_a_page(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "python -m export lenet --web" in err and "\n" not in err


def test_without_npm_or_cache_one_line_with_both_ways_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    assert cli.main(["lenet", "--web", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "npm is not installed" in err and "--ort-web DIR" in err
    assert not (tmp_path / "out" / "lenet.onnx").exists()  # failed before any training or export


def test_local_copies(ort_web_files, tmp_path):
    """--ort-web DIR: the tarball npm pack writes, or the unpacked package."""
    shutil.copy(data.cache_dir() / "onnxruntime-web" / web.ORT_WEB_TARBALL, tmp_path)
    assert web.ort_web_files(tmp_path) == ort_web_files
    (tmp_path / "package" / "dist").mkdir(parents=True)
    for name, content in ort_web_files.items():
        (tmp_path / "package" / "dist" / name).write_bytes(content)
    assert web.ort_web_files(tmp_path / "package") == ort_web_files


def test_local_copies_are_verified(tmp_path):
    (tmp_path / web.ORT_WEB_TARBALL).write_bytes(b"not the tarball")
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        web.ort_web_files(tmp_path)
    unpacked = tmp_path / "package"
    (unpacked / "dist").mkdir(parents=True)
    for name in web.ORT_WEB_FILES:
        (unpacked / "dist" / name).write_bytes(b"changed")
    with pytest.raises(UserError, match="does not match the pinned SHA-256"):
        web.ort_web_files(unpacked)
    with pytest.raises(UserError, match="holds neither"):
        web.ort_web_files(tmp_path / "package" / "dist")
