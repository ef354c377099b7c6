#!/usr/bin/env bash
# Issue 5 measurements still missing, in one call on an `nvidia-h200-x4` (run from the repo root
# after benchmarks/gpu/setup.sh; about 8 minutes). Four jobs in parallel, one GPU (or two) each, so
# that none shares a GPU:
#   GPU 0    generation_bench.py: fast (fused projections) vs fast_unfused, and a LoRA-wrapped
#            student both ways, batch 64-512 (random SmolLM2-135M architecture; HF rows skipped,
#            measured before: docs/benchmarks.md)
#   GPU 1    unisd bench on Qwen2.5-Coder-0.5B with one micro-batch per step (the recipes' default
#            of 4 dominated the step in the last run), generation rows included; then SmolLM2 full
#            fine-tuning at batch 64 with model.compile (per-layer torch.compile), for peak memory
#   GPU 2+3  data parallelism on the random SmolLM2 architecture: replicate and fsdp on 2 GPUs,
#            one after the other, against the 1-GPU numbers in docs/benchmarks.md
# Usage: bash benchmarks/gpu/issue5.sh SECONDS   (each job is stopped after SECONDS)
set -uo pipefail
SECS=${1:-420}
export PYTHONPATH=/tmp/site:src UNISD_CACHE=/tmp/unisd-cache PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QWEN=/tmp/unisd-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
mkdir -p $OUT/gen $OUT/bench $OUT/scale

(CUDA_VISIBLE_DEVICES=0 timeout $SECS python3 benchmarks/generation_bench.py --out $OUT/gen --skip-hf \
   --budget-s $((SECS - 60)) > $OUT/gen/log.txt 2>&1) &
(export CUDA_VISIBLE_DEVICES=1
 timeout $((SECS * 5 / 8)) python3 -m unisd bench sdft --model $QWEN --task gsm8k \
   --data-dir /tmp/unisd-data --batch-size 64 --new-tokens 128 --steps 4 \
   --set optim.micro_batch_size=64 --out /tmp/bench_mb64 > $OUT/bench/log.txt 2>&1
 cp /tmp/bench_mb64/bench.json $OUT/bench/ 2>/dev/null
 # model.compile against the TRL side-by-side's unisd run (SmolLM2, full FT, batch 64, no checkpointing:
 # 0.81 s/step, 22.05 GB, docs/benchmarks.md), for the memory target
 timeout $((SECS * 3 / 8)) python3 -m unisd train sdft --model /tmp/unisd-models/SmolLM2-135M-Instruct.Q4_1.gguf \
   --task gsm8k --data-dir /tmp/unisd-data --set model.finetune=full --set optim.lr=2e-5 \
   --set optim.batch_size=64 --set optim.micro_batch_size=64 --set optim.steps=6 --set model.compile=true \
   --set rollout.max_new_tokens=128 --set eval.before=false --set eval.after=false \
   --set output.root=/tmp/compile --set output.name=b64 > $OUT/bench/compile_b64.log 2>&1
 cp /tmp/compile/b64/metrics.jsonl $OUT/bench/compile_b64.metrics.jsonl 2>/dev/null) &
(export CUDA_VISIBLE_DEVICES=2,3
 python3 benchmarks/scaling_random.py /tmp/rnd > /dev/null
 C="sdft --model /tmp/rnd --task arithmetic --set model.finetune=full --set optim.lr=2e-5 \
    --set optim.micro_batch_size=64 --set optim.steps=6 --set rollout.max_new_tokens=128 \
    --set eval.before=false --set eval.after=false --set optim.batch_size=128 --out /tmp/scale"
 for strategy in replicate fsdp; do
   timeout $((SECS / 2)) python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m unisd train $C \
     --set distributed.strategy=$strategy --name gpu2_$strategy > $OUT/scale/$strategy.log 2>&1
   cp /tmp/scale/gpu2_$strategy/metrics.jsonl $OUT/scale/$strategy.metrics.jsonl 2>/dev/null
 done) &
wait
ls -la $OUT/*; tail -3 $OUT/gen/log.txt $OUT/bench/log.txt $OUT/scale/*.log
