"""Distillation protocols: what a run builds and which terms it sums. One training loop (discbench.train) runs them.

- ``self`` (``self_distillation.py``): one network with exits (MUSE Fig. 1, BYOT);
- ``online`` (``online.py``): two networks trained jointly from scratch (DML, KDCL, AFD, MUSE Table 7(a));
- ``offline`` (``offline.py``): a student and a frozen pretrained teacher (RepDistiller, MUSE Table 7(b)).

The contract is ``discbench.api.Protocol``; the pieces the three share (building networks, pairing modules of two
networks for a plugin, counting cost) are in ``base.py``. Importing this package imports every module in it, which
registers each protocol with its decorator: a new protocol is one new file here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
