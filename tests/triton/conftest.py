"""Triton kernels under the interpreter, in their own process: ``TRITON_INTERPRET=1 python -m pytest -q -m triton
tests/triton`` (the Makefile's test target runs it after the main suite, which skips this directory).

``triton.jit`` reads TRITON_INTERPRET when a kernel is defined, so the variable must be set before any kernel module
is imported: setting it here would be too late whenever another test module imported the kernels first.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError("tests/triton needs TRITON_INTERPRET=1 in the environment of the pytest process")
