#!/usr/bin/env bash
# Each peer in its own virtual environment under /tmp; none of them is a dependency of vramfit.
# torch is pinned first to the local CPU build (any other torch spec pulls gigabytes of CUDA wheels).
set -euo pipefail
python -m venv /tmp/peer-accelerate
/tmp/peer-accelerate/bin/pip install -q torch==2.13.0
/tmp/peer-accelerate/bin/pip install -q accelerate transformers==5.23.0

python -m venv /tmp/peer-deepspeed
/tmp/peer-deepspeed/bin/pip install -q torch==2.13.0
DS_BUILD_OPS=0 /tmp/peer-deepspeed/bin/pip install -q deepspeed transformers==5.23.0

python -m venv /tmp/peer-llm-analysis
/tmp/peer-llm-analysis/bin/pip install -q llm-analysis
for venv in accelerate deepspeed llm-analysis; do
  echo "$venv: $(/tmp/peer-$venv/bin/pip list 2>/dev/null | grep -iE '^(accelerate|deepspeed|llm-analysis|torch|transformers) ' | tr -s ' ' | tr '\n' ';')"
done
