"""Built-in discrepancy plugins (installed as ``discbench.losses``), one module per family.

Importing this package imports every module in it, which registers each plugin with its decorator. A new built-in
loss is one new file here; a third-party loss is an entry point in the ``discbench.losses`` group (see README).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
