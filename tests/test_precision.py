"""Precision (fp32, bf16, auto), the fast recipe's settings (fractional epochs, Adam), and the benchmark's
--bench-precision."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch

from mnist_zoo import cpu, precision
from mnist_zoo.cli import main
from mnist_zoo.recipes import recipe_for, steps_for
from mnist_zoo.train import batches, train
from mnist_zoo.util import UserError


@pytest.fixture(scope="module")
def small(train_split, test_split):
    return train_split.subset(torch.arange(2048)), test_split.subset(torch.arange(500))


def _run(small, name="lenet", streams=None, **overrides):
    recipe = recipe_for(name, epochs=3, batch_size=256, **overrides)  # 24 steps on 2,048 images
    return train(name, recipe, *small, seed=0, threads=2, streams=streams)


@pytest.mark.parametrize("streams", [1, 2])
def test_bf16_trains_and_says_so(small, streams):
    # In slices (streams 2) each pool thread enters autocast itself: a block on the main thread alone would
    # leave the slices in float32, and then bf16 and fp32 give the same weights.
    fp32, bf16 = _run(small, streams=streams), _run(small, streams=streams, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.precision_reason.startswith("bf16: asked for")
    losses = [h["train_loss"] for h in bf16.history]
    assert bf16.final.accuracy > 0.6 and losses[-1] < losses[0] - 0.5, "bf16 did not learn"
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters()), "the weights must stay float32"
    w32, w16 = fp32.model.state_dict(), bf16.model.state_dict()
    assert any(not torch.equal(w32[k], w16[k]) for k in w32), "bf16 ran as fp32"


def test_an_enclosing_autocast_is_refused(small):
    # Around the whole loop, autocast would keep its bfloat16 copies of the first step's weights: no learning.
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(UserError, match="inside torch.autocast"):
        _run(small)
    assert _run(small).final.accuracy > 0.6  # and outside it, the same call trains


def test_auto_without_bf16_units_chooses_fp32_and_says_why(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma3"})
    assert cpu.matrix_units("bf16") == []
    chosen = precision.choose("auto", "lenet", "cpu")
    assert chosen.precision == "fp32" and "no native bf16 units" in chosen.reason
    asked = precision.choose("bf16", "lenet", "cpu")  # still runs, and the reason warns
    assert asked.precision == "bf16" and "slower than fp32" in asked.reason


def test_auto_with_units_needs_the_model_on_the_allow_list(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(precision, "BF16_ACCURATE", frozenset({"lenet"}))
    assert precision.choose("auto", "lenet", "cpu") == precision.Chosen(
        "bf16", "auto: bf16, the CPU reports avx512_bf16"
    )
    mlp = precision.choose("auto", "mlp", "cpu")
    assert mlp.precision == "fp32" and "not shown as accurate" in mlp.reason


def test_fractional_epochs_take_their_share_of_the_steps(small):
    split = small[0]  # 2,048 images: 8 steps of 256 an epoch
    recipe = recipe_for("lenet", epochs=1, batch_size=256)
    r = replace(recipe, epochs=1.25)
    assert steps_for(len(split), r) == 10
    assert len(list(batches(split, r, seed=0, device=torch.device("cpu")))) == 10
    result = train("lenet", r, *small, seed=0, threads=1)
    assert [h["step"] for h in result.history] == [8, 10] and result.history[-1]["epoch"] == 1.25


def test_fast_recipe_is_adam_and_only_lenet_has_one(small):
    r = recipe_for("lenet", "fast")
    assert (r.optimizer, r.beta1, r.beta2, r.epochs, r.weight_decay) == ("adam", 0.7, 0.9, 1.25, 0.0)
    result = train("lenet", recipe_for("lenet", "fast", epochs=1), *small, seed=0, threads=1)
    assert result.final.accuracy > 0.5
    with pytest.raises(UserError, match="mlp has no fast recipe"):
        recipe_for("mlp", "fast")
    with pytest.raises(UserError, match="--beta2 must be at least 0 and below 1"):
        recipe_for("lenet", "fast", beta2=1.5)


def test_train_records_precision_and_refuses_a_fast_recipe_it_lacks(train_split, tmp_path, capsys):
    args = ["train", "lenet", "--epochs", "1", "--batch-size", "4096", "--lr", "0.05", "--no-progress"]
    assert main([*args, "--precision", "auto", "--json", "--threads", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["precision"] in ("fp32", "bf16") and record["precision_reason"].startswith("auto: ")
    assert record["recipe_details"]["precision"] == "auto"
    assert main(["train", "mlp", "--recipe", "fast"]) == 1
    err = capsys.readouterr().err.strip()
    assert "mlp has no fast recipe" in err and len(err.splitlines()) == 1


def test_bench_precision_option_parses():
    pytest.importorskip("pytest_benchmark")
    from bench.conftest import parse_precisions

    assert parse_precisions(None) == ("fp32",)
    assert parse_precisions("fp32,bf16") == ("fp32", "bf16")
    with pytest.raises(pytest.UsageError, match="--bench-precision"):
        parse_precisions("fp32,int4")


@pytest.mark.parametrize("streams", [1, 2])
def test_fp16_with_a_gradient_scaler_trains(small, monkeypatch, streams):
    # What a GPU without bf16 gets; run here on the CPU, whose autocast and GradScaler take float16 too. Slices
    # must scale their loss like one stream does, or the scaler's unscaling would shrink their gradients.
    from mnist_zoo import train as train_module

    monkeypatch.setattr(train_module, "choose", lambda *a: precision.Chosen("fp16", "test"))
    fp16 = _run(small, streams=streams)
    assert fp16.precision == "fp16" and fp16.final.accuracy > 0.6


def test_lenet_is_set_against_the_peer_at_its_own_precision():
    pytest.importorskip("pytest_benchmark")
    from bench import results

    def row(kind, precision, **fields):
        return {"format": results.FORMAT, "kind": kind, "device": "cpu", "precision": precision, **fields}

    rows = [
        row("time-to-accuracy", "fp32", model="lenet", seconds_to_target=8.0),
        row("time-to-accuracy", "bf16", model="lenet", seconds_to_target=6.0),
        row("peer", "fp32", model="peer", train_seconds=10.0),
        row("peer", "bf16", model="peer", train_seconds=5.0),
    ]
    assert [r.get("vs_peer") for r in results.derive(rows)[:2]] == [0.8, 1.2]


def _accuracy_row(runtime: str, agreement: float) -> dict:
    from bench import results
    from mnist_zoo.targets import BENCH_AGREEMENT_FLOOR, accuracy_floor
    from mnist_zoo.targets import precision as runtime_precision

    fields = {"model": "lenet", "runtime": runtime, "threads": 2, "accuracy": 0.99, "agreement": agreement}
    fields.update(floor=accuracy_floor("lenet", runtime), max_abs_logit_diff=0.3)
    fields["agreement_floor"] = BENCH_AGREEMENT_FLOOR[runtime_precision(runtime)]
    fullname = f"bench/test_accuracy.py::test_accuracy[lenet-{runtime}]"
    return {"format": results.FORMAT, "kind": "accuracy", "device": "cpu", "fullname": fullname, **fields}


def test_bf16_accuracy_rows_have_their_own_floor_check_and_table():
    pytest.importorskip("pytest_benchmark")
    from bench import check, report
    from mnist_zoo.targets import BENCH_AGREEMENT_FLOOR
    from mnist_zoo.targets import precision as runtime_precision

    names = ("eager", "ort-int8", "eager-bf16", "openvino-bf16")
    assert [runtime_precision(n) for n in names] == ["fp32", "int8", "bf16", "bf16"]
    floor = BENCH_AGREEMENT_FLOOR["bf16"]
    rows = [_accuracy_row("eager", 1.0), _accuracy_row("eager-bf16", floor)]
    rows.append(_accuracy_row("openvino-bf16", floor - 0.001))
    checks = {c.name: c.ok for c in check.compare({}, check.metrics(rows))}
    assert checks["agreement/lenet/eager-bf16"] and not checks["agreement/lenet/openvino-bf16"]
    assert "logits/lenet/eager-bf16" not in checks  # bf16 logits are ~0.1 apart: no fp32 tolerance for them
    fp32 = report.accuracy_table(rows)
    assert [c.header for c in fp32.columns] == ["model", "floor", "eager", "agree min", "Δ logits"]
    out = io.StringIO()
    report.render(
        {"machine_info": {"mnist_zoo": {}}, "benchmarks": [{"extra_info": r} for r in rows]}, out, 100
    )
    bf16 = out.getvalue().split("Test accuracy in bf16")[1]
    assert "PyTorch eager bf16" in bf16 and "OV bf16" in bf16 and "…" not in out.getvalue()


def test_bf16_runtimes_agree_with_fp32_eager_or_say_why_not(small_trained, test_split, tmp_path):
    # The benchmark's bf16 rows on a trained lenet: the same digits as fp32 eager on the test set, within the
    # floor, from logits that are not fp32's; OpenVINO's is a skip with the reason where its bf16 hint falls back.
    from bench.artifacts import Exports, Unavailable
    from bench.runtimes import build
    from mnist_zoo.data import normalize
    from mnist_zoo.targets import BENCH_AGREEMENT_FLOOR

    model, x, on = small_trained("lenet")[0].cpu().eval(), normalize(test_split.images), torch.device("cpu")
    exports = Exports(tmp_path, None)
    reference = build("eager", model, on, 2, exports, "lenet").logits(x)
    for runtime in ("eager", "openvino"):
        try:
            p = build(runtime, model, on, 2, exports, "lenet", batch=1000, precision="bf16")
        except Unavailable as e:
            assert runtime == "openvino" and ("not installed" in str(e) or "not bf16" in str(e)), e
            continue
        logits = p.logits(x)
        agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        assert agreement >= BENCH_AGREEMENT_FLOOR["bf16"], f"{runtime} bf16: {agreement:.2%}"
        assert (logits - reference).abs().max() > 1e-3, f"{runtime} bf16 computed in fp32"
