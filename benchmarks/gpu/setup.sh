#!/usr/bin/env bash
# Issue 7 / issue 5 GPU work, step 1 (run from the repo root on the GPU machine, after the models
# were staged under /tmp/unisd-models by the calls `shared/tools/device-model prepare NAME --out
# .device --chunk-mb 48` prints, made back to back; the last call of each joins the chunks): check
# the staged GGUF files (SmolLM2, Qwen or both), install the carried wheels, unpack the benchmark
# data and the precomputed retrieval embeddings, and convert the models once (so parallel cells do not). 48 MB chunks,
# because each call also carries the repository's tracked files (~12 MB) and may take 64 MiB.
# Carried paths: .device/data.tar.xz, .whl, .device/cache (.device/data.tar.xz and .device/cache
# come from benchmarks/gpu/stage_local.sh, run here; .whl from benchmarks/trl_compare.md).
# Measured 2026-11-29 on an nvidia-h200-x2: staging 1.5 min, this script 1.7 min (the Qwen
# conversion takes ~56 s).
set -euo pipefail
D=/tmp/unisd-models
# the models that were staged (SmolLM2 alone is enough for the memory jobs): each checked, then converted
SUMS="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf
1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
STAGED=""
while read -r sum name; do
  if [ -f "$D/$name" ]; then echo "$sum  $D/$name" | sha256sum -c; STAGED="$STAGED $name"; fi
done <<< "$SUMS"
[ -n "$STAGED" ] || { echo "no model staged under $D" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/unisd-data /tmp/unisd-cache
tar -xJf .device/data.tar.xz -C /tmp/unisd-data
cp -r .device/cache/contexts /tmp/unisd-cache/
# continue the committed grid: finished cells (with summary.json) are skipped by `unisd sweep`
if [ ! -d /tmp/sweep ] && [ -f benchmarks/results/sweep_h200.tar.xz ]; then
  tar -xJf benchmarks/results/sweep_h200.tar.xz -C /tmp && mv /tmp/sweep_h200 /tmp/sweep
fi
export PYTHONPATH=/tmp/site:src UNISD_CACHE=/tmp/unisd-cache
python3 -c "
from unisd.models.loading import resolve
for f in '$STAGED'.split():
    print(resolve('$D/' + f))"
nvidia-smi --query-gpu=index,name,memory.used --format=csv
