"""predict: MNIST-style preparation of any image file, per-file errors, and the command end to end."""

from __future__ import annotations

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_zoo import predict
from mnist_zoo.checkpoint import save_checkpoint
from mnist_zoo.cli import main
from mnist_zoo.data import normalize
from mnist_zoo.predict import MAX_PIXELS, WORK_SIDE, ImageError, predict_files, prepare, prepare_array


def _seven(size=(300, 400), ink=(20, 20, 30), paper=(245, 240, 230), mode="RGB") -> Image.Image:
    """A hand-drawn-looking 7, dark ink on light paper, well away from the centre of the canvas."""
    im = Image.new("RGB", size, paper)
    w, h = size
    stroke = [(0.1 * w, 0.15 * h), (0.6 * w, 0.15 * h), (0.3 * w, 0.6 * h)]
    ImageDraw.Draw(im).line(stroke, fill=ink, width=max(2, w // 14))
    return im.convert(mode)


def _photo_of(digit: torch.Tensor, size: int = 200, seed: int = 0) -> Image.Image:
    """An MNIST digit as a user would supply it: dark on grainy, unevenly lit paper, large, in colour."""
    grey = 235 - (digit.numpy().astype(np.float64) * 215 / 255)
    big = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize((size, size), Image.BILINEAR), dtype=float)
    big += np.random.default_rng(seed).normal(0, 5, big.shape) + np.linspace(-15, 10, size)[None, :]
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).convert("RGB")


def _box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


def test_prepare_reproduces_mnist_itself(test_split):
    """An MNIST digit is already prepared: preparing it again must give (almost) the same 28x28 image."""
    same_box, diffs = 0, []
    for i in range(200):
        original = test_split.images[i].numpy()
        prepared, inverted = prepare_array(original / 255.0)
        assert not inverted and prepared.dtype == np.uint8 and prepared.shape == (28, 28)
        same_box += _box(prepared > 64) == _box(original > 64)  # the clear ink, not the faintest edge pixels
        diffs.append(np.abs(prepared.astype(float) - original).mean())
    assert same_box >= 195  # same place: the centre-of-mass rule matches MNIST's
    assert np.mean(diffs) < 1  # same pixels (a clean background has no noise to remove)


def test_drawn_digit_is_inverted_scaled_and_centred(tmp_path):
    path = tmp_path / "seven.png"
    _seven().save(path)
    p = prepare(path)
    assert p.inverted and (p.width, p.height, p.mode) == (300, 400, "RGB")
    top, bottom, left, right = _box(p.image)
    assert max(bottom - top + 1, right - left + 1) == 20  # the longer side fills MNIST's 20-pixel box
    ink = p.image.astype(float)
    cy = (ink.sum(1) @ np.arange(28)) / ink.sum()
    cx = (ink.sum(0) @ np.arange(28)) / ink.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert p.image[0].max() == 0 and p.image[:, 0].max() == 0  # white ink on a black field


def test_polarity_colour_and_format_do_not_matter(tmp_path):
    """Dark-on-light RGB PNG, light-on-dark grey PNG, JPEG and a transparent canvas give the same input."""
    _seven().save(tmp_path / "rgb.png")
    _seven(ink=(255, 255, 255), paper=(0, 0, 0), mode="L").save(tmp_path / "dark.png")
    _seven().save(tmp_path / "photo.jpg", quality=90)
    canvas = Image.new("RGBA", (300, 400), (0, 0, 0, 0))
    canvas.paste(
        _seven(ink=(0, 0, 0), paper=(255, 255, 255)), mask=_seven(ink=(255,) * 3, paper=(0,) * 3, mode="L")
    )
    canvas.save(tmp_path / "transparent.png")
    reference = prepare(tmp_path / "rgb.png").image.astype(int)
    assert not prepare(tmp_path / "dark.png").inverted
    for name in ("dark.png", "photo.jpg", "transparent.png"):
        other = prepare(tmp_path / name).image.astype(int)
        assert np.abs(other - reference).mean() < 6, name  # JPEG artefacts and luma rounding only


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"not an image", "not an image file"),
        ("empty.png", b"", "empty file"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image file"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=message):
        prepare(tmp_path / name)


def test_truncated_blank_missing_and_directory(tmp_path):
    _seven().save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    Image.new("L", (64, 64), 200).save(tmp_path / "blank.png")
    cases = {
        "cut.png": "damaged",
        "blank.png": "no digit found",
        "absent.png": "no such file",
        "": "is a directory",
    }
    for name, message in cases.items():
        path = tmp_path / name
        with pytest.raises(ImageError, match=message):
            prepare(path)


def test_predict_files_answers_good_files_despite_bad_ones(tmp_path, small_trained, test_split):
    model = small_trained("lenet")[0]
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"digit{i}.png")
        _photo_of(test_split.images[i]).save(paths[-1])
    (tmp_path / "bad.txt").write_text("hello")
    paths.insert(3, tmp_path / "bad.txt")
    results, prepared = predict_files(model, [str(p) for p in paths])
    assert [r["file"] for r in results] == [str(p) for p in paths]  # every file answered, in order
    assert not results[3]["ok"] and "not an image" in results[3]["error"] and prepared[3] is None
    good = [r for r in results if r["ok"]]
    assert len(good) == 20
    for r in good:
        assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert r["probability"] == pytest.approx(max(r["probabilities"]), abs=1e-6) and r["inverted"]
    with torch.no_grad():
        direct = model(normalize(test_split.images[:20])).argmax(1).tolist()
    agree = sum(r["digit"] == d for r, d in zip(good, direct, strict=True))
    assert agree >= 18  # a photo of a test digit reads as the digit itself does


