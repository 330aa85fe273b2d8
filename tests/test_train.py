"""Training, evaluation and checkpoints: recipes, determinism, damaged files, and one real bounded run."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
import warnings

import pytest
import torch

from mnist_zoo.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from mnist_zoo.cli import main
from mnist_zoo.models import get_model
from mnist_zoo.progress import Progress
from mnist_zoo.recipes import TUTORIAL, lr_at, recipe_for
from mnist_zoo.train import SliceGradient, confusion_matrix, default_streams, evaluate, train
from mnist_zoo.util import STALE_TMP_S, UserError, atomic_write_bytes


def test_tutorial_recipe_is_the_tutorials_settings():
    r = recipe_for("lenet", "tutorial")
    assert (r.optimizer, r.lr, r.batch_size, r.epochs, r.momentum, r.schedule) == (
        "sgd",
        0.1,
        32,
        5,
        0.0,
        "constant",
    )
    assert r == TUTORIAL


def test_recipe_overrides_and_errors():
    assert recipe_for("dnn", epochs=3, batch_size=None).epochs == 3
    with pytest.raises(UserError, match="unknown recipe"):
        recipe_for("dnn", "fastest")
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        recipe_for("dnn", epochs=0)
    with pytest.raises(UserError, match="--lr must be a finite positive number"):
        recipe_for("dnn", lr=-1.0)
    with pytest.raises(UserError, match="unknown model"):
        recipe_for("vgg")


def test_onecycle_schedule_warms_up_and_decays_to_zero():
    r = recipe_for("lenet")
    lrs = [lr_at(r, s, 100) for s in range(100)]
    warm = round(r.warmup * 100)
    assert lrs[0] < lrs[5] and max(lrs) == pytest.approx(r.lr) == lrs[warm - 1]
    assert lrs[-1] == pytest.approx(r.lr / (100 - warm)) and lrs == sorted(lrs[:warm]) + lrs[warm:]


def _quick(name, split, test, seed):
    subset, test_subset = split.subset(torch.arange(3000)), test.subset(torch.arange(1000))
    return train(name, recipe_for(name, epochs=1), subset, test_subset, seed=seed)


@pytest.mark.parametrize("name", ["dnn", "lenet"])
def test_same_seed_same_result(name, train_split, test_split):
    a, b = _quick(name, train_split, test_split, 1), _quick(name, train_split, test_split, 1)
    c = _quick(name, train_split, test_split, 2)
    assert a.final.accuracy == b.final.accuracy
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    first = "1.weight" if name == "dnn" else "0.weight"
    assert not torch.equal(a.model.state_dict()[first], c.model.state_dict()[first])


def test_default_streams_one_slice_per_thread_while_slices_keep_128_images():
    assert default_streams("cpu", 256, threads=2) == 2
    assert default_streams("cpu", 128, threads=2) == 1  # slices of 64: not worth a second stream
    assert default_streams("cpu", 256, threads=1) == 1
    assert default_streams("cpu", 1024, threads=4) == 4
    assert default_streams("cuda", 256, threads=2) == 1


def test_batch_slices_add_up_to_the_whole_batch_gradient():
    torch.manual_seed(0)
    model = get_model("lenet")
    x, y = torch.randn(300, 1, 28, 28), torch.randint(0, 10, (300,))
    with SliceGradient(model, 1) as plain:
        loss, correct, images = plain(x, y)
    whole = [p.grad.clone() for p in model.parameters()]
    with SliceGradient(model, 3) as sliced:
        sliced_loss, sliced_correct, sliced_images = sliced(x, y)
    assert images == sliced_images == 300
    assert sliced_correct.item() == correct.item()
    torch.testing.assert_close(sliced_loss, loss)
    for p, g in zip(model.parameters(), whole, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_sliced_training_is_deterministic_and_restores_threads(train_split, test_split):
    threads = torch.get_num_threads()
    recipe = recipe_for("lenet", epochs=1, batch_size=256)
    subset, test_subset = train_split.subset(torch.arange(2560)), test_split.subset(torch.arange(500))
    runs = [train("lenet", recipe, subset, test_subset, seed=3, streams=2) for _ in range(2)]
    assert torch.get_num_threads() == threads
    assert [r.streams for r in runs] == [2, 2]
    for (k, va), vb in zip(
        runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    with pytest.raises(UserError, match="cannot train in -1 streams: it must be at least 1"):
        train("mlp", recipe, train_split.subset(torch.arange(256)), streams=-1)
    # Slices would race on BatchNorm's running statistics: cnn trains in one stream, and refuses more.
    assert train("cnn", recipe, subset.subset(torch.arange(256))).streams == 1
    with pytest.raises(UserError, match="a model with BatchNorm trains in 1"):
        train("cnn", recipe, subset.subset(torch.arange(256)), streams=2)


def test_progress_bar_counts_tracked_and_finished_runs():
    info = {"epoch": 0, "step": 25, "total_steps": 100, "images": 8, "images_seen": 800, "elapsed": 1.0}
    with Progress("train", 300) as bar:
        on_step = bar.tracker("seed0", 100)  # trained here: filled step by step
        on_step({**info, "loss": torch.tensor(4.0), "correct": torch.tensor(6)})
        bar.skip("seed1", 100)  # reused: leaves the total
        bar.advance("seed2", 100)  # finished elsewhere (Ray): joins at once
        assert bar.done == 200
    with Progress("train", 100, enabled=False) as quiet:
        assert quiet.tracker("seed0", 100) is None


def test_evaluate_counts_and_confusion(test_split):
    torch.manual_seed(0)
    model = get_model("mlp")
    ev = evaluate(model, test_split)
    confusion = confusion_matrix(ev.predictions, test_split.labels)
    assert confusion.sum().item() == 10_000
    assert confusion.diag().sum().item() / 10_000 == pytest.approx(ev.accuracy)
    assert confusion.sum(1).tolist() == torch.bincount(test_split.labels).tolist()


def test_stop_at_accuracy_stops_with_the_epoch_that_reached_it(train_split, test_split):
    r = train("mlp", recipe_for("mlp", epochs=3), train_split, test_split, stop_at_accuracy=0.85)
    assert r.history[-1]["eval_accuracy"] >= 0.85
    assert r.history[-1]["step"] == 469  # mlp is above 85% within its first epoch of 469 steps


def test_time_to_accuracy_is_found_between_evaluations(train_split, test_split):
    r = train("mlp", recipe_for("mlp", epochs=2), train_split, test_split, timed=(0.9,))
    crossing = next(h for h in r.history if h["eval_accuracy"] >= 0.9)
    before = r.history[: r.history.index(crossing)]
    # An evaluation per epoch alone would put the crossing at epoch 1.0: the timing points place it inside it.
    assert crossing["epoch"] < 1.0 and all(h["eval_accuracy"] < 0.9 for h in before)
    assert r.seconds_to(0.9) == crossing["train_seconds"] < r.history[len(before) + 1]["train_seconds"]
    assert [h["epoch"] for h in r.history][-2:] == [1.0, 2.0]  # the epochs' own evaluations are all there
    assert r.seconds_to(0.999) is None


def test_checkpoint_round_trip(small_trained, tmp_path):
    model, meta, path = small_trained("lenet")
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the trained lenet runs channels_last (another conv kernel), so outputs match to float rounding, not bits
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="holds a 'lenet' model, not 'mlp'"):
        load_checkpoint(path, expect_model="mlp")


def test_damaged_checkpoints_say_what_is_wrong(small_trained, tmp_path):
    """Each way a file can be wrong gets words a user can act on, not torch's internals."""
    _, meta, path = small_trained("mlp")
    good = path.read_bytes()
    torch.save({"a": torch.ones(2)}, tmp_path / "old-format.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"format": "x"}, protocol=4))
    cases = {
        "truncated.pt": (good[: len(good) // 2], "truncated or damaged"),
        "cut-at-the-end.pt": (good[:-1], "truncated or damaged"),
        "garbage.pt": (b"not a checkpoint at all", "not a checkpoint: not the zip archive"),
        "random.pt": (os.urandom(4096).replace(b"PK", b"pk"), "not a checkpoint: not the zip archive"),
        "empty.pt": (b"", "empty file"),
        "old-format.pt": (None, "a bare pickle"),
        "plain.pt": (None, "a bare pickle"),
    }
    for name, (blob, message) in cases.items():
        if blob is not None:
            (tmp_path / name).write_bytes(blob)
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error"
            )  # torch's UserWarning about pickle protocols must not reach the user
            with pytest.raises(UserError, match=message):
                load_checkpoint(tmp_path / name)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an mnist-zoo checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    # the metadata says lenet but the weights are an mlp's: the message says how they differ
    save_checkpoint(get_model("mlp"), {**meta, "model": "lenet"}, tmp_path / "mismatch.pt")
    with pytest.raises(
        UserError,
        match=r"do not fit a lenet model \(missing 0\.weight, .* \(\+5 more\); unexpected 1\.weight, 1\.bias\)",
    ):
        load_checkpoint(tmp_path / "mismatch.pt")
    state = {k: v.clone() for k, v in get_model("mlp").state_dict().items()}
    state["1.weight"] = torch.zeros(10, 100)
    torch.save({"format": "mnist-zoo/checkpoint/1", "meta": meta, "state_dict": state}, tmp_path / "shape.pt")
    with pytest.raises(UserError, match=r"\(1\.weight is \[10, 100\], not \[10, 784\]\)"):
        load_checkpoint(tmp_path / "shape.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")


def test_non_finite_weights_are_refused(small_trained, tmp_path):
    model, meta, _ = small_trained("mlp")
    broken = get_model("mlp")
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken[1].weight[3, 5] = float("nan")
    save_checkpoint(broken, meta, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"non-finite weights \(NaN or infinity in 1\.weight\).*diverged"):
        load_checkpoint(tmp_path / "nan.pt")


def _saved_mlp(small_trained) -> bytes:
    """The small trained mlp as the zoo's mlp.pt (the isolated checkpoint directory of the test)."""
    _, meta, path = small_trained("mlp")
    target = checkpoint_path("mlp")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    return target.read_bytes()


def test_diverged_training_stops_early_and_keeps_the_checkpoint(small_trained, capsys):
    before = _saved_mlp(small_trained)
    assert main(["train", "mlp", "--lr", "1e35", "--epochs", "1", "--threads", "1", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: mlp diverged at step ") and err.count("\n") == 1, err
    step = int(re.search(r"at step ([\d,]+) of ([\d,]+)", err).group(1))
    assert step <= 10, err  # stopped at the first check, not after 4,690 steps of NaN
    assert (
        "learning rate 1e+35 is too high (train --lr sets a lower one)" in err and "nothing was saved" in err
    )
    assert checkpoint_path("mlp").read_bytes() == before
    assert main(["train", "mlp", "--lr", "inf"]) == 1
    assert "--lr must be a finite positive number, got inf" in capsys.readouterr().err


def test_a_worse_run_keeps_the_better_checkpoint(small_trained, capsys):
    before = _saved_mlp(small_trained)
    previous = load_checkpoint("mlp")[1]["test_accuracy"]
    worse = [
        "train",
        "mlp",
        "--epochs",
        "1",
        "--lr",
        "1e-6",
        "--batch-size",
        "1000",
        "--threads",
        "1",
        "--json",
    ]
    assert main(worse) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["saved"] is False and record["previous_accuracy"] == pytest.approx(previous)
    assert record["test_accuracy"] < previous and checkpoint_path("mlp").read_bytes() == before
    assert f"{previous:.2%}" in captured.err and f"{record['test_accuracy']:.2%}" in captured.err
    assert "--replace" in captured.err
    assert main([*worse, "--replace"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["saved"] is True and load_checkpoint("mlp")[1]["test_accuracy"] == record["test_accuracy"]


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_stale_temporary_files_of_killed_writers_are_cleaned(tmp_path):
    """Only atomic_write's own leftovers (.NAME.PID.XXXXXXXX.tmp), only when old and their writer is gone."""
    old = time.time() - STALE_TMP_S - 60
    files = {
        f".mlp.pt.{_dead_pid()}.abcd1234.tmp": (old, False),  # stale: old, its writer is dead
        ".mlp.pt.k2j4h5g6.tmp": (old, False),  # stale, named before writers put their pid in the name
        f".dnn.pt.{_dead_pid()}.abcd1234.tmp": (old, False),  # another name of ours in the same directory
        f".mlp.pt.{_dead_pid()}.zzzz9999.tmp": (time.time(), True),  # recent: may still be written
        f".mlp.pt.{os.getpid()}.abcd1234.tmp": (old, True),  # its writer is alive
        ".notes.tmp": (old, True),  # not ours
        "mlp.pt.tmp": (old, True),  # not ours
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    atomic_write_bytes(tmp_path / "mlp.pt", b"new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"mlp.pt"} | {name for name, (_, kept) in files.items() if kept}


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_loading_refuses_arbitrary_pickles(tmp_path, capfd):
    """weights_only=True: a pickle that would run code is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "mnist-zoo/checkpoint/1", "meta": {"model": "mlp"}, "state_dict": _Evil()}, path)
    with pytest.raises(UserError, match="refused, as unpickling them could run code"):
        load_checkpoint(path)
    assert "code ran" not in capfd.readouterr().out


def test_save_is_atomic_and_leaves_no_temporary_files(small_trained, tmp_path):
    model, meta, _ = small_trained("mlp")
    target = tmp_path / "ckpt" / "mlp.pt"
    save_checkpoint(model, meta, target)
    save_checkpoint(model, meta, target)  # replacing works
    assert [p.name for p in target.parent.iterdir()] == ["mlp.pt"]


@pytest.mark.slow
def test_lenet_really_learns(train_split, test_split):
    """The bounded real training run: 2 epochs of the default lenet recipe on the full training set."""
    r = train("lenet", recipe_for("lenet", epochs=2), train_split, test_split, seed=0)
    assert r.final.accuracy >= 0.985, r.history
