#!/usr/bin/env bash
# Issue 5 measurements, run from the repo root after benchmarks/gpu/setup.sh. Each argument is a
# job and the GPUs it gets (JOB@GPUS); jobs on different GPUs run in parallel, jobs named for the
# same GPUs one after the other:
#   gen@G      generation_bench.py (random SmolLM2-135M architecture, no staging needed): float32
#              greedy parity incl. the graphed prompt pass's replay, the default fast generator and
#              one without inductor's combo kernels, HF default and static caches, batch 128-256,
#              GEMMs through cuBLASLt, kernel profiles of a decode step and of the prompt pass (batch
#              512-4096: session 6, fast_compiled_b512 ... _b4096; LoRA: session 7, fast_lora_b64)
#   kernels@G  decode_attention_bench.py: the decode attention alone, torch's SDPA choice against the
#              Triton kernel's launch settings, each call reading another of 30 caches (as a step does)
#   train@G    a short LoRA sdft run on the random SmolLM2-135M architecture (no staging), the fast
#              generator's defaults against the old ones (rollout.decode_attention=sdpa,
#              rollout.graph_prefill=false): rollout time, peak memory, finite losses
#   mem@G      trl_compare.py, TRL and unisd in one call, unisd with model.compile and
#              rollout.release_memory, batch 16 and 64: step-time and peak-memory ratios on this
#              machine (needs SmolLM2; >= 560 s: each unisd run's first step compiles)
#   slow@G     the checkpointed batch-16 step with rollout.release_memory: TRL and unisd's default
#              unprofiled, then unisd with steps 2-5 profiled (output.profile_steps), the default and
#              model.cudnn_attention=true (needs SmolLM2; >= 520 s)
#   bench@G    unisd bench on Qwen2.5-Coder-0.5B, one micro-batch per step (the recipes' micro-batch
#              of 4 dominated the step before)
#   scale@G,H  data parallelism on the random SmolLM2 architecture, replicate then fsdp, 2 GPUs
# Usage: bash benchmarks/gpu/issue5.sh SECONDS JOB@GPUS...   (each job is stopped after SECONDS)
#   e.g. on an nvidia-h200-x2:  bash benchmarks/gpu/issue5.sh 500 gen@0 mem@1 bench@1
#                               bash benchmarks/gpu/issue5.sh 300 scale@0,1
set -uo pipefail
SECS=$1; shift
export PYTHONPATH=/tmp/site:src UNISD_CACHE=/tmp/unisd-cache PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
QWEN=/tmp/unisd-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SMOL=/tmp/unisd-models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p $OUT

