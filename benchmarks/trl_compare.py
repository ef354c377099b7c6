"""Side by side: TRL's SDFT trainer (`trl.experimental.sdft`) and `unisd train sdft`, same settings.

Each (side, batch size) runs in its own subprocess, so peak memory is per process and nothing is
shared between runs (CUDA caching allocator, compiled graphs, page cache of the weights aside):

* TRL: this script again with `--_trl-worker B`. It builds a `datasets.Dataset` of the very rows
  unisd trains on, in the same order (unisd's own GSM8K loader, prompt-length filter and seeded
  epoch order; TRL's shuffling is off), one completion per prompt (`num_generations=1`), and runs
  `SDFTTrainer` with full-logit forward-KL distillation (`distillation_mode="full_logits"`,
  `distillation_alpha=0.0`, i.e. KL(teacher || student) like unisd's sdft recipe), the frozen
  initial model as teacher (`teacher_model_kind="base"`: a second full copy under full
  fine-tuning), the student prompt plus the gold worked solution in unisd's teacher template as
  the teacher's prompt, HF `generate` for rollouts (no vLLM), full fine-tuning, one micro-batch per
  optimizer step. A TrainerCallback times every optimizer step (on_step_begin -> on_step_end,
  after torch.cuda.synchronize on CUDA) and TRL's rollout phase (its on_generation_prompts_selected
  -> on_self_distillation_batch_prepared events), and reads torch.cuda.max_memory_allocated.
* unisd: `python -m unisd train sdft ...` with the same model folder, data, batch, lengths, steps,
  sampling temperature, learning rate and seed; step time = time/generate_s +
  time/forward_backward_s (+ time/sync_s where logged) + time/optimizer_s from its metrics.jsonl.

Step 1 (warm-up: CUDA context, torch.compile and graph capture on unisd's side) is left out of the
means when more than one step ran. Peak memory: CUDA max allocated over the whole process (model
loading included; TRL's peak since training began is also recorded), or the process peak RSS on
CPU. Ratios: speedup = TRL s/step / unisd s/step; memory ratio = unisd peak / TRL peak.

    python benchmarks/trl_compare.py --model DENSE_FOLDER --data-dir DATA --split test \
        --batch-size 16 64 --steps 6 --out OUT

`--model` should be a dense safetensors folder (TRL refuses a model that still carries GGUF
quantization metadata); a packaged alias or a .gguf path is converted first with unisd's loader
(`unisd.models.loading.resolve`, cached under $UNISD_CACHE) and the resulting folder goes to both
sides. Needs `trl` (with `trl.experimental.sdft`, tested with 1.16.0), `datasets` and `unisd`
importable. Not part of the package. How to run it on the GPU machine: benchmarks/trl_compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = "unisd.trl_compare/1"


# ---------------------------------------------------------------------------------------------
# arguments and shared settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="dense HF folder (config.json + safetensors); an alias or .gguf is converted first")
    p.add_argument("--data-dir", required=True, help="folder holding gsm8k/{train,test}.jsonl")
    p.add_argument("--split", default="train", help="training split (default train)")
    p.add_argument("--task", default="gsm8k", help="unisd task whose rows both sides train on (default gsm8k)")
    p.add_argument("--batch-size", nargs="+", default=["16", "64"],
                   help="batch sizes, e.g. --batch-size 16 64 or 16,64 (default 16 64)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6; step 1 is warm-up)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="completion length limit (default 128)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature on both sides (default 0.7, unisd's rollout default)")
    p.add_argument("--lr", type=float, default=2e-5, help="learning rate on both sides (default 2e-5)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="activation checkpointing on both sides (default off on both; TRL's own default is on)")
    p.add_argument("--which", choices=("trl", "unisd", "both"), default="both")
    p.add_argument("--unisd-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra `--set` for the unisd side only, e.g. model.compile=true (repeatable)")
    p.add_argument("--out", default="trl_compare", help="folder for trl_compare.json and the logs")
    p.add_argument("--work-dir", default=None,
                   help="scratch folder for run directories and checkpoints (default: a new folder under /tmp)")
    p.add_argument("--run-timeout", type=float, default=0, help="seconds per subprocess, 0 = none")
    # internal: one TRL run in this process
    p.add_argument("--_trl-worker", dest="trl_worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", dest="result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_model-folder", dest="model_folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = []
    for item in args.batch_size:
        sizes += [int(x) for x in str(item).split(",") if x.strip()]
    args.batch_sizes = sizes
    if args.steps < 1 or not sizes or min(sizes) < 1:
        p.error("--steps and every --batch-size must be >= 1")
    return args


def unisd_overrides(args: argparse.Namespace, folder: Path, batch: int) -> list[str]:
    """The `--set` fields of the unisd run; the TRL worker builds its rows from the same config."""
    return [f"model.name={folder}", f"data.task={args.task}", f"data.data_dir={args.data_dir}",
            f"data.train_split={args.split}", "model.finetune=full",
            f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
            f"optim.batch_size={batch}", f"optim.micro_batch_size={batch}", f"optim.steps={args.steps}",
            f"optim.lr={args.lr}", f"optim.seed={args.seed}",
            f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.temperature={args.temperature}",
            "eval.before=false", "eval.after=false"]


def resolve_model(name: str) -> Path:
    """A dense folder for `name`; aliases and .gguf files go through unisd's converter."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        folder = path
    else:
        from unisd.models.loading import resolve

        folder = resolve(name)
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise SystemExit(f"{folder}/config.json still has a quantization_config ({config['quantization_config']}); "
                         "TRL's trainer refuses quantized models. Convert it with unisd's loader "
                         "(python -c 'from unisd.models.loading import resolve; print(resolve(PATH))') first.")
    return folder.resolve()


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def measured(steps: list[dict]) -> list[dict]:
    """Steps that count: all but the first (warm-up) when more than one ran."""
    return steps[1:] if len(steps) > 1 else steps


