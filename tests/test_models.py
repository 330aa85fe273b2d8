"""The zoo's registry and architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_zoo import get_model, list_models, model_info, register_model
from mnist_zoo.util import UserError


def test_registry_lists_the_four_models():
    assert list_models() == ["mlp", "dnn", "lenet", "cnn"]


def test_a_name_already_in_the_zoo_is_refused():
    with pytest.raises(ValueError, match="already registered under the name 'lenet'"):
        register_model("lenet", "another lenet")(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    assert model_info("lenet").params == 38_390 and list_models() == ["mlp", "dnn", "lenet", "cnn"]


def test_unknown_model_lists_the_choices():
    with pytest.raises(UserError, match="unknown model 'resnet'; choose from mlp, dnn, lenet, cnn"):
        get_model("resnet")


# Hand-counted: weights + biases, and multiply-adds of conv (outputs x in_ch x k x k) and linear layers.
@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        ("mlp", 784 * 10 + 10, 784 * 10),
        ("dnn", 784 * 100 + 100 + 100 * 10 + 10, 784 * 100 + 100 * 10),
        ("lenet", 260 + 5020 + 32100 + 1010, 24 * 24 * 10 * 25 + 8 * 8 * 20 * 250 + 320 * 100 + 100 * 10),
        # convolutions without bias, 2 BatchNorm parameters per channel; max-pools halve 28 -> 14 -> 7 -> 3
        (
            "cnn",
            400 + 32 + 16 * 32 * 9 + 64 + 32 * 64 * 9 + 128 + 576 * 10 + 10,
            28 * 28 * 16 * 25 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9 + 576 * 10,
        ),
    ],
)
def test_params_and_macs(name, params, macs):
    info = model_info(name)
    assert (info.params, info.macs) == (params, macs)
    assert sum(p.numel() for p in get_model(name).parameters()) == params


@pytest.mark.parametrize("name", ["mlp", "dnn", "lenet", "cnn"])
def test_shapes_and_logits(name):
    torch.manual_seed(0)
    model = get_model(name)
    for batch in (1, 7):
        out = model(torch.randn(batch, 1, 28, 28))
        assert out.shape == (batch, 10)
    # logits, not probabilities: no softmax inside the model
    assert not any(isinstance(m, nn.Softmax | nn.LogSoftmax) for m in model.modules())
    assert not torch.allclose(out.sum(1), torch.ones(7))


def test_lenet_layers_are_the_tutorials():
    convs = [m for m in get_model("lenet").modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 10, (5, 5)),
        (10, 20, (5, 5)),
    ]
    linears = [m for m in get_model("lenet").modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(320, 100), (100, 10)]


@pytest.mark.parametrize("name", ["lenet", "cnn"])
def test_pool_before_relu_is_the_tutorials_relu_before_pool_to_the_bit(name):
    # The zoo pools before the ReLU for speed (models.py); the tutorial's order must give the same logits and
    # the same gradients, bit for bit, with the same parameter names.
    torch.manual_seed(0)
    model = get_model(name).train()
    layers = list(model)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layer
    tutorial = nn.Sequential(*layers)
    reordered = get_model(name).train()
    reordered.load_state_dict(model.state_dict())
    assert [k for k in tutorial.state_dict()] == [k for k in reordered.state_dict()]
    assert any(type(a) is not type(b) for a, b in zip(tutorial, reordered, strict=True))
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    grads = []
    for net in (tutorial, reordered):
        loss = nn.functional.cross_entropy(logits := net(x), y)
        grads.append([logits.detach(), *torch.autograd.grad(loss, list(net.parameters()))])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