def _checkpoint(small_trained, path):
    """small_trained's model saved with plain-string metadata (torch.load(weights_only=True) must read it)."""
    model, meta, _ = small_trained("lenet")
    meta = {**meta, "torch_version": str(meta["torch_version"])}
    return save_checkpoint(model, meta, path)


def test_predict_command_json(tmp_path, small_trained, test_split, capsys):
    ckpt = _checkpoint(small_trained, tmp_path / "lenet-small.pt")
    _photo_of(test_split.images[0]).save(tmp_path / "seven.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files = [str(tmp_path / "seven.png"), str(tmp_path / "empty.jpg")]
    code = main(
        ["predict", str(ckpt), *files, "--json", "--save-prepared", "--report-dir", str(tmp_path / "reports")]
    )
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert code == 1  # one file failed; the other was still answered
    assert record["schema"] == "mnist-zoo/predict/1" and record["model"] == "lenet"
    ok, bad = record["results"]
    assert set(ok) >= {"file", "ok", "digit", "probability", "probabilities", "inverted", "width", "height"}
    assert (
        ok["ok"] and isinstance(ok["digit"], int) and 0 <= ok["digit"] <= 9 and len(ok["probabilities"]) == 10
    )
    assert bad == {"file": str(tmp_path / "empty.jpg"), "ok": False, "error": "empty file (0 bytes)"}
    assert f"error: {tmp_path / 'empty.jpg'}: empty file (0 bytes)\n" in captured.err  # stderr too
    assert {"torch_version", "threads", "device"} <= set(record)
    with Image.open(record["plots"]["inputs"]) as img:
        assert img.format == "PNG"


def test_predict_command_text_and_zoo_name(tmp_path, small_trained, test_split, capsys):
    from mnist_zoo.checkpoint import checkpoint_path

    _checkpoint(small_trained, checkpoint_path("lenet"))  # the isolated checkpoint dir of this test
    _photo_of(test_split.images[1]).save(tmp_path / "two.png")
    (tmp_path / "x.txt").write_text("x")
    assert main(["predict", "lenet", str(tmp_path / "two.png")]) == 0
    assert main(["predict", "lenet", str(tmp_path / "x.txt")]) == 1
    captured = capsys.readouterr()
    assert "two.png: " in captured.out and "%" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "x.txt: not an image file" in errors[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (grey, 8 bits) and holds no pixels: what a decompression bomb shows
    before it is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 20_000, 100_000])
def test_images_over_the_pixel_limit_are_refused_from_their_header(side, tmp_path):
    """Past MAX_PIXELS: one line before any decoding, and none of Pillow's DecompressionBomb warnings."""
    assert side * side > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        megapixels = f"{side * side / 1e6:,.0f} megapixels; the limit is 100: scale it down first"
        with pytest.raises(ImageError, match=f"image too large: .*{megapixels}"):
            prepare(path)


def test_a_large_allowed_image_is_decoded_reduced(tmp_path, monkeypatch):
    """A 6,000 x 6,000 drawing (36 megapixels) is reduced before it is converted, and reads as the same digit
    drawn small."""
    big = _seven(size=(6_000, 6_000), mode="L")
    big.save(tmp_path / "big.png")
    big.save(tmp_path / "big.jpg", quality=90)
    _seven(size=(900, 900), mode="L").save(tmp_path / "small.png")
    del big
    seen = []
    to_grey = predict._to_grey
    monkeypatch.setattr(predict, "_to_grey", lambda img: seen.append(img.size) or to_grey(img))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = {name: prepare(tmp_path / name) for name in ("big.png", "big.jpg", "small.png")}
    assert all(max(size) <= WORK_SIDE for size in seen), seen
    assert (results["big.png"].width, results["big.png"].height) == (6_000, 6_000)  # the file's own size
    reference = results["small.png"].image.astype(int)
    for name in ("big.png", "big.jpg"):
        assert np.abs(results[name].image.astype(int) - reference).mean() < 6, name
