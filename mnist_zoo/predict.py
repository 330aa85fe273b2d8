"""Read a digit from any image file, prepared the way MNIST's digits were, and say what the model sees.

    python -m mnist_zoo predict lenet my-seven.png photo.jpg        # digit and probability per file
    python -m mnist_zoo predict lenet *.png --json --save-prepared  # + a picture of the 28x28 inputs
    >>> from mnist_zoo.predict import prepare
    >>> prepare("my-seven.png").image        # uint8 [28, 28], white ink on black, centred like MNIST

MNIST's digits are white ink on black, fitted into a 20x20 box keeping their aspect ratio (anti-aliased, hence
grey edges), and placed in a 28x28 field with their centre of mass at the centre. A phone photo or a drawing is
usually dark ink on a light background, of any size, in colour: `prepare` converts it to grey, inverts it when
the background is light, stretches the contrast, crops to the ink, and then does what MNIST did.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnist_zoo.data import normalize

CANVAS, BOX = 28, 20  # MNIST: a 20x20 box inside a 28x28 field
MIN_CONTRAST = 0.08  # ink must stand out from the background by 8% of full scale, else the image is blank
# Ink fainter than 5% of the strongest stays out of the crop box: JPEG ringing would widen it.
BOX_FLOOR = 0.05
PAPER_QUANTILE = 0.98  # the paper's own noise: this quantile of the border's distance from the background
# Larger images are refused from their header, before decoding: 100 megapixels holds every phone camera's photo
# but the 200-megapixel ones, and decoding it whole (a PNG cannot be decoded reduced) costs at most ~0.4 GB.
MAX_PIXELS = 100_000_000
# Larger images are decoded reduced to about this many pixels a side (JPEG at 1/2-1/8 scale straight from the
# file, then whole-pixel box averaging, which keeps a thin stroke as grey): a digit ends up 20 pixels tall, and
# preparing a photo's millions of pixels in full would cost gigabytes of memory and seconds.
WORK_SIDE = 1024


class ImageError(ValueError):
    """One file cannot be read as a digit; the message says why (the other files are still answered)."""


@dataclass
class Prepared:
    image: np.ndarray  # uint8 [28, 28], white ink on black: what the model gets (before normalize)
    inverted: bool  # the source was dark ink on a light background
    width: int
    height: int
    mode: str  # the file's PIL mode: L, RGB, RGBA, P, ...


def load_grey(path: str | Path) -> tuple[np.ndarray, int, int, str]:
    """(grey float [H, W] in 0..1, width, height, mode); every way a file can fail is an ImageError. Width and
    height are the file's; images larger than WORK_SIDE come back reduced."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError("no such file")
    if path.is_dir():
        raise ImageError("is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow's warnings (decompression bombs, corrupt EXIF, odd TIFF tags) are not the user's business:
            # MAX_PIXELS decides the size, and a file that cannot be decoded fails below with its reason.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                mode, (width, height) = img.mode, img.size
                if width * height > MAX_PIXELS:
                    raise _too_large(f"{width:,} x {height:,} pixels, {width * height / 1e6:,.0f}")
                small = _decode_reduced(img)  # decode now: a truncated file fails here, inside the try
                upright = ImageOps.exif_transpose(small)  # phone photos: honour the camera's rotation
                if upright.size != small.size:
                    width, height = height, width
                grey = _to_grey(upright)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "not an image file that Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP ...)"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, twice its warning's, came first
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(f"{int(pixels[1]) / 1e6:,.0f}" if pixels else "over 179") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
    ) as e:  # truncated or corrupt data; SyntaxError from some decoders
        raise ImageError(f"unreadable or damaged image ({str(e).strip() or type(e).__name__})") from None
    return grey, width, height, mode


def _too_large(megapixels: str) -> ImageError:
    limit = f"the limit is {MAX_PIXELS / 1e6:.0f}: scale it down first"
    return ImageError(f"image too large: {megapixels} megapixels; {limit}")


