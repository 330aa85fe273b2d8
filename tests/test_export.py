"""Export: round trips for every model and format, dynamic batch, metadata, tamper refusal, int8, CLI exits.

    .venv/bin/pytest tests/test_export.py -q

Parity is checked on the small_trained models (1 epoch, real logits) over the first SUBSET test images per
model; the full 10,000-image verification runs through the CLI tests (lenet) and the int8 test.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from rich.console import Console

from export import cli, to_onnx, verify
from export.common import prepare
from export.formats import FORMATS
from export.integrity import EXTRA_FILE, digest_path, onnx_metadata, weights_digest
from export.quantize import calibration_images, quantize_int8
from export.to_pt2 import export_pt2, load_pt2
from export.to_torchscript import export_torchscript, load_torchscript
from mnist_zoo import data, recipes
from mnist_zoo.checkpoint import checkpoint_dir
from mnist_zoo.models import list_models
from mnist_zoo.targets import EXPORT_MAX_ABS_DIFF, EXPORT_MAX_INT8_DROP
from mnist_zoo.util import UserError, WriteFailed, sha256_file

SUBSET = 2000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(test_split) -> torch.Tensor:
    return data.normalize(test_split.images)


@pytest.fixture(scope="module")
def onnx_files(small_trained, tmp_path_factory) -> dict[str, Path]:
    """One fp32 ONNX export per model, shared by the ONNX tests (an export costs seconds)."""
    directory = tmp_path_factory.mktemp("onnx")
    files = {}
    for name in list_models():
        model, meta, _ = small_trained(name)
        metadata = cli.artifact_metadata(name, meta)
        files[name] = to_onnx.export_onnx(model, directory / f"{name}.onnx", metadata=metadata)
    return files


def _check_parity(logits: torch.Tensor, reference: torch.Tensor) -> None:
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max().item() <= EXPORT_MAX_ABS_DIFF
    assert torch.equal(logits.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("name", ["mlp", "dnn", "lenet", "cnn"])
def test_onnx_round_trip_and_dynamic_batch(name, small_trained, onnx_files, images):
    model, _, _ = small_trained(name)
    reference = verify.reference_logits(model, images[:SUBSET])
    session = verify.ort_session(onnx_files[name])
    _check_parity(verify.run_onnx(session, images[:SUBSET], 1000), reference)
    for batch in (1, 7):  # the batch axis is symbolic: any size runs
        _check_parity(verify.run_onnx(session, images[:batch], batch), reference[:batch])


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
@pytest.mark.parametrize("name", ["mlp", "dnn", "lenet", "cnn"])
def test_torch_formats_round_trip_and_dynamic_batch(name, fmt, small_trained, images, tmp_path):
    model, meta, _ = small_trained(name)
    export, load = (export_torchscript, load_torchscript) if fmt == "torchscript" else (export_pt2, load_pt2)
    path = export(model, tmp_path / f"{name}.{fmt}", metadata={"model": name, "seed": meta["seed"]})
    module, stored = load(path)
    assert stored["model"] == name and stored["seed"] == 0 and "weights_sha256" in stored
    reference = verify.reference_logits(model, images[:SUBSET])
    _check_parity(verify.run_torch(module, images[:SUBSET]), reference)
    for batch in (1, 7):
        _check_parity(verify.run_torch(module, images[:batch], batch), reference[:batch])


def test_onnx_file_contract_and_metadata(onnx_files, small_trained):
    path = onnx_files["lenet"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert {o.domain: o.version for o in proto.opset_import}[""] == to_onnx.DEFAULT_OPSET >= 18
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f"{m}.onnx" for m in list_models())
    meta = onnx_metadata(proto)
    for key in (
        "model",
        "normalisation",
        "seed",
        "recipe",
        "test_accuracy",
        "exporter",
        "torch_version",
        "opset",
    ):
        assert key in meta, key
    assert meta["model"] == "lenet" and meta["torch_version"] == torch.__version__
    assert "0.1307" in meta["normalisation"] and "0.3081" in meta["normalisation"]
    assert float(meta["test_accuracy"]) == small_trained("lenet")[1]["test_accuracy"]
    assert meta["seed"] == "0" and meta["recipe"] == "default"


def test_batchnorm_is_folded_into_the_convolutions(onnx_files, small_trained, images):
    ops = [n.op_type for n in onnx.load(str(onnx_files["cnn"])).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    model, _, _ = small_trained("cnn")
    folded = prepare(model).model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the caller's is untouched
    # the benchmark keys its export cache on the unfolded weights, 0-dim num_batches_tracked included
    assert len(weights_digest(model.state_dict())) == 64
    _check_parity(folded(images[:SUBSET]), verify.reference_logits(model, images[:SUBSET]))


def test_softmax_adds_probabilities(small_trained, images, tmp_path):
    model, _, _ = small_trained("mlp")
    session = verify.ort_session(to_onnx.export_onnx(model, tmp_path / "mlp.onnx", softmax=True))
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    logits, probs = verify.run_onnx(session, images[:7], 7, ("logits", "probabilities"))
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-5)
    module, _ = load_torchscript(export_torchscript(model, tmp_path / "mlp.pt", softmax=True))
    logits_ts, probs_ts = module(images[:7])
    assert torch.allclose(probs_ts, probs, atol=1e-5)


def _flip_weight_byte(path: Path, out: Path) -> None:
    """Change one byte inside the first weight tensor's raw data: still valid protobuf, still runs."""
    raw = path.read_bytes()
    weight = onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).tobytes()
    at = raw.index(weight[:64]) + 10
    out.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1 :])


