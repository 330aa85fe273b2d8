"""mnist-zoo: three classic MNIST models, trained fast on verified data and evaluated on the real test set."""

from mnist_zoo.models import get_model, list_models, model_info, register_model

__all__ = ["get_model", "list_models", "model_info", "register_model"]
__version__ = "0.1.0"
