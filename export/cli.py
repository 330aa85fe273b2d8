"""python -m export: take zoo models out of PyTorch, and prove each artifact answers like its source model.

examples:
  python -m export lenet --onnx                 # artifacts/lenet.onnx
  python -m export lenet --torchscript          # artifacts/lenet.pt (TorchScript, for C++ / libtorch)
  python -m export lenet --all --int8           # .onnx, .pt, .pt2 and the int8 lenet.int8.onnx
  python -m export all --onnx --out /tmp/zoo    # every model in the zoo
  python -m export dnn --onnx --opset 18 --softmax --json
  python -m export lenet --web                  # + artifacts/web/: a draw-a-digit page on onnxruntime-web
  python -m export serve artifacts              # serve that page on http://127.0.0.1:8000/ (see export/web.py)

Formats: --onnx (.onnx, torch.onnx dynamo exporter), --torchscript (.pt), --pt2 (.pt2, torch.export, the
successor of TorchScript); --all (also the default when no format is named) writes all three. --int8 adds an
onnxruntime static QDQ int8 model (.int8.onnx), calibrated on 1,000 training images; it implies --onnx.

Every artifact takes `image` float32 [batch, 1, 28, 28], normalised as (pixel/255 - 0.1307) / 0.3081, and
returns `logits` [batch, 10] (with --softmax also `probabilities`). The model comes from its checkpoint; a
model with none is trained first with the default recipe. Each artifact is written to a staging file, run on all
10,000 test images beside the PyTorch model (fp32 at batch 1,000 and at batch 1, held to the bounds below), and
only then moved into place, atomically.

Exit codes: 0 done; 1 bad input (one line on stderr); 2 bad arguments; 3 an artifact failed verification
(nothing of that model is written); 74 a write failed, e.g. a full disk (nothing of that model is written, the
page's folder is left as it was); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from rich.table import Table

from export import to_onnx, web
from export.common import write_failure
from export.formats import FORMATS
from export.integrity import digest_path
from export.quantize import calibration_images, quantize_int8
from export.to_pt2 import export_pt2, load_pt2
from export.to_torchscript import export_torchscript, load_torchscript
from export.verify import reference_logits, verify_onnx, verify_torch
from mnist_zoo import data
from mnist_zoo.fit import ensure_trained
from mnist_zoo.models import canonical, list_models
from mnist_zoo.targets import EXPORT_MAX_ABS_DIFF, EXPORT_MAX_INT8_DROP, EXPORT_MIN_AGREEMENT
from mnist_zoo.util import (
    UserError,
    WriteFailed,
    check_output_dir,
    environment,
    err,
    fail,
    guarded,
    out,
    remove_stale_temps,
)

DEFAULT_OUT = "artifacts"
VERIFY_THREADS = 1  # verification is a correctness check, not a benchmark: one thread, deterministic
EXIT_UNVERIFIED = 3
BOUNDS = f"""verification bounds (mnist_zoo/targets.py):
  fp32: top-1 agreement >= {EXPORT_MIN_AGREEMENT:.2%}, max |logit diff| <= {EXPORT_MAX_ABS_DIFF:.0e}
  int8: accuracy drop <= {EXPORT_MAX_INT8_DROP * 100:.1f} points"""


class Unverified(Exception):
    """An artifact was written but failed verification; the message says which figure."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__,
        epilog=BOUNDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = ", ".join(list_models())
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help=f"one or more of: {models}, all, or a plugin's module:callable",
    )
    p.add_argument("--onnx", action="store_true", help="write MODEL.onnx")
    p.add_argument("--torchscript", action="store_true", help="write MODEL.pt (TorchScript)")
    p.add_argument("--pt2", action="store_true", help="write MODEL.pt2 (torch.export)")
    p.add_argument("--all", action="store_true", help="all three formats (the default when none is named)")
    p.add_argument(
        "--int8", action="store_true", help="also MODEL.int8.onnx, static int8 QDQ (implies --onnx)"
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT}/)")
    p.add_argument(
        "--web", action="store_true", help="also OUT/web/, the page on onnxruntime-web (implies --onnx)"
    )
    p.add_argument(
        "--ort-web", metavar="DIR", help=f"a local {web.ORT_WEB} (its npm tarball or unpacked package)"
    )
    opsets = f"{to_onnx.MIN_OPSET} to {to_onnx.MAX_OPSET}, default {to_onnx.DEFAULT_OPSET}"
    p.add_argument("--opset", type=int, help=f"ONNX opset ({opsets}: the exporter's recommended)")
    p.add_argument(
        "--softmax", action="store_true", help="add a `probabilities` output (softmax of the logits)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=VERIFY_THREADS,
        help=f"threads for verification runs, torch and onnxruntime (default: {VERIFY_THREADS})",
    )
    p.add_argument("--data-dir", help="MNIST directory (default: $MNIST_ZOO_DATA, then cache, download, npm)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    return p


def _models(names: list[str]) -> list[str]:
    if "all" in names:
        return list_models()
    names = [canonical(name) for name in names]  # a plugin's module:callable spec: its declared name
    for name in names:
        if name not in list_models():
            raise UserError(f"unknown model {name!r}; choose from {', '.join(list_models())} (or all)")
    return list(dict.fromkeys(names))


def _formats(args: argparse.Namespace) -> list[str]:
    chosen = [f for f in ("onnx", "torchscript", "pt2") if getattr(args, f) or (f == "onnx" and args.web)]
    if args.all or not chosen:
        chosen = ["onnx", "torchscript", "pt2"]
    if args.int8:  # int8 is made from, and judged beside, the fp32 file
        chosen = list(dict.fromkeys(["onnx", *chosen, "onnx-int8"]))
    if args.opset is not None and "onnx" not in chosen:
        raise UserError("--opset applies to ONNX; add --onnx")
    return chosen


def _out_dir(path: str) -> Path:
    """The output directory, created if only it is missing; checked writable before any training or export."""
    out_dir = check_output_dir(path, f"--out {path}")
    out_dir.mkdir(exist_ok=True)
    remove_stale_temps(out_dir)  # staging folders of killed runs
    return out_dir


def artifact_metadata(name: str, meta: dict) -> dict:
    """What the checkpoint says about how the model was made, for every artifact's metadata."""
    keys = ("recipe", "epochs", "batch_size", "lr", "seed", "test_accuracy", "data_sha256", "recipe_details")
    return {
        "model": name,
        **{k: meta[k] for k in keys if k in meta},
        "trained_with_torch": meta.get("torch_version"),
        "source": "mnist-zoo",
    }


def export_model(
    name: str,
    model: torch.nn.Module,
    meta: dict,
    formats: list[str],
    out_dir: Path,
    test: data.Split,
    calib: torch.Tensor | None,
    *,
    opset: int | None = None,
    softmax: bool = False,
    threads: int = VERIFY_THREADS,
) -> list[dict]:
    """Export `model` (zoo model `name`, its checkpoint's `meta`) in `formats` to `out_dir`, verify every artifact
    on `test` with `threads` threads, and move them into place; on a failure raise Unverified (or WriteFailed:
    a full disk) and commit nothing. `calib`: the int8 calibration images (onnx-int8); `opset`: ONNX's (default:
    the exporter's)."""
    images = data.normalize(test.images)
    reference = reference_logits(model, images, threads=threads)
    metadata = artifact_metadata(name, meta)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-staging.{os.getpid()}.", suffix=".tmp", dir=out_dir))
    except OSError as e:
        raise write_failure(e, out_dir) from None
    fp32_onnx = staging / f"{name}.onnx"
    records: list[dict] = []
    try:
        for fmt in formats:
            label = FORMATS[fmt].label
            path = staging / f"{name}{FORMATS[fmt].suffix}"
            t0 = time.perf_counter()
            if fmt == "onnx":
                to_onnx.export_onnx(model, path, opset=opset, softmax=softmax, metadata=metadata)
            elif fmt == "onnx-int8":
                quantize_int8(fp32_onnx, path, calib)
            elif fmt == "torchscript":
                export_torchscript(model, path, softmax=softmax, metadata=metadata)
            else:
                export_pt2(model, path, softmax=softmax, metadata=metadata)
            seconds = time.perf_counter() - t0
            is_onnx = FORMATS[fmt].onnx
            if is_onnx:
                int8 = fmt == "onnx-int8"
                parity = verify_onnx(path, reference, images, test.labels, int8=int8, threads=threads)
            else:
                load = load_torchscript if fmt == "torchscript" else load_pt2
                parity = verify_torch(load, path, reference, images, test.labels, threads=threads)
            final = out_dir / path.name
            record = {
                "model": name,
                "artifact": str(final),
                "format": fmt,
                "label": label,
                "opset": (opset or to_onnx.DEFAULT_OPSET) if is_onnx else None,
                "bytes": path.stat().st_size,
                "export_seconds": seconds,
                "replaced": final.exists(),
                "softmax": softmax,
                "verification": parity.as_dict(),
            }
            if fmt == "onnx-int8":
                record["size_ratio"] = record["bytes"] / fp32_onnx.stat().st_size
            records.append(record)
            if not parity.ok:
                problems = "; ".join(parity.problems)
                raise Unverified(
                    f"{name}: {label} failed verification: {problems} (nothing of {name} was written)"
                )
        for r in records:  # every artifact of this model verified: move them into place, each atomically
            staged = staging / Path(r["artifact"]).name
            if digest_path(staged).is_file():  # .pt, .pt2: the SHA-256 their loaders check before loading
                os.replace(digest_path(staged), digest_path(r["artifact"]))
            os.replace(staged, r["artifact"])
    except (
        OSError,
        WriteFailed,
    ) as e:  # a full disk: the staging folder goes, nothing of this model is written
        raise write_failure(
            e, f"{name}'s artifacts in {out_dir}", f" (nothing of {name} was written)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return records


def _size(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def results_table(records: list[dict], threads: int) -> Table:
    """One row per artifact, narrow enough for 80 columns (the opset and versions go in the footer, the int8
    size ratio under its size); the footer explains the columns and names only the formats exported."""
    formats = {r["format"] for r in records}
    directories = ", ".join(sorted({str(Path(r["artifact"]).parent) for r in records}))
    images = records[0]["verification"]["images"]
    int8_bound = f" (int8 needs >= -{EXPORT_MAX_INT8_DROP * 100:.1f})" if "onnx-int8" in formats else ""
    # One line per column and fact, so that at 80 columns no term is split from its meaning.
    footer = [
        "secs: export time",
        f"agree: top-1 equal to PyTorch's (fp32 needs >= {EXPORT_MIN_AGREEMENT * images:,.0f})",
        f"max |Δ|: largest logit difference (fp32 needs <= {EXPORT_MAX_ABS_DIFF:.0e})",
        f"Δ acc: test accuracy minus PyTorch's, in points{int8_bound}",
        f"Verified at batch 1,000 and 1, {threads} thread(s), torch {torch.__version__}",
    ]
    opset = next((r["opset"] for r in records if r["opset"]), None)  # one run exports at one opset
    if opset:
        footer.append(f"ONNX opset {opset}, run by onnxruntime {onnxruntime.__version__}")
    if "torchscript" in formats:
        footer.append("TorchScript is deprecated upstream; .pt2 (torch.export) is its successor")
    t = Table(
        title=f"exports in {directories}/, each verified on the {images:,} test images",
        caption="\n".join(footer),
        caption_justify="left",
        box=None,
        header_style="bold underline",
        pad_edge=False,
    )
    for col in ("artifact", "format", "size", "secs", "agree", "max |Δ|", "acc", "Δ acc"):
        t.add_column(col, justify="left" if col in ("artifact", "format") else "right")
    for r in records:
        v = r["verification"]
        size = _size(r["bytes"]) + (f"\n{r['size_ratio']:.2f}×" if "size_ratio" in r else "")
        delta = (v["accuracy"] - v["reference_accuracy"]) * 100  # exactly 0.0 for equal accuracy: "+0.00"
        t.add_row(
            Path(r["artifact"]).name,
            r["label"],
            size,
            f"{r['export_seconds']:.2f}",
            f"{v['agree']:,}",
            f"{v['max_abs_diff']:.1e}",
            f"{v['accuracy']:.2%}",
            f"{delta:+.2f}",
        )
    return t


def _failed(e: Unverified | WriteFailed, records: list[dict]) -> int:
    """One line for a model that failed, after a note of the artifacts committed before it (they stay)."""
    if records:
        err.print(
            f"written before the failure: {', '.join(r['artifact'] for r in records)}",
            highlight=False,
            soft_wrap=True,
        )
    return fail(str(e), EXIT_UNVERIFIED if isinstance(e, Unverified) else e.exit_code)


def run(args: argparse.Namespace) -> int:
    names = _models(args.models)
    formats = _formats(args)
    if args.opset is not None:
        to_onnx.check_opset(args.opset)
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.ort_web and not args.web:
        raise UserError("--ort-web applies to --web; add --web")
    out_dir = _out_dir(args.out)
    if args.web:  # before any training: fail fast, and never after the exports were written
        web.check_page_dir(out_dir / "web")
    ort_web = web.ort_web_files(args.ort_web) if args.web else None
    test = data.load("test", args.data_dir)
    calib = calibration_images(data.load("train", args.data_dir)) if "onnx-int8" in formats else None
    progress = not (args.no_progress or args.json)
    records: list[dict] = []
    for name in names:
        model, meta = ensure_trained(name, data_dir=args.data_dir, progress=progress)
        try:
            options = dict(opset=args.opset, softmax=args.softmax, threads=args.threads)
            records += export_model(name, model, meta, formats, out_dir, test, calib, **options)
        except (Unverified, WriteFailed) as e:
            return _failed(e, records)
    onnx_files = [Path(r["artifact"]) for r in records if r["format"] == "onnx"]
    try:
        page = web.build(out_dir / "web", onnx_files, ort_web) if args.web else None
    except WriteFailed as e:
        return _failed(e, records)
    if not args.json:
        out.print(results_table(records, args.threads))
        if page:
            out.print(f"page: {page}/ (serve it: python -m export serve {out_dir})", highlight=False)
        return 0
    thresholds = {
        "min_agreement": EXPORT_MIN_AGREEMENT,
        "max_abs_diff": EXPORT_MAX_ABS_DIFF,
        "max_int8_drop": EXPORT_MAX_INT8_DROP,
    }
    record = {
        "artifacts": records,
        "thresholds": thresholds,
        "onnxruntime_version": onnxruntime.__version__,
        **environment("cpu"),
        "threads": args.threads,
        "web": str(page) if page else None,
    }
    print(json.dumps(record))  # not through rich: JSON must not be wrapped or highlighted
    return 0


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export serve",
        description="Serve the page that --web wrote, on 127.0.0.1 only (Ctrl-C stops it).",
        epilog="example:\n  python -m export lenet --web && python -m export serve artifacts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "directory", nargs="?", default=DEFAULT_OUT, help="the --out folder or its web/ (default: artifacts)"
    )
    p.add_argument(
        "--port", type=int, default=web.DEFAULT_PORT, help=f"default: {web.DEFAULT_PORT}; 0: any free port"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        served = serve_parser().parse_args(argv[1:])
        return guarded(lambda: web.serve(served.directory, served.port))
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out).expanduser()
    existed = out_dir.exists()
    code = guarded(lambda: run(args))
    if code and not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
        with contextlib.suppress(OSError):  # another process may have written there meanwhile
            out_dir.rmdir()  # a failed run leaves no empty --out behind
    return code
