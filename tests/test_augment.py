"""The batched warps of training augmentation and the robustness test."""

from __future__ import annotations

import torch

from mnist_zoo.augment import affine, perturbations, random_affine, robustness


def _digits(test_split, n: int = 64) -> torch.Tensor:
    return test_split.images[:n].float()


def test_affine_identity_and_shift_are_exact(test_split):
    x = _digits(test_split)
    n = len(x)
    same = affine(x, torch.zeros(n), torch.zeros(n, 2), torch.ones(n))
    torch.testing.assert_close(same, x, atol=1e-3, rtol=0)
    # +2 px on x moves the ink right; what leaves the image is background (MNIST's digits sit in the centre)
    right = affine(x, torch.zeros(n), torch.tensor([[2.0, 0.0]]).expand(n, 2), torch.ones(n))
    torch.testing.assert_close(right[..., 2:], x[..., :-2], atol=1e-3, rtol=0)
    down = affine(x, torch.zeros(n), torch.tensor([[0.0, 2.0]]).expand(n, 2), torch.ones(n))
    torch.testing.assert_close(down[:, 2:], x[:, :-2], atol=1e-3, rtol=0)


def test_random_affine_follows_its_generator(test_split):
    x = _digits(test_split)
    a = random_affine(x, torch.Generator().manual_seed(1))
    b = random_affine(x, torch.Generator().manual_seed(1))
    c = random_affine(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255.001  # bilinear: convex mixes of pixels
    # ink is moved, not created: a scale of at most 1.1 changes the total ink by at most ~21%
    ratio = a.sum((1, 2)) / x.sum((1, 2))
    assert ratio.min() > 0.7 and ratio.max() < 1.3


def test_perturbations_are_fixed_and_change_the_images(test_split):
    x = test_split.images[:64]
    first, again = perturbations(x), perturbations(x)
    assert list(first) == ["rotate ±15°", "shift ±2 px", "scale ±15%", "thicker pen", "thinner pen"]
    for name, images in first.items():
        assert torch.equal(images, again[name]), name
        assert images.shape == x.shape and not torch.equal(images, x.float()), name
    assert first["thicker pen"].sum() > x.float().sum() > first["thinner pen"].sum()


def test_robustness_scores_each_perturbation(small_trained, test_split):
    model, _, _ = small_trained("lenet")
    split = test_split.subset(torch.arange(2000))
    scores = robustness(model, split.images, split.labels)
    assert set(scores) == {*perturbations(split.images[:1]), "mean"}
    assert all(0 <= a <= 1 for a in scores.values())
    assert abs(scores["mean"] - sum(list(scores.values())[:-1]) / 5) < 1e-12
