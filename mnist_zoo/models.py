"""The zoo: the three architectures of the classic tutorial, a small modern CNN, and a registry in torchvision's
style.

    python -m mnist_zoo list                      # the zoo as a table
    >>> from mnist_zoo.models import get_model, list_models
    >>> list_models()
    ['mlp', 'dnn', 'lenet', 'cnn']
    >>> get_model("lenet")(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Every model takes normalised images [N, 1, 28, 28] (see data.normalize) and returns logits [N, 10]: the softmax
belongs to prediction time, and CrossEntropyLoss applies its own log-softmax (the tutorial's Softmax layer before
CrossEntropyLoss is a double softmax that slows and weakens training).

`cnn` is not the tutorial's: it is the zoo's answer to "what would I deploy today", BatchNorm after every
convolution and trained on randomly rotated, shifted and scaled digits (augment.py), which is what makes it
the model to put behind a drawing pad. Exporters fold its BatchNorms into the convolutions (export/common.py).

Plugins (docs/plugins.md): a model of your own joins the zoo wherever a model name is accepted, found once, here,
by get_model, model_info and list_models: a builder declared with `@model_plugin(...)` and named by an entry point
of the group `mnist_zoo.models` in an installed package (loaded on the first listing, not at import), or given as
a spec `module:callable` on the Python path. A broken plugin (import error, a clashing name, a model that breaks
the input contract) is one line naming it: `list` warns, and only asking for that model is an error.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from mnist_zoo.util import UserError, first_line

GROUP = "mnist_zoo.models"  # the entry-point group of model plugins
SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # module:callable
# The specs resolved in this process, passed on to its child processes (the benchmark's cold starts),
# which resolve them again: a spec on the command line works the same in every process it starts.
SPECS_ENV = "MNIST_ZOO_MODELS"
# A plugin's test-accuracy target when it declares none: lenet's (the zoo's smallest convolutional model).
GENERIC_TARGET = 0.99


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[[], nn.Module]
    description: str
    params: int
    macs: int  # multiply-adds per image, forward pass
    # Train in channels-last memory format on a CPU: oneDNN's convolutions prefer it (docs/benchmarks.md).
    channels_last: bool = False
    recipe: Any = None  # a plugin's default recipes.Recipe; None: the zoo's own, or recipes.GENERIC
    target: float | None = None  # a plugin's test-accuracy target (targets.TARGET_ACCURACY for the zoo's)
    source: str = "mnist_zoo.models"  # where it came from: the zoo, an entry point, a module:callable spec


@dataclass(frozen=True)
class Declared:
    """What a plugin's builder declares (model_plugin): the zoo's ModelInfo less what the registry measures."""

    name: str
    description: str
    channels_last: bool = False
    recipe: Any = None
    target: float | None = None


_REGISTRY: dict[str, ModelInfo] = {}
_BROKEN: dict[str, str] = {}  # a broken plugin (entry point name or spec) -> its one-line problem
_SPECS: dict[str, str] = {}  # a resolved module:callable spec -> the name its builder declared
_loaded = False  # entry points are loaded on first use: a broken plugin must not break `import mnist_zoo`


def count_macs(model: nn.Module) -> int:
    """Multiply-adds of one forward pass of one image, counted on the layers that do them (conv, linear)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return macs


def register_model(name: str, description: str, channels_last: bool = False) -> Callable:
    """Decorator: add a model builder to the zoo under `name`; a name already in the zoo is a ValueError (as in
    torchvision's registry), never a silent replacement."""

    def wrap(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model is already registered under the name {name!r}")
        model = builder()
        params = sum(p.numel() for p in model.parameters())
        _REGISTRY[name] = ModelInfo(name, builder, description, params, count_macs(model), channels_last)
        return builder

    return wrap


def model_plugin(
    name: str,
    description: str,
    channels_last: bool = False,
    recipe: Any = None,
    target: float | None = None,
) -> Callable:
    """Decorator for a plugin's builder: declares its name, description, memory format, and optionally its
    default recipe (a recipes.Recipe) and test-accuracy target. Registered when an entry point or a spec names it.
    """

    def wrap(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        builder.mnist_zoo_model = Declared(name, description, channels_last, recipe, target)
        return builder

    return wrap


def _describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"{str(out.dtype).removeprefix('torch.')} {list(out.shape)}"
    return type(out).__name__


def _register_plugin(builder: object, source: str) -> ModelInfo:
    """Register a plugin's declared builder, its input contract checked on this first build; a UserError naming
    the plugin if it cannot join the zoo."""
    declared = getattr(builder, "mnist_zoo_model", None)
    if not callable(builder) or not isinstance(declared, Declared):
        raise UserError(f"model plugin {source}: not a builder declared with @mnist_zoo.models.model_plugin")
    label = f"model plugin {declared.name!r} ({source})"
    known = _REGISTRY.get(declared.name)
    if known is not None:
        if known.builder is builder:  # the same builder again (a spec of an installed plugin)
            return known
        raise UserError(f"{label}: the name {declared.name!r} is taken by the model from {known.source}")
    try:
        model = builder()
        if not isinstance(model, nn.Module):
            raise UserError(f"{label}: its builder returned {type(model).__name__}, not a torch.nn.Module")
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 1, 28, 28))
        macs = count_macs(model)
    except UserError:
        raise
    except Exception as e:  # a plugin may raise anything: one line naming it, never its traceback
        raise UserError(
            f"{label}: building or running it failed: {type(e).__name__}: {first_line(e)}"
        ) from None
    if not (isinstance(out, torch.Tensor) and out.shape == (2, 10) and out.is_floating_point()):
        raise UserError(
            f"{label}: given float32 [2, 1, 28, 28] it returned {_describe(out)}, not float logits [2, 10]"
        )
    params = sum(p.numel() for p in model.parameters())
    info = ModelInfo(
        declared.name, builder, declared.description, params, macs, declared.channels_last,
        declared.recipe, declared.target if declared.target is not None else GENERIC_TARGET, source,
    )  # fmt: skip
    _REGISTRY[declared.name] = info
    return info


