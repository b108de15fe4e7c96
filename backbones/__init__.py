"""Built-in backbones (installed as ``discbench.backbones``); importing this package registers them."""

from discbench.backbones import cifar, resnet, smallnet  # noqa: F401
