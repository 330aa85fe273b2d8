"""Training, evaluation and checkpoints: recipes, determinism, damaged files, and one real bounded run."""

from __future__ import annotations

import pytest
import torch

from mnist_zoo.checkpoint import load_checkpoint, save_checkpoint
from mnist_zoo.models import get_model
from mnist_zoo.train import (
    TUTORIAL,
    SliceStep,
    confusion_matrix,
    default_streams,
    evaluate,
    lr_at,
    recipe_for,
    train,
)
from mnist_zoo.util import UserError


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
    with pytest.raises(UserError, match="--lr must be positive"):
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
    with SliceStep(model, 1) as plain:
        loss, correct = plain(x, y)
    whole = [p.grad.clone() for p in model.parameters()]
    with SliceStep(model, 3) as sliced:
        sliced_loss, sliced_correct = sliced(x, y)
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
    with pytest.raises(UserError, match="streams must be at least 1"):
        train("mlp", recipe, train_split.subset(torch.arange(256)), streams=-1)


def test_evaluate_counts_and_confusion(test_split):
    torch.manual_seed(0)
    model = get_model("mlp")
    ev = evaluate(model, test_split)
    confusion = confusion_matrix(ev.predictions, test_split.labels)
    assert confusion.sum().item() == 10_000
    assert confusion.diag().sum().item() / 10_000 == pytest.approx(ev.accuracy)
    assert confusion.sum(1).tolist() == torch.bincount(test_split.labels).tolist()


def test_stop_at_accuracy_stops_early(train_split, test_split):
    r = train(
        "mlp", recipe_for("mlp", epochs=3), train_split, test_split, evals_per_epoch=4, stop_at_accuracy=0.85
    )
    assert r.history[-1]["eval_accuracy"] >= 0.85
    assert all(h["eval_accuracy"] < 0.85 for h in r.history[:-1])
    assert r.history[-1]["step"] < 3 * 469


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


def test_damaged_checkpoints_are_clear_errors(small_trained, tmp_path):
    _, meta, path = small_trained("mlp")
    good = path.read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "garbage.pt": b"not a checkpoint at all",
        "empty.pt": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(UserError, match="not a readable checkpoint"):
            load_checkpoint(tmp_path / name)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an mnist-zoo checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    # the metadata says lenet but the weights are an mlp's
    save_checkpoint(get_model("mlp"), {**meta, "model": "lenet"}, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="weights do not fit model 'lenet'"):
        load_checkpoint(tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_loading_refuses_arbitrary_pickles(tmp_path):
    """weights_only=True: a pickle that would run code is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "mnist-zoo/checkpoint/1", "meta": {"model": "mlp"}, "state_dict": _Evil()}, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


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