job() {  # job name, seconds
  case $1 in
    gen) mkdir -p $OUT/gen
         timeout $2 python3 benchmarks/generation_bench.py --out $OUT/gen --budget-s $(($2 - 90)) --sections \
           parity_fp32 fast_compiled_b64 fast_no_combo_kernels_b64 hf_default_b64 hf_static_b64 \
           fast_compiled_b128 fast_compiled_b256 fast_cublaslt_b64 decode_step_profile_b64 prefill_profile_b64 \
           > $OUT/gen/log.txt 2>&1 ;;
    train) mkdir -p $OUT/train
         python3 benchmarks/scaling_random.py /tmp/rnd > /dev/null
         for variant in default old; do
           extra=""; [ $variant = old ] && extra="--set rollout.decode_attention=sdpa --set rollout.graph_prefill=false"
           timeout $(($2 / 2)) python3 -m unisd train sdft --model /tmp/rnd --task arithmetic --set optim.steps=8 \
             --set optim.batch_size=64 --set optim.micro_batch_size=64 --set rollout.max_new_tokens=128 \
             --set eval.before=false --set eval.after=false $extra --out /tmp/train1 --name $variant \
             > $OUT/train/$variant.log 2>&1
           cp /tmp/train1/$variant/metrics.jsonl $OUT/train/$variant.metrics.jsonl 2>/dev/null
         done ;;
    kernels) mkdir -p $OUT/kernels  # each call reads another layer's cache, as in a decode step (cold L2)
         timeout $2 python3 benchmarks/decode_attention_bench.py --out $OUT/kernels --layers 30 --only-triton \
           --batch 16 64 256 --length 256 1024 > $OUT/kernels/log.txt 2>&1 ;;
    mem) # TRL and unisd side by side in one call, with model.compile and rollout.release_memory (no
         # checkpointing, as TRL's 7.86 / 29.95 GB of sessions 6-7) at batch 16 and 64: step-time and
         # peak-memory ratios on this machine; recompiles logged (the checkpointed batch 16: slow@G).
         # Give it >= 560 s (unisd's first step compiles for ~50-100 s)
         env TORCH_LOGS=recompiles timeout $2 python3 benchmarks/trl_compare.py --which both \
           --unisd-set rollout.release_memory=true --unisd-set model.compile=true --model $SMOL \
           --data-dir /tmp/unisd-data --split train --batch-size 16 64 --steps 6 --max-new-tokens 128 \
           --run-timeout $(($2 * 3 / 10)) --work-dir /tmp/mem --out $OUT/mem > $OUT/mem.log 2>&1
         (cd $OUT && tar -cJf mem.tar.xz mem && rm -rf mem) ;;
    slow) # the checkpointed batch-16 step with rollout.release_memory, 6 steps: TRL and unisd's
         # default (cuDNN attention left out of the training forwards) in one trl_compare call,
         # unprofiled, for the ratio on this machine; then unisd again with steps 2-5 profiled
         # (output.profile_steps), the default and model.cudnn_attention=true (torch's choice: cuDNN
         # first, which plans per new shape: the slow steps of sessions 6-7, confirmed in session 8);
         # the profile tables bundled into $OUT/slow.tar.xz
         gc16="--gradient-checkpointing --unisd-set rollout.release_memory=true --model $SMOL \
           --data-dir /tmp/unisd-data --split train --batch-size 16 --steps 6 --max-new-tokens 128"
         timeout $(($2 * 44 / 100)) python3 benchmarks/trl_compare.py --which both $gc16 \
           --run-timeout $(($2 * 22 / 100)) --work-dir /tmp/slow_both --out $OUT/slow_both > $OUT/slow_both.log 2>&1
         for v in default cudnn; do
           extra=""; [ $v = cudnn ] && extra="--unisd-set model.cudnn_attention=true"
           timeout $(($2 * 28 / 100)) python3 benchmarks/trl_compare.py --which unisd $gc16 $extra \
             --unisd-set "output.profile_steps=[2,3,4,5]" --run-timeout $(($2 * 28 / 100 - 15)) \
             --work-dir /tmp/slow_$v --out $OUT/slow_$v > $OUT/slow_$v.log 2>&1
           mkdir -p $OUT/slow_$v/profile
           find /tmp/slow_$v -path "*profile/*.txt" -exec cp {} $OUT/slow_$v/profile/ \;
         done
         (cd $OUT && tar -cJf slow.tar.xz slow_{both,default,cudnn} && rm -rf slow_{both,default,cudnn}) ;;
    bench) mkdir -p $OUT/bench
         timeout $2 python3 -m unisd bench sdft --model $QWEN --task gsm8k --data-dir /tmp/unisd-data \
           --batch-size 64 --new-tokens 128 --steps 4 --set optim.batch_size=64 --set optim.micro_batch_size=64 \
           --out /tmp/bench_mb64 \
           > $OUT/bench/log.txt 2>&1
         cp /tmp/bench_mb64/bench.json $OUT/bench/ 2>/dev/null ;;
    scale) mkdir -p $OUT/scale
         python3 benchmarks/scaling_random.py /tmp/rnd > /dev/null
         C="sdft --model /tmp/rnd --task arithmetic --set model.finetune=full --set optim.lr=2e-5 \
            --set optim.micro_batch_size=64 --set optim.steps=6 --set rollout.max_new_tokens=128 \
            --set eval.before=false --set eval.after=false --set optim.batch_size=128 --out /tmp/scale"
         for strategy in replicate fsdp; do
           timeout $(($2 / 2)) python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m unisd train $C \
             --set distributed.strategy=$strategy --name gpu2_$strategy > $OUT/scale/$strategy.log 2>&1
           cp /tmp/scale/gpu2_$strategy/metrics.jsonl $OUT/scale/$strategy.metrics.jsonl 2>/dev/null
         done ;;
    *) echo "unknown job $1" >&2 ;;
  esac
}

# group the jobs by GPU set; each group runs its jobs in order, groups in parallel, time split evenly
declare -A groups
for spec in "$@"; do groups[${spec#*@}]+="${spec%@*} "; done
for gpus in "${!groups[@]}"; do
  jobs=(${groups[$gpus]})
  (export CUDA_VISIBLE_DEVICES=$gpus
   for j in "${jobs[@]}"; do echo "== $j on GPU $gpus $(date +%T)"; job $j $((SECS / ${#jobs[@]})); done) &
done
wait
ls -la $OUT $OUT/*; tail -n 4 $OUT/*.log $OUT/*/log.txt $OUT/scale/*.log 2>/dev/null
