#!/usr/bin/env bash
# The CI of this plugin package: in an environment where torch and discbench are installed, install the package,
# then check that discbench lists it without error, run discbench's contract suite on each of its losses and this
# package's own tests. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"

python -m pip install -e . pytest
discbench list losses | tee /dev/stderr | grep -q '^cosine_hint .*hyper-parameters'   # listed, not an ERROR row
discbench validate --loss cosine_hint     # exit status 1 if any contract check fails, 2 if the plugin cannot load
python -m pytest -q tests