def _decode_reduced(img):
    """The image decoded, at most about WORK_SIDE pixels a side: JPEG decodes at 1/2, 1/4 or 1/8 scale directly
    (draft), and every format is then box-averaged by a whole factor (reduce)."""
    factor = math.ceil(max(img.size) / WORK_SIDE)
    if factor > 1 and img.format == "JPEG":
        img.draft(None, (img.width // factor, img.height // factor))
    img.load()
    factor = math.ceil(max(img.size) / WORK_SIDE)
    if factor == 1:
        return img
    # reduce averages pixel values, which means nothing for palette indices or 1-bit pixels: grey them first.
    if img.mode in ("P", "PA"):
        img = img.convert("LA" if img.mode == "PA" or "transparency" in img.info else "L")
    elif img.mode == "1" or img.mode.startswith("I;16"):
        img = img.convert("L" if img.mode == "1" else "I")
    return img.reduce(factor)


def _to_grey(img) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float greyscale: scale, do not clip
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)  # a float image may hold NaN
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        grey = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as Pillow's "L"
        alpha = rgba[..., 3]
        if alpha.min() < 1.0:
            # A drawing on a transparent canvas: put it on the background that contrasts with its ink.
            visible = grey[alpha > 0.5]
            backdrop = 1.0 if visible.size == 0 or visible.mean() < 0.5 else 0.0
            grey = alpha * grey + (1 - alpha) * backdrop
        return grey
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def prepare_array(grey: np.ndarray) -> tuple[np.ndarray, bool]:
    """Grey float [H, W] (any polarity, any size) -> (MNIST-style uint8 [28, 28], inverted?)."""
    grey = np.asarray(grey, dtype=np.float64)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    # Paper grain, shadows and JPEG noise: whatever the border itself varies by is not ink. A clean image
    # (MNIST's own digits, a drawing) has none. MNIST's digits come through nearly unchanged: 831 of the first
    # 1,000 test digits exactly, the rest re-cropped and rescaled a little (their faintest edge pixels fall
    # under BOX_FLOOR), half of them within one grey level of the original.
    noise = float(np.quantile(np.abs(border - background), PAPER_QUANTILE))
    inverted = background > 0.5  # a light border means dark ink on light paper: MNIST wants the opposite
    if inverted:
        grey, background = 1.0 - grey, 1.0 - background
    ink = grey - background - noise
    contrast = float(ink.max())
    if not contrast >= MIN_CONTRAST:  # `not >=`: NaN is no contrast either
        raise ImageError(
            "no digit found: nothing stands out from the background (blank or nearly uniform image)"
        )
    ink = np.clip(ink / contrast, 0.0, 1.0)
    strong = ink > BOX_FLOOR
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    # Anti-aliased resize, as MNIST's were: a thin stroke shrinks to grey, not to a broken line.
    ink = torch.from_numpy(ink)[None, None].float()
    box = F.interpolate(ink, size=size, mode="bilinear", antialias=True, align_corners=False)
    box = box[0, 0].clamp(0, 1).numpy()
    total = box.sum()
    if total <= 0:
        raise ImageError("no digit found after scaling (the ink is too faint or too small)")
    cy, cx = (box.sum(1) @ np.arange(size[0])) / total, (box.sum(0) @ np.arange(size[1])) / total
    # Centre of mass at pixel (14, 14), as long as the box stays inside the field. Measured on MNIST itself:
    # every digit's centre of mass, in pixel-index coordinates, lies within half a pixel of (14, 14).
    top = int(np.clip(round(CANVAS / 2 - cy), 0, CANVAS - size[0]))
    left = int(np.clip(round(CANVAS / 2 - cx), 0, CANVAS - size[1]))
    canvas = np.zeros((CANVAS, CANVAS))
    canvas[top : top + size[0], left : left + size[1]] = box
    return np.round(canvas * 255).astype(np.uint8), inverted


def prepare(path: str | Path) -> Prepared:
    grey, width, height, mode = load_grey(path)
    image, inverted = prepare_array(grey)
    return Prepared(image, inverted, width, height, mode)


@torch.no_grad()
def predict_files(model: nn.Module, paths: list[str]) -> tuple[list[dict], list[Prepared | None]]:
    """One result per path, in order: {file, ok: True, digit, probability, probabilities, ...} or
    {file, ok: False, error}. Also the prepared images (None where a file failed)."""
    results: list[dict] = []
    prepared: list[Prepared | None] = []
    for p in paths:
        try:
            item = prepare(p)
        except ImageError as e:
            results.append({"file": str(p), "ok": False, "error": str(e)})
            prepared.append(None)
            continue
        size = {"width": item.width, "height": item.height, "mode": item.mode}
        results.append({"file": str(p), "ok": True, "inverted": item.inverted, **size})
        prepared.append(item)
    good = [i for i, item in enumerate(prepared) if item is not None]
    if good:
        device = next(model.parameters()).device
        batch = torch.from_numpy(np.stack([prepared[i].image for i in good])).to(device)
        model.eval()
        logits = model(normalize(batch)).float()
        probs = torch.softmax(logits, dim=1).cpu()  # the softmax belongs here, not in the model
        for i, p in zip(good, probs, strict=True):
            digit = int(p.argmax())
            results[i].update(
                digit=digit, probability=float(p[digit]), probabilities=[round(float(x), 6) for x in p]
            )
    return results, prepared
