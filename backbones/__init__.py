"""Built-in backbones (installed as ``discbench.backbones``); importing this package registers them."""

from discbench.backbones import cifar, resnet, smallnet, table1  # noqa: F401
