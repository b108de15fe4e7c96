#!/usr/bin/env bash
# The CI of this plugin package: in an environment where torch and discbench are installed, install the package,
# then check that discbench lists it without error, run discbench's contract suite on each of its losses and this
# package's own tests. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"

python -m pip install -e . pytest
# listed, not an ERROR row (the listing is captured first: `grep -q` in a pipe exits at the first match and
# the writer's SIGPIPE would fail the pipeline under pipefail)
listing="$(discbench list losses)"
printf '%s\n' "$listing" >&2
grep '^cosine_hint .*hyper-parameters' <<<"$listing" > /dev/null
discbench validate --loss cosine_hint     # exit status 1 if any contract check fails, 2 if the plugin cannot load
python -m pytest -q tests
