#!/usr/bin/env bash
# Run HERE (the CPU machine, repo root, venv active) before the GPU calls: builds the ignored files
# that setup.sh expects to be carried.
#   .device/data.tar.xz : the benchmark files the grid reads, from ../shared/data (~2.3 MB)
#   .device/cache/contexts : retrieval embeddings (all-MiniLM-L6-v2, from its PyPI package) of the
#       training prompts of every grid task and seed, so the GPU machine never needs that model
# Models are staged separately: python3 ../shared/tools/device-model prepare NAME --out .device
set -euo pipefail
DATA=${1:-../shared/data}
mkdir -p .device
(cd "$DATA" && tar -cJf "$OLDPWD/.device/data.tar.xz" gsm8k/train.jsonl gsm8k/test.jsonl mbpp \
  humaneval/HumanEval.jsonl commonsenseqa/train_rand_split.jsonl commonsenseqa/dev_rand_split.jsonl cos_e toolalpaca)
UNISD_CACHE=$PWD/.device/cache python - "$DATA" <<'PY'
import sys
from unisd.contexts import build_aux_contexts
from unisd.models.loading import cache_dir
from unisd.tasks import get_task

for name in ("gsm8k", "mbpp", "cose", "toolalpaca"):
    task = get_task(name, **({"execute": True} if name == "mbpp" else {}))
    for seed in (1, 2, 3):  # the grid's seeds and data.train_limit
        examples = task.load("train", data_dir=sys.argv[1], limit=480, seed=seed)
        build_aux_contexts(examples, kind="retrieval", k=3, seed=seed, embedder="all-MiniLM-L6-v2",
                           cache_dir=cache_dir().parent / "contexts")
        print(name, seed, len(examples))
PY
ls -la .device/data.tar.xz .device/cache/contexts
