"""Training recipes: the settings of a run, the zoo's defaults, their validation, and recipe files.

    python -m mnist_zoo train lenet --recipe tutorial        # the tutorial's settings, on logits
    python -m mnist_zoo train lenet --recipe fast            # lenet's short race to 99% (1.25 epochs of Adam)
    python -m mnist_zoo train lenet --precision bf16         # bfloat16 autocast; weights stay float32
    python -m mnist_zoo train dnn --recipe-file best.json    # a recipe file, as `sweep` writes its winner
    >>> from mnist_zoo.recipes import recipe_for, lr_at
    >>> recipe_for("lenet", epochs=2)                        # the default recipe, one setting overridden
    >>> lr_at(recipe_for("lenet"), step=0, total=940)        # the learning rate of a step

Every recipe is checked by one function, `check`, wherever it comes from (the defaults with command-line
overrides, a sweep's grid, a recipe file), so a setting that cannot train is one line before any work. How the
defaults were chosen, and on which data: docs/recipes.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mnist_zoo.models import model_info
from mnist_zoo.schema import read_json, schema_of
from mnist_zoo.util import UserError, write_json

RECIPE_SCHEMA = "mnist-zoo/recipe/1"
RECIPES = ("default", "tutorial", "fast")
OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("constant", "onecycle")
# fp32: float32 throughout. bf16: the forward pass and the loss under autocast in bfloat16 (on a GPU without
# bfloat16, float16 with a gradient scaler); weights, gradients and the optimizer stay float32. auto: bf16 where
# it is native to the device and shown as accurate for the model (train.choose_precision), else fp32.
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: float  # a fraction runs the first part of one more epoch: round(epochs * steps per epoch) steps
    batch_size: int
    lr: float  # peak learning rate
    optimizer: str = "sgd"  # sgd | nesterov (SGD with Nesterov momentum) | adam
    momentum: float = 0.0
    beta1: float = 0.9  # adam's betas: the decay of its running mean of gradients, and of their squares
    beta2: float = 0.999
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle (linear warm-up then linear decay to zero)
    warmup: float = 0.0  # fraction of steps spent warming up (onecycle)
    # Rotate, shift and scale every training image at random (augment.py), except in the last plain_epochs:
    # the test set's digits are upright and centred.
    augment: bool = False
    plain_epochs: int = 0
    precision: str = "fp32"  # one of PRECISIONS


# The tutorial's settings (SGD lr 0.1, batch 32, 5 epochs), but trained on logits.
TUTORIAL = Recipe("tutorial", epochs=5, batch_size=32, lr=0.1)
# The default recipe: the fastest route found to each model's accuracy target on a 2-core CPU. Large-ish batches
# keep the CPU's matrix kernels busy; Nesterov momentum with a short warm-up and a linear decay to zero converges
# in a few epochs. lenet's batch of 256 is two slices of 128 trained at once on 2 cores (train.default_streams),
# and at that batch a 10% warm-up was unstable where 20% is not.
_ONECYCLE = dict(schedule="onecycle", warmup=0.1)
_NESTEROV = dict(optimizer="nesterov", momentum=0.9, schedule="onecycle")
DEFAULTS = {
    "mlp": Recipe("default", epochs=10, batch_size=128, lr=0.05, warmup=0.1, **_NESTEROV),
    "dnn": Recipe("default", epochs=10, batch_size=128, lr=0.1, warmup=0.1, weight_decay=5e-4, **_NESTEROV),
    "lenet": Recipe("default", epochs=4, batch_size=256, lr=0.15, warmup=0.2, weight_decay=5e-4, **_NESTEROV),
    # Augmented digits need more epochs to pay off than plain ones; the last epoch is plain.
    "cnn": Recipe(
        "default",
        epochs=16,
        batch_size=256,
        lr=0.1,
        warmup=0.15,
        weight_decay=5e-4,
        augment=True,
        plain_epochs=1,
        **_NESTEROV,
    ),
}
# A plugin model's default recipe when it brings none (docs/plugins.md): lenet's, for 5 epochs at batch 128
# (more steps than lenet's 4 epochs at 256), which suits a small convolutional network; --recipe-file and the
# command-line overrides replace any of it.
GENERIC = Recipe("default", epochs=5, batch_size=128, lr=0.1, warmup=0.2, weight_decay=5e-4, **_NESTEROV)
# Recipes for one purpose, for the models that have one. fast: lenet to 99% test accuracy in the least time,
# for the race against the peer recipe (bench/peer.py). Chosen on a held-out split of the training set, never
# the test set (docs/recipes.md): Adam's short memory (betas 0.7, 0.9) follows a one-cycle schedule that ends
# after a quarter of a second epoch.
FAST = {
    "lenet": Recipe(
        "fast", epochs=1.25, batch_size=256, lr=0.012, optimizer="adam", beta1=0.7, beta2=0.9, **_ONECYCLE
    ),
}

# What every setting must be: (test, the rule in words).
RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": (lambda v: 1 <= v < math.inf, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: 0 < v < math.inf, "a finite positive number"),
    "momentum": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
    "warmup": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "beta1": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "beta2": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "plain_epochs": (lambda v: v >= 0, "at least 0"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
}


def check(recipe: Recipe, option: Callable[[str], str] = lambda key: f"recipe setting {key}") -> Recipe:
    """The recipe, if every setting can train; else a one-line error naming the first that cannot, as
    `option(key)` calls it (e.g. --epochs for a command-line override)."""
    for key, (ok, rule) in RULES.items():
        value = getattr(recipe, key)
        try:
            good = ok(value)
        except TypeError:  # a recipe file's string where a number belongs
            good = False
        if not good:
            raise UserError(f"{option(key)} must be {rule}, got {value!r}")
    return recipe


def recipe_for(model: str, recipe: str = "default", **overrides) -> Recipe:
    """The named recipe for a model, with any non-None overrides (epochs, batch_size, lr, precision) applied and
    checked."""
    info = model_info(model)  # validates the name (or resolves a module:callable spec)
    model = info.name
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if recipe == "fast" and model not in FAST:
        raise UserError(f"{model} has no fast recipe; {', '.join(FAST)} has one (docs/recipes.md)")
    given = {k: v for k, v in overrides.items() if v is not None}
    default = DEFAULTS.get(model) or replace(info.recipe or GENERIC, name="default")
    base = {"default": default, "tutorial": TUTORIAL}.get(recipe) or FAST[model]
    return check(replace(base, **given), lambda key: f"--{key.replace('_', '-')}")


def lr_at(r: Recipe, step: int, total: int) -> float:
    """The learning rate of step `step` (from 0) of a run of `total` steps."""
    if r.schedule == "constant":
        return r.lr
    warm = max(1, round(r.warmup * total))
    if step < warm:
        return r.lr * (step + 1) / warm
    return r.lr * max(0.0, (total - step) / max(1, total - warm))


def steps_for(train_size: int, recipe: Recipe) -> int:
    """Optimizer steps of a run of `recipe` on `train_size` images (the last batch of an epoch may be short)."""
    return round(math.ceil(train_size / recipe.batch_size) * recipe.epochs)


def write_recipe_file(path: Path, model: str, recipe: Recipe, provenance: dict) -> Path:
    """The recipe as JSON that `train --recipe-file` reads, with where it came from (`provenance`)."""
    return write_json(path, {"schema": RECIPE_SCHEMA, "model": model, "recipe": asdict(recipe), **provenance})


RECIPE_FILE_BYTES = 1 << 20  # 1 MiB: a recipe file, provenance included, is about 1 KB


def recipe_file_schema() -> dict:
    """The JSON Schema of a recipe file; the recipe's part is derived from Recipe's fields, so it cannot drift."""
    recipe = schema_of(Recipe)
    model = {"type": "string"}
    properties = {"schema": {"const": RECIPE_SCHEMA}, "model": model, "recipe": recipe}
    return {"type": "object", "properties": properties, "required": list(properties)}


def read_recipe_file(path: str | Path, model: str) -> Recipe:
    """The recipe in a file written by sweep (or by hand, the same JSON); one line on any problem (size, nesting,
    a field's type, a setting that cannot train), always before any training."""
    doc = read_json(path, recipe_file_schema(), what=f"--recipe-file {path}", max_bytes=RECIPE_FILE_BYTES)
    if doc["model"] != model:
        raise UserError(f"--recipe-file {path} is a recipe for {doc['model']!r}, not {model!r}")
    return check(Recipe(**doc["recipe"]), lambda key: f"--recipe-file {path}: {key}")
