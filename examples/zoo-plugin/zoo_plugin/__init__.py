"""An mnist-zoo plugin: the resnet8 model (zoo_plugin.model) and the tract runtime (zoo_plugin.runtime).

pip install -e examples/zoo-plugin
python -m mnist_zoo list                    # resnet8 beside the zoo's models
pytest --benchmark-only --bench-models lenet,resnet8 --bench-runtimes eager,ort-fp32,tract -k inference
"""