# ---------------------------------------------------------------------------------------------
# TRL side (runs in a subprocess: this file with --_trl-worker B)


def trl_worker(args: argparse.Namespace) -> None:
    import datasets
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from unisd.config import load_config
    from unisd.models.loading import prepare_tokenizer
    from unisd.tasks import get_task
    from unisd.training.data import prepare_rows
    from unisd.training.evals import task_options
    from unisd.training.loop import epoch_order

    batch, folder = args.trl_worker, Path(args.model_folder)
    cuda = torch.cuda.is_available()
    work = Path(args.work_dir)

    # ---- the rows unisd trains on, in unisd's order ----
    cfg = load_config("sdft", unisd_overrides(args, folder, batch))
    task = get_task(cfg.data.task, **task_options(cfg))
    examples = task.load(cfg.data.train_split, data_dir=cfg.data.data_dir, limit=cfg.data.train_limit,
                         seed=cfg.optim.seed)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    tokenizer.truncation_side = "left"
    rows, report = prepare_rows(examples, tokenizer, cfg, eos_id=tokenizer.eos_token_id)
    need, order, epoch = batch * args.steps, [], 0
    while len(order) < need:
        order += epoch_order(len(rows), epoch, cfg.optim.seed, cfg.data.shuffle)
        epoch += 1
    picked = [rows[i] for i in order[:need]]
    if "{privileged_context}" in cfg.teacher.template:
        raise SystemExit("teacher template already uses {privileged_context}")
    template = cfg.teacher.template.replace("{demonstration}", "{privileged_context}")

    def messages(ex):
        return ([{"role": "system", "content": ex.system}] if ex.system is not None else []) + \
            [{"role": "user", "content": ex.prompt}]

    id_of_prompt = {r.example.prompt: r.example.id for r in picked}
    dataset = Dataset.from_list([{"prompt": messages(r.example), "privileged_context": r.example.demonstration}
                                 for r in picked])

    # ---- timing and memory ----
    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def peak_gb() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9

    class Meter(TrainerCallback):
        def __init__(self):
            self.steps: list[dict] = []
            self.logs: list[dict] = []
            self.peak_before_train_gb = 0.0
            self.t0 = self.t_gen = 0.0
            self.gen_s = 0.0
            self.first_id = None

        def on_train_begin(self, args, state, control, **kw):
            self.peak_before_train_gb = peak_gb()  # model + teacher loading
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kw):
            self.gen_s = 0.0
            self.first_id = None
            self.t0 = now()

        # TRL's own events around its rollout phase (HF generate + padding + teacher prompts)
        def on_generation_prompts_selected(self, generation_prompts=None, **kw):
            if generation_prompts:  # which row came first: to check that both sides train on the same rows
                self.first_id = id_of_prompt.get(generation_prompts[0][-1]["content"])
            self.t_gen = now()

        def on_self_distillation_batch_prepared(self, **kw):
            self.gen_s += now() - self.t_gen

        def on_step_end(self, args, state, control, **kw):
            dt = now() - self.t0
            self.steps.append({"step": state.global_step, "step_s": dt, "generate_s": self.gen_s,
                               "rest_s": dt - self.gen_s, "peak_memory_gb": peak_gb(),
                               "first_row_id": self.first_id})

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append({"step": state.global_step, **{k: v for k, v in (logs or {}).items()
                                                             if isinstance(v, (int, float, str))}})

    meter = Meter()
    config = SDFTConfig(
        output_dir=str(work / f"trl_b{batch}"),
        # batch: B prompts, one completion each, one micro-batch per optimizer step
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=1,
        max_steps=args.steps, shuffle_dataset=False, seed=args.seed, dataloader_num_workers=0,
        # lengths: unisd drops prompts over data.max_prompt_tokens, so nothing is truncated here
        max_prompt_length=cfg.data.max_prompt_tokens, max_completion_length=args.max_new_tokens,
        # rollouts: HF generate on the student prompt, plain sampling
        use_vllm=False, generate_from_teacher=False, temperature=args.temperature, top_p=1.0, top_k=0,
        # objective: full-vocabulary forward KL, frozen initial model as teacher, unisd's teacher prompt
        distillation_mode="full_logits", distillation_alpha=0.0, teacher_model_kind="base",
        teacher_prompt_template=template, num_loss_tokens_to_skip=0,
        # optimisation: full fine-tuning, same lr, clip 1.0, no weight decay
        learning_rate=args.lr, weight_decay=0.0, max_grad_norm=1.0,
        gradient_checkpointing=args.gradient_checkpointing,
        # precision: bf16 weights (as unisd's model.dtype=auto) + bf16 autocast on CUDA; fp32 on CPU
        bf16=cuda, use_cpu=not cuda, model_init_kwargs={"dtype": "bfloat16" if cuda else "float32"},
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = SDFTTrainer(model=str(folder), args=config, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[meter])

    # ---- do both sides see the same token ids? (first row: student and teacher prompt) ----
    check: dict = {}
    try:
        first = picked[0]
        prompt = messages(first.example)
        student_ids = trainer._tokenize_prompts([prompt])[0]
        teacher_ids = trainer._tokenize_prompts(
            [trainer.teacher_context_builder._compose_teacher_prompt(prompt, first.example.demonstration)])[0]
        check = {"student_prompt_ids_equal": list(student_ids) == list(first.student),
                 "teacher_prompt_ids_equal": list(teacher_ids) == list(first.teacher),
                 "student_prompt_len": len(student_ids), "teacher_prompt_len": len(teacher_ids)}
    except Exception as err:  # noqa: BLE001 (private TRL helpers: a rename must not stop the benchmark)
        check = {"error": f"{type(err).__name__}: {err}"}
    print(f"[trl b{batch}] prompt check: {check}", flush=True)

    t_train = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t_train

    # per-step completion lengths from TRL's own logs (logging_steps=1)
    lengths = {e["step"]: e.get("completions/mean_length") for e in meter.logs if "completions/mean_length" in e}
    for s in meter.steps:
        s["completion_len"] = lengths.get(s["step"])
    model = trainer.model
    result = {
        "side": "trl", "batch": batch, "steps": meter.steps, "logs": meter.logs, "train_wall_s": wall,
        "peak_memory_gb": max([meter.peak_before_train_gb] + [s["peak_memory_gb"] for s in meter.steps]),
        "peak_memory_gb_since_train_begin": max([s["peak_memory_gb"] for s in meter.steps], default=None),
        "peak_memory_gb_before_train": meter.peak_before_train_gb,
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_peak_rss",
        "prompt_check": check, "rows": {"loaded": report.loaded, "used": report.used, "trained": need},
        "model": {"dtype": str(model.dtype), "params": sum(p.numel() for p in model.parameters()),
                  "attn_implementation": getattr(model.config, "_attn_implementation", None),
                  "teacher_is_separate_copy": trainer.teacher_model is not trainer.model,
                  "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False))},
        "trl_config": {k: getattr(config, k) for k in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "max_steps",
            "max_prompt_length", "max_completion_length", "temperature", "top_p", "top_k", "use_vllm",
            "generate_from_teacher", "distillation_mode", "distillation_alpha", "distillation_is_clip",
            "teacher_model_kind", "teacher_prompt_template", "learning_rate", "max_grad_norm", "bf16",
            "gradient_checkpointing", "optim", "lr_scheduler_type", "shuffle_dataset")},
        "versions": {"trl": trl.__version__, "datasets": datasets.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    result["trl_config"]["optim"] = str(result["trl_config"]["optim"])
    result["trl_config"]["lr_scheduler_type"] = str(result["trl_config"]["lr_scheduler_type"])
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))


# ---------------------------------------------------------------------------------------------
# driver


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict) -> tuple[int, float, str]:
    """Run `cmd`, output to `log`; (exit code, seconds, last lines of the log)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout or None).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = time.perf_counter() - start
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    return rc, seconds, tail


def summarize(steps: list[dict], *, step_key: str, gen_key: str, len_key: str) -> dict:
    used = measured(steps)
    return {"steps_run": len(steps), "steps_measured": len(used),
            "first_step_s": steps[0][step_key] if steps else None,
            "step_s": mean([s[step_key] for s in used]),
            "generate_s": mean([s[gen_key] for s in used if s.get(gen_key) is not None]),
            "completion_len": mean([s[len_key] for s in used if s.get(len_key) is not None])}


def run_trl(args, folder: Path, batch: int, out: Path, work: Path, env: dict) -> dict:
    result_path = work / f"trl_b{batch}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_trl-worker", str(batch), "--_result", str(result_path),
           "--_model-folder", str(folder), "--model", str(folder), "--data-dir", args.data_dir, "--split", args.split,
           "--task", args.task, "--batch-size", str(batch), "--steps", str(args.steps),
           "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
           "--lr", str(args.lr), "--seed", str(args.seed), "--work-dir", str(work)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    rc, seconds, tail = run_logged(cmd, out / f"trl_b{batch}.log", args.run_timeout, env)
    if rc != 0 or not result_path.is_file():
        return {"side": "trl", "batch": batch, "error": f"exit {rc}", "wall_s": seconds, "log_tail": tail}
    res = json.loads(result_path.read_text())
    res["wall_s"] = seconds
    res["summary"] = summarize(res["steps"], step_key="step_s", gen_key="generate_s", len_key="completion_len")
    res["summary"]["peak_memory_gb"] = res["peak_memory_gb"]
    return res


def run_unisd(args, folder: Path, batch: int, out: Path, work: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "unisd", "train", "sdft", "--model", str(folder), "--task", args.task,
           "--data-dir", args.data_dir, "--out", str(work / "unisd_runs"), "--name", f"b{batch}"]
    for field in unisd_overrides(args, folder, batch):
        if not field.startswith(("model.name=", "data.task=", "data.data_dir=")):
            cmd += ["--set", field]
    for field in args.unisd_set:
        cmd += ["--set", field]
    rc, seconds, tail = run_logged(cmd, out / f"unisd_b{batch}.log", args.run_timeout, env)
    metrics = work / "unisd_runs" / f"b{batch}" / "metrics.jsonl"
    if rc != 0 or not metrics.is_file():
        return {"side": "unisd", "batch": batch, "error": f"exit {rc}", "wall_s": seconds, "log_tail": tail,
                "command": cmd}
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [r for r in records if "time/generate_s" in r]
    (out / f"unisd_metrics_b{batch}.jsonl").write_text(metrics.read_text())
    # time/sync_s (gradient all-reduce under data parallelism) is absent or ~0 in one process
    steps = [{"step": r["step"],
              "step_s": (r["time/generate_s"] + r["time/forward_backward_s"] + r.get("time/sync_s", 0.0)
                         + r["time/optimizer_s"]),
              "generate_s": r["time/generate_s"],
              "rest_s": r["time/forward_backward_s"] + r.get("time/sync_s", 0.0) + r["time/optimizer_s"],
              "teacher_s": r.get("time/teacher_s"), "optimizer_s": r["time/optimizer_s"],
              "peak_memory_gb": r.get("peak_memory_gb"), "completion_len": r.get("rollout/completion_len"),
              "loss": r.get("loss")} for r in records]
    summary = summarize(steps, step_key="step_s", gen_key="generate_s", len_key="completion_len")
    summary["peak_memory_gb"] = max((s["peak_memory_gb"] or 0.0) for s in steps) if steps else None
    run_dir = metrics.parent
    samples = run_dir / "samples.jsonl"
    if samples.is_file():
        first = {json.loads(line)["step"]: json.loads(line)["id"] for line in samples.read_text().splitlines() if line}
        for s in steps:
            s["first_row_id"] = first.get(s["step"])
    fp = json.loads((run_dir / "fingerprint.json").read_text()) if (run_dir / "fingerprint.json").is_file() else {}
    return {"side": "unisd", "batch": batch, "steps": steps, "summary": summary, "wall_s": seconds,
            "command": cmd, "fingerprint": fp,
            "peak_memory_kind": "cuda_max_allocated" if fp.get("cuda") else "process_peak_rss"}


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'batch':>5}  {'TRL s/step':>10}  {'unisd s/step':>12}  {'speedup':>7}  {'TRL peak GB':>11}  "
          f"{'unisd peak GB':>13}  {'memory ratio':>12}")
    for r in rows:
        print(f"{r['batch']:>5}  {fmt(r['trl_step_s'], '.3f'):>10}  {fmt(r['unisd_step_s'], '.3f'):>12}  "
              f"{fmt(r['speedup'], '.2f'):>7}  {fmt(r['trl_peak_gb'], '.2f'):>11}  {fmt(r['unisd_peak_gb'], '.2f'):>13}  "
              f"{fmt(r['memory_ratio'], '.2f'):>12}")
    print()
    print(f"{'batch':>5}  {'TRL gen s':>9}  {'unisd gen s':>11}  {'TRL compl. len':>14}  {'unisd compl. len':>16}  "
          f"{'TRL step 1 s':>12}  {'unisd step 1 s':>14}  {'steps measured':>14}  {'same rows':>9}")
    for r in rows:
        print(f"{r['batch']:>5}  {fmt(r['trl_generate_s'], '.3f'):>9}  {fmt(r['unisd_generate_s'], '.3f'):>11}  "
              f"{fmt(r['trl_completion_len'], '.1f'):>14}  {fmt(r['unisd_completion_len'], '.1f'):>16}  "
              f"{fmt(r['trl_first_step_s'], '.2f'):>12}  {fmt(r['unisd_first_step_s'], '.2f'):>14}  "
              f"{r['steps_measured']:>14}  {r.get('same_rows', '-')!s:>9}")
    print("speedup = TRL s/step / unisd s/step; memory ratio = unisd peak / TRL peak; step 1 left out of the means;\n"
          "same rows = both sides started every step with the same example (data order check)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trl_worker is not None:
        trl_worker(args)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else Path("/tmp") / f"trl_compare-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    args.work_dir = str(work)
    args.data_dir = str(Path(args.data_dir).resolve())
    folder = resolve_model(args.model)
    print(f"model folder: {folder}\nwork dir: {work}\nout: {out}", flush=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1", TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    runs: list[dict] = []
    table: list[dict] = []
    for batch in args.batch_sizes:
        results: dict[str, dict] = {}
        for side, run_side in (("trl", run_trl), ("unisd", run_unisd)):
            if args.which not in (side, "both"):
                continue
            print(f"[{side:<5} b{batch}] running ({out / f'{side}_b{batch}.log'})", flush=True)
            res = results[side] = run_side(args, folder, batch, out, work, env)
            runs.append(res)
            print(f"[{side:<5} b{batch}] {res.get('error') or res['summary']}", flush=True)
            if "error" in res:
                print(res["log_tail"], flush=True)
        t = results.get("trl", {}).get("summary", {})
        u = results.get("unisd", {}).get("summary", {})
        row = {"batch": batch, "trl_step_s": t.get("step_s"), "unisd_step_s": u.get("step_s"),
               "trl_peak_gb": t.get("peak_memory_gb"), "unisd_peak_gb": u.get("peak_memory_gb"),
               "trl_generate_s": t.get("generate_s"), "unisd_generate_s": u.get("generate_s"),
               "trl_completion_len": t.get("completion_len"), "unisd_completion_len": u.get("completion_len"),
               "trl_first_step_s": t.get("first_step_s"), "unisd_first_step_s": u.get("first_step_s"),
               "steps_measured": t.get("steps_measured") or u.get("steps_measured") or 0}
        row["speedup"] = (row["trl_step_s"] / row["unisd_step_s"]
                          if row["trl_step_s"] and row["unisd_step_s"] else None)
        trl_res, unisd_res = results.get("trl"), results.get("unisd")
        if trl_res and unisd_res and "steps" in trl_res and "steps" in unisd_res:
            row["same_rows"] = ([s.get("first_row_id") for s in trl_res["steps"]]
                                == [s.get("first_row_id") for s in unisd_res["steps"]])
        row["memory_ratio"] = (row["unisd_peak_gb"] / row["trl_peak_gb"]
                               if row["trl_peak_gb"] and row["unisd_peak_gb"] else None)
        table.append(row)
        # written after every batch size, so a run stopped at the device's limit keeps what finished
        report = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "model_folder": str(folder),
                  "settings": {k: v for k, v in vars(args).items()
                               if k not in ("trl_worker", "result", "model_folder", "batch_size")},
                  "table": table, "runs": runs}
        (out / "trl_compare.json").write_text(json.dumps(report, indent=1, default=str))
    print_table(table)
    print(f"wrote {out / 'trl_compare.json'}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