def test_tampered_onnx_is_refused(onnx_files, tmp_path):
    tampered = tmp_path / "tampered.onnx"
    _flip_weight_byte(onnx_files["lenet"], tampered)
    # onnxruntime alone runs the tampered file
    onnxruntime.InferenceSession(str(tampered), providers=["CPUExecutionProvider"])
    with pytest.raises(UserError, match="modified after export.*catches accidental changes, not deliberate"):
        verify.ort_session(tampered)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_files["lenet"].read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable ONNX file|not an ONNX model"):
        verify.ort_session(truncated)
    with pytest.raises(UserError, match="no ONNX file"):
        verify.ort_session(tmp_path / "missing.onnx")


def test_unsealed_onnx_needs_opt_in(small_trained, tmp_path):
    path = tmp_path / "plain.onnx"
    proto = onnx.load(str(to_onnx.export_onnx(small_trained("mlp")[0], tmp_path / "mlp.onnx")))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(UserError, match="not an mnist-zoo export"):
        verify.ort_session(path)
    assert verify.ort_session(path, check_seal=False).get_inputs()[0].name == "image"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_tampered_torchscript_is_refused(small_trained, tmp_path):
    path = export_torchscript(small_trained("mlp")[0], tmp_path / "mlp.pt")
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        next(iter(module.parameters()))[0, 0] += 1.0
    torch.jit.save(module, str(tmp_path / "edited.pt"), _extra_files=extra)  # the old digest, new weights
    with pytest.raises(UserError, match="no edited.pt.sha256 beside it"):
        load_torchscript(tmp_path / "edited.pt")
    shutil.copy(digest_path(path), digest_path(tmp_path / "edited.pt"))  # the file's SHA-256 is checked first
    with pytest.raises(UserError, match="modified after export.*catches accidental changes, not deliberate"):
        load_torchscript(tmp_path / "edited.pt")
    # with a matching file digest, the weights digest inside still catches the edit
    sha256 = sha256_file(tmp_path / "edited.pt")
    with pytest.raises(UserError, match="weights SHA-256 mismatch"):
        load_torchscript(tmp_path / "edited.pt", sha256=sha256)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable TorchScript file"):
        load_torchscript(tmp_path / "junk.pt", sha256=sha256_file(tmp_path / "junk.pt"))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize(
    "inside, says",
    [
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),  # json.loads: RecursionError
        ('{"weights_sha256": NaN}', "weights_sha256 is NaN, not a finite number"),
        ("{not json", "not JSON"),
    ],
)
def test_a_damaged_metadata_file_inside_torchscript_is_one_line(small_trained, tmp_path, inside, says):
    """The file's digest can be recomputed by whoever edits it: what is inside is still read with care."""
    module = torch.jit.load(str(export_torchscript(small_trained("mlp")[0], tmp_path / "mlp.pt")))
    path = tmp_path / "edited.pt"
    torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: inside})
    with pytest.raises(UserError) as refused:
        load_torchscript(path, sha256=sha256_file(path))
    message = str(refused.value)
    assert message.startswith(f"{path}: {EXTRA_FILE} inside the archive is damaged: ") and says in message
    assert message.endswith("; re-export it") and "\n" not in message


