"""mnist-zoo: the three MNIST models of the classic tutorial and a small modern CNN, trained fast on verified data,
evaluated on the real test set, exported with verification and benchmarked (README.md)."""

__all__ = ["get_model", "list_models", "model_info", "register_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The registry is imported on first use, not with the package: `python -m mnist_zoo` imports this package
    # before its __main__, and torch's seconds of import must come after mnist_zoo.launch is guarding Ctrl-C.
    if name in __all__:
        from mnist_zoo import models

        return getattr(models, name)
    raise AttributeError(f"module 'mnist_zoo' has no attribute {name!r}")