def _resolve_spec(spec: str) -> ModelInfo:
    """The model a module:callable spec names, imported and registered once."""
    if spec in _SPECS:
        return _REGISTRY[_SPECS[spec]]
    if spec in _BROKEN:
        raise UserError(_BROKEN[spec])
    module, _, attr = spec.partition(":")
    try:
        try:
            obj = importlib.import_module(module)
        except Exception as e:
            raise UserError(
                f"model plugin {spec}: cannot import {module}: {type(e).__name__}: {first_line(e)}"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise UserError(f"model plugin {spec}: {module} has no attribute {attr!r}")
            obj = getattr(obj, part)
        info = _register_plugin(obj, spec)
    except UserError as e:
        _BROKEN[spec] = str(e)
        raise
    _SPECS[spec] = info.name
    passed_on = os.environ.get(SPECS_ENV, "").split(",")
    if spec not in passed_on:
        os.environ[SPECS_ENV] = ",".join(s for s in [*passed_on, spec] if s)
    return info


def _load_plugins() -> None:
    """Register the installed entry points and the specs passed on by a parent process, once; a broken one is
    remembered with its problem, and the rest still load."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=GROUP):
        source = f"entry point {ep.name} = {ep.value}"
        try:
            try:
                builder = ep.load()
            except Exception as e:
                raise UserError(
                    f"model plugin {ep.name} ({ep.value}): {type(e).__name__}: {first_line(e)}"
                ) from None
            _register_plugin(builder, source)
        except UserError as e:
            _BROKEN[ep.name] = str(e)
    for spec in filter(None, os.environ.get(SPECS_ENV, "").split(",")):
        with contextlib.suppress(UserError):  # remembered in _BROKEN, and said when it is asked for
            _resolve_spec(spec)


def plugin_problems() -> list[str]:
    """One line per broken model plugin (what `list` warns about)."""
    _load_plugins()
    return list(_BROKEN.values())


def list_models() -> list[str]:
    """Model names in registration order: the zoo's (the tutorial's order, fewest multiply-adds first), then
    the plugins'."""
    _load_plugins()
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """A model's registry entry, by name or by module:callable spec (its .name is the name to use after)."""
    if SPEC.match(name):
        return _resolve_spec(name)
    if name in _REGISTRY:  # the zoo's, or a plugin already loaded (a broken one may share its name)
        return _REGISTRY[name]
    _load_plugins()
    if name in _BROKEN:
        raise UserError(_BROKEN[name])
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _REGISTRY[name]


def canonical(name: str) -> str:
    """The registry name of a model given by name or by spec (a spec's declared name)."""
    return model_info(name).name if SPEC.match(name) else name


def get_model(name: str) -> nn.Module:
    """A freshly initialised model (seed torch first for a reproducible start)."""
    return model_info(name).builder()


@register_model("mlp", "softmax regression: 784 -> 10")
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


@register_model("dnn", "one hidden layer: 784 -> 100 -> ReLU -> 10")
def dnn() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(inplace=True), nn.Linear(100, 10))


@register_model("lenet", "conv 1->10 k5, pool, conv 10->20 k5, pool, fc 320->100->10", channels_last=True)
def lenet() -> nn.Module:
    # The tutorial's conv, ReLU, max-pool with the last two swapped: the max of ReLUs is the ReLU of the max, so
    # outputs and gradients are the same to the bit (tested), but the ReLU and its backward touch a quarter of
    # the values (docs/benchmarks.md has the speed-up). The parameters keep their names (0, 3, 7, 9).
    # In-place ReLUs: a layer's output is not needed for its own backward pass, so overwriting it saves an
    # allocation per step.
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5),  # 28 -> 24
        nn.MaxPool2d(2),  # 24 -> 12
        nn.ReLU(inplace=True),
        nn.Conv2d(10, 20, kernel_size=5),  # 12 -> 8
        nn.MaxPool2d(2),  # 8 -> 4, so 20 * 4 * 4 = 320 features
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(320, 100),
        nn.ReLU(inplace=True),
        nn.Linear(100, 10),
    )


def _stage(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift, and would cancel any bias. Max-pool before
    # ReLU, as in lenet: the same values, and the ReLU works on a quarter of them.
    return [
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    ]


@register_model(
    "cnn",
    "3 x conv-BatchNorm-ReLU (16 k5, 32 k3, 64 k3), each max-pooled; fc 576->10",
    channels_last=True,
)
def cnn() -> nn.Module:
    # Three conv-BatchNorm-ReLU stages, each halving the image with a max-pool (28 -> 14 -> 7 -> 3); the "same"
    # padding keeps the digit's edges in play for the shifted and rotated training images.
    return nn.Sequential(
        *_stage(1, 16, 5),  # 28 -> 14
        *_stage(16, 32, 3),  # 14 -> 7
        *_stage(32, 64, 3),  # 7 -> 3, so 64 * 3 * 3 = 576 features
        nn.Flatten(),
        nn.Linear(576, 10),
    )