def test_opsets(small_trained, tmp_path, monkeypatch):
    """The accepted range is what the exporter really produces: both ends work, and one below does not."""
    model = small_trained("mlp")[0]
    for opset in (to_onnx.MIN_OPSET, 18, to_onnx.MAX_OPSET):
        proto = onnx.load(str(to_onnx.export_onnx(model, tmp_path / "a.onnx", opset=opset)))
        assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    for bad in (0, to_onnx.MIN_OPSET - 1, to_onnx.MAX_OPSET + 1):
        with pytest.raises(UserError, match=f"cannot produce opset {bad} .*; choose {to_onnx.MIN_OPSET} to"):
            to_onnx.export_onnx(model, tmp_path / "b.onnx", opset=bad)
    # One below the range, onnx's converter fails and the exporter would quietly write opset 18 instead;
    # past the range check, export_onnx refuses that too.
    below = to_onnx.MIN_OPSET - 1
    monkeypatch.setattr(to_onnx, "MIN_OPSET", below)
    with pytest.raises(UserError, match=f"could not produce opset {below}: .* would have written opset 18"):
        to_onnx.export_onnx(model, tmp_path / "b.onnx", opset=below)
    assert not (tmp_path / "b.onnx").exists()


def test_failed_write_keeps_the_old_artifact(small_trained, tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    path.write_bytes(b"old")

    def crash(proto, tmp, **kwargs):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", crash)
    with pytest.raises(WriteFailed, match="disk full"):  # one line, exit 74
        to_onnx.export_onnx(small_trained("mlp")[0], path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]


def test_int8_lenet_accuracy_drop_and_size(
    small_trained, onnx_files, train_split, test_split, images, tmp_path
):
    model, meta, _ = small_trained("lenet")
    # The 0.3-point bound is about a trained lenet: a diverged one (constant predictions) has nothing to lose.
    assert meta["test_accuracy"] > 0.85, "small_trained('lenet') did not train; see tests/conftest.py"
    q = quantize_int8(onnx_files["lenet"], tmp_path / "lenet.int8.onnx", calibration_images(train_split))
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert onnx_metadata(onnx.load(str(q)))["model"] == "lenet"
    reference = verify.reference_logits(model, images)
    parity = verify.verify_onnx(q, reference, images, test_split.labels, int8=True)
    assert parity.ok, parity.problems
    assert parity.accuracy_drop <= EXPORT_MAX_INT8_DROP
    assert q.stat().st_size < 0.5 * onnx_files["lenet"].stat().st_size


def test_verification_fails_on_a_wrong_artifact(small_trained, onnx_files, images, test_split):
    """The check can fail: the dnn's file judged against the lenet's logits."""
    lenet_logits = verify.reference_logits(small_trained("lenet")[0], images)
    parity = verify.verify_onnx(onnx_files["dnn"], lenet_logits, images, test_split.labels)
    assert not parity.ok and any("max |logit diff|" in p for p in parity.problems)


# --- the command line ---


def test_cli_exports_verifies_and_replaces(lenet_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "artifacts"
    assert cli.main(["lenet", "--onnx", "--torchscript", "--out", str(out_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in result["artifacts"]] == ["onnx", "torchscript"]
    for r in result["artifacts"]:
        v = r["verification"]
        assert v["ok"] and v["images"] == 10_000 and v["agree"] >= 9_999 and v["max_abs_diff"] <= 1e-4
        assert v["batch1_images"] > 0 and r["replaced"] is False and Path(r["artifact"]).is_file()
    # no staging left; TorchScript's SHA-256 beside it
    assert sorted(p.name for p in out_dir.iterdir()) == ["lenet.onnx", "lenet.pt", "lenet.pt.sha256"]
    assert cli.main(["lenet", "--onnx", "--out", str(out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"][0]["replaced"] is True


def test_cli_failed_verification_writes_nothing(lenet_checkpoint, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    (out_dir / "lenet.onnx").write_bytes(b"previous")
    monkeypatch.setattr(verify, "EXPORT_MAX_ABS_DIFF", 0.0)  # no fp32 export is bit-exact: it must fail
    assert cli.main(["lenet", "--onnx", "--out", str(out_dir)]) == cli.EXIT_UNVERIFIED
    assert "failed verification" in capsys.readouterr().err
    assert [p.name for p in out_dir.iterdir()] == ["lenet.onnx"]
    assert (out_dir / "lenet.onnx").read_bytes() == b"previous"


def _record(fmt: str) -> dict:
    """A results record of `fmt` at its widest (cli.export_model's keys that the table shows)."""
    suffix, label = FORMATS[fmt].suffix, FORMATS[fmt].label
    return {
        "artifact": f"/tmp/artifacts/lenet{suffix}",
        "format": fmt,
        "label": label,
        "opset": 20 if FORMATS[fmt].onnx else None,
        "bytes": 999_000,
        "export_seconds": 12.34,
        "verification": {
            "images": 10_000,
            "agree": 9_980,
            "max_abs_diff": 5.0,
            "accuracy": 0.9924,
            "reference_accuracy": 0.9924,  # equal: Δ acc must read +0.00
        },
        **({"size_ratio": 0.33} if fmt == "onnx-int8" else {}),
    }


def _rendered(records: list[dict], width: int) -> str:
    console = Console(width=width, file=io.StringIO())
    console.print(cli.results_table(records, threads=1))
    return console.file.getvalue()


def test_results_table_reads_at_80_columns():
    every_format = [_record(fmt) for fmt in FORMATS]
    # rich squeezes and wraps a table wider than the console: identical output means it fits as it is
    assert _rendered(every_format, 80) == _rendered(every_format, 200)
    assert "TorchScript is deprecated" in _rendered(every_format, 80)
    onnx_only = _rendered([_record("onnx")], 80)
    for absent in ("TorchScript", ".pt2", "int8"):  # the footer names only what was exported
        assert absent not in onnx_only
    assert "ONNX opset 20" in onnx_only
    assert "+0.00" in onnx_only and "-0.00" not in onnx_only  # an exact match is no loss


@pytest.mark.parametrize(
    "argv, message",
    [
        (["resnet", "--onnx"], "unknown model 'resnet'; choose from mlp, dnn, lenet, cnn"),
        (["lenet", "--onnx", "--out", "{tmp}/missing/deeper"], "parent directory"),
        (["lenet", "--onnx", "--out", "{tmp}/file"], "is a file, not a directory"),
        (
            ["lenet", "--onnx", "--out", "{tmp}/file/sub"],
            "--out {tmp}/file/sub: {tmp}/file is a file, not a directory",
        ),
        (["lenet", "--onnx", "--opset", "99"], "cannot produce opset 99"),
        (["lenet", "--torchscript", "--opset", "18"], "--opset applies to ONNX"),
        (["lenet", "--onnx", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    message = message.replace("{tmp}", str(tmp_path))
    assert cli.main([*argv, "--out", str(tmp_path / "out")] if "--out" not in argv else argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


def test_cli_damaged_checkpoint(tmp_path, capsys):
    checkpoint_dir().mkdir(parents=True, exist_ok=True)
    (checkpoint_dir() / "lenet.pt").write_bytes(b"\x00garbage")
    assert cli.main(["lenet", "--onnx", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "is not a checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # a failed export leaves no empty --out behind


def test_cli_trains_a_missing_model_first(tmp_path, capsys, monkeypatch):
    """A fresh clone: no checkpoint, so the default recipe runs first (cut to 1 epoch here) and says so."""
    monkeypatch.setitem(recipes.DEFAULTS, "mlp", replace(recipes.DEFAULTS["mlp"], epochs=1))
    assert cli.main(["mlp", "--onnx", "--out", str(tmp_path / "out"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "has no checkpoint yet; training it" in captured.err
    assert (checkpoint_dir() / "mlp.pt").is_file() and (tmp_path / "out" / "mlp.onnx").is_file()
    assert json.loads(captured.out)["artifacts"][0]["verification"]["ok"]


def test_python_m_export_help_and_exit_codes():
    run = [sys.executable, "-m", "export"]
    help_ = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "python -m export lenet --onnx" in help_.stdout
    bad = subprocess.run([*run, "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: unknown model 'nope'; choose from mlp, dnn, lenet, cnn (or all)"
    ]
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors exit 2
        cli.main(["lenet", "--opset", "x"])
    assert exit_.value.code == 2


def test_calibration_images_are_training_images_and_reproducible(train_split):
    a, b = calibration_images(train_split, 50), calibration_images(train_split, 50)
    assert a.shape == (50, 1, 28, 28) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, calibration_images(train_split, 50, seed=1))
