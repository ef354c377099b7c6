#!/usr/bin/env bash
# Issue 7 / issue 5 GPU work, step 2 (after setup.sh; may be called again: the sweep resumes).
#   bash benchmarks/gpu/grid.sh SECONDS SWEEP_DEVICES SIDE_JOBS
# runs `unisd sweep` over the grid files for SECONDS (then stops it; finished cells are kept, killed
# cells resume from their last checkpoint next time) on SWEEP_DEVICES (e.g. 0,1,2,0,1,2: two cells
# per GPU), while GPU 3 runs SIDE_JOBS one after another (comma-separated: trl, trl_gc, mem, bench). Everything comes back under $OUT as a few archives.
set -uo pipefail
SECS=$1; DEVICES=$2; SIDE=${3:-none}
export PYTHONPATH=/tmp/site:src UNISD_CACHE=/tmp/unisd-cache PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=/tmp/unisd-models; SMOL=$D/SmolLM2-135M-Instruct.Q4_1.gguf; QWEN=$D/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
S=benchmarks/sweeps
# queue order = priority; qwen_seeds.yaml is what benchmarks/gpu/seeds.py wrote after the seed-1 cells
GRIDS="$S/qwen_baselines.yaml $S/smollm2.yaml $S/qwen_seeds.yaml $S/qwen_components.yaml"
side() {  # $SIDE: comma-separated jobs for GPU 3, in order: trl, trl_gc, mem, bench
  export CUDA_VISIBLE_DEVICES=3
  for job in ${SIDE//,/ }; do
    echo "== $job $(date +%T)"
    case $job in
      trl|trl_gc) timeout 300 python3 benchmarks/trl_compare.py --model $SMOL --data-dir /tmp/unisd-data --split train \
             --batch-size 16 64 --steps 6 --max-new-tokens 128 --run-timeout 150 --out /tmp/$job \
             $([ $job = trl_gc ] && echo --gradient-checkpointing) ;;
      mem) UNISD_CUDA_MEMORY_SNAPSHOT=/tmp/mem/b64.pickle timeout 150 python3 -m unisd train sdft --model $SMOL \
             --task gsm8k --data-dir /tmp/unisd-data --set model.finetune=full --set optim.lr=2e-5 \
             --set optim.batch_size=64 --set optim.micro_batch_size=64 --set optim.steps=2 \
             --set rollout.max_new_tokens=128 --set eval.before=false --set eval.after=false \
             --set output.root=/tmp/mem --set output.name=run
           python3 benchmarks/memory_peak.py /tmp/mem/b64.pickle --top 30 > /tmp/mem/peak.txt 2>&1 ;;
      bench) timeout 280 python3 -m unisd bench sdft --model $QWEN --task gsm8k --data-dir /tmp/unisd-data \
             --batch-size 64,256 --new-tokens 128 --steps 3 --out /tmp/bench ;;
    esac
  done
}
mkdir -p /tmp/mem
side > /tmp/side.log 2>&1 &
SIDE_PID=$!
timeout -s INT $SECS python3 -m unisd sweep $GRIDS --devices $DEVICES > /tmp/sweep.log 2>&1
echo "sweep exit $?"
wait $SIDE_PID
cd /tmp && tar --exclude='checkpoints' -cJf $OUT/sweep.tar.xz sweep
tar -czf $OUT/side.tar.gz side.log trl trl_gc mem/peak.txt bench/bench.json mem/run/metrics.jsonl 2>/dev/null
cp /tmp/sweep.log $OUT/sweep.log
xz -k -T4 -c /tmp/mem/b64.pickle > $OUT/mem_b64.pickle.xz 2>/dev/null || true
ls -la $OUT; grep -a "cells\|failed" /tmp/sweep.log | tail -20; tail -5 /tmp/side.log
