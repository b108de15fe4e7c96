"""Built-in backbones (installed as ``discbench.backbones``). Importing this package imports every module in it, which
registers each backbone with its decorator: a new backbone is one new file here (``adapters`` makes the ``tv:`` and
``timm:`` classes on demand)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
