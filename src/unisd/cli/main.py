"""The `unisd` command line: train, eval, quickstart, export, sweep, report, bench, and listings.

Each subcommand parses its flags, builds a RunConfig (recipe + --config file + --set overrides)
and calls the library; user errors (bad config, missing or malformed data, unknown names, a
model that cannot be loaded, a run stopped by the non-finite guard or out of GPU memory) print one
clear message and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task name (see `unisd tasks`)")
    p.add_argument("--model", help="model alias, hub id, local folder or .gguf file (see `unisd models`)")
    p.add_argument("--data-dir", help="folder with the published benchmark files")
    p.add_argument("--config", help="YAML file with fields to set over the recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one config field, e.g. --set optim.lr=1e-5 (repeatable)")
    p.add_argument("--execute-code", action="store_true",
                   help="allow running model-written code in the sandbox (code tasks)")


def _overrides(args) -> list[str]:
    out = []
    if getattr(args, "task", None):
        out.append(f"data.task={args.task}")
    if getattr(args, "model", None):
        out.append(f"model.name={args.model}")
    if getattr(args, "data_dir", None):
        out.append(f"data.data_dir={args.data_dir}")
    if getattr(args, "execute_code", False):
        out.append("eval.execute_code=true")
    if getattr(args, "steps", None):
        out.append(f"optim.steps={args.steps}")
    if getattr(args, "name", None):
        out.append(f"output.name={args.name}")
    if getattr(args, "out", None):
        out.append(f"output.root={args.out}")
    return out + list(args.overrides)


def cmd_train(args) -> int:
    from unisd.config import load_config, read_run_config
    from unisd.training import distributed
    from unisd.training.loop import train

    # Under `torchrun --nproc_per_node N -m unisd train ...` each process lands here; `train`
    # joins the process group from the torchrun environment, and only rank 0 prints. After an
    # error the group is left alone (a peer may be stuck in a collective); torchrun ends them all.
    if args.resume:
        cfg = read_run_config(args.resume)
        result = train(cfg, resume_dir=args.resume)
    else:
        cfg = load_config(args.recipe, _overrides(args), args.config)
        result = train(cfg)
    if distributed.is_main_process():
        _print_summary(result.summary)
    distributed.shutdown()
    return 0


def cmd_quickstart(args) -> int:
    from unisd.config import load_config
    from unisd.training.loop import train

    cfg = load_config("quickstart", _overrides(args), args.config)
    result = train(cfg)
    _print_summary(result.summary, quickstart=True)
    return 0


def cmd_eval(args) -> int:
    from unisd.config import load_config, read_run_config
    from unisd.evaluation.runner import evaluate, format_accuracy, save_eval
    from unisd.models import load_model_and_tokenizer
    from unisd.tasks import get_task
    from unisd.training.evals import task_options
    from unisd.training.loop import pick_device

    if args.adapter:
        cfg = read_run_config(args.adapter)
        for text in _overrides(args):
            from unisd.config.io import parse_override, set_path, to_dict, from_dict
            from unisd.config.schema import RunConfig

            tree = to_dict(cfg)
            path, value = parse_override(text)
            set_path(tree, path, value)
            cfg = from_dict(RunConfig, tree).validate()
    else:
        cfg = load_config("sdft", _overrides(args), args.config)
    if args.split:
        cfg.eval.split = args.split
    if args.limit is not None:
        cfg.eval.limit = args.limit if args.limit > 0 else None
    # the task and its data first: a bad name or file fails before the model loads
    task = get_task(cfg.data.task, **task_options(cfg))
    examples = task.load(cfg.eval.split, data_dir=cfg.data.data_dir, limit=cfg.eval.limit, seed=cfg.optim.seed)
    device = pick_device()
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
    label = "base"
    # Retention is on by default whenever the base is known: the model itself without --adapter
    # (the base row: JSD 0 by construction), the adapter-disabled weights of a LoRA run, or a
    # second copy of the run's base model for a full fine-tune.
    retention = args.retention is not False
    base_model = None
    if args.adapter:
        from unisd.models import apply_lora, load_weights
        from unisd.training.checkpoint import latest_checkpoint

        last = latest_checkpoint(args.adapter)
        if last is None:
            raise FileNotFoundError(f"{args.adapter}: no complete checkpoint under checkpoints/")
        if cfg.model.finetune == "lora":
            model = apply_lora(model, cfg.model)
        elif retention:
            base_model, _ = load_model_and_tokenizer(cfg.model, device=device)
        load_weights(model, last / "weights")
        label = f"{Path(args.adapter).name}@{last.name}"
    result = evaluate(model, tokenizer, task, examples, max_new_tokens=cfg.eval.max_new_tokens,
                      batch_size=cfg.eval.batch_size, backend=cfg.rollout.backend, description=f"eval {label}",
                      retention=retention, base_model=base_model)
    result["aggregate"]["model"] = cfg.model.name
    result["aggregate"]["weights"] = label
    result["aggregate"]["split"] = cfg.eval.split
    out = Path(args.output) if args.output else (
        Path(args.adapter) / "eval" / f"{cfg.data.task}-{cfg.eval.split}.json" if args.adapter
        else Path("runs") / "eval" / f"{Path(cfg.model.name).name}-{cfg.data.task}-{cfg.eval.split}.json")
    save_eval(result, out)
    agg = result["aggregate"]
    print(f"{cfg.data.task}/{cfg.eval.split} {label}: accuracy {format_accuracy(agg)}")
    for key in sorted(k for k, v in agg.items() if isinstance(v, dict) and "mean" in v and k != "accuracy"):
        print(f"  {key}: {format_accuracy(agg, key)}")
    if "cloze_norm" in agg:
        print(f"  (cloze: option log-likelihood, argmax of the {agg['cloze_norm']} log-prob; "
              "cloze_sum: of the summed log-prob)")
    _print_retention(agg.get("retention"))
    res = agg["resources"]
    energy = (f"{res['energy_j']:.0f} J" if res["energy_j"] is not None
              else f"n/a ({res.get('energy_unavailable')})")
    print(f"  resources: {res['wall_s']:.1f} s, {agg['generated_tokens_per_s']:.1f} generated tokens/s, "
          f"peak memory {res['peak_memory_gb']:.2f} GB ({res['peak_memory_kind']}), energy {energy}")
    print(f"per-item results: {out}")
    return 0


def _print_retention(ret: dict | None) -> None:
    if not ret:
        return

    def num(x, fmt=".3f"):
        return "n/a" if x is None else format(x, fmt)

    against = {"self": "the model itself (base row)", "adapter_disabled": "the adapter-disabled base",
               "separate": "the separately loaded base", "context": "the base context"}
    against = against.get(ret["base"], ret["base"])
    print(f"  retention vs {against} on {ret['n']} completions ({ret['skipped_empty']} empty skipped):")
    print(f"    PPL_ret mean over examples {num(ret['ppl_ret_mean'])}, corpus {num(ret['ppl_ret_corpus'])}; "
          f"JSD {num(ret['jsd_mean'], '.4f')} nats; gold fit PPL corpus {num(ret['gold_fit_ppl_corpus'])} "
          f"(mean {num(ret['gold_fit_ppl_mean'])}, n={ret['gold_n']})")


def cmd_export(args) -> int:
    from unisd.config import read_run_config
    from unisd.models import apply_lora, load_model_and_tokenizer, load_weights
    from unisd.models.export import export_merged
    from unisd.training.checkpoint import latest_checkpoint

    cfg = read_run_config(args.run_dir)
    last = latest_checkpoint(args.run_dir)
    if last is None:
        raise FileNotFoundError(f"{args.run_dir}: no complete checkpoint under checkpoints/")
    cfg.model.dtype = "float32"  # merge without rounding; the saved dtype follows below
    model, tokenizer = load_model_and_tokenizer(cfg.model, device="cpu")
    if cfg.model.finetune == "lora":
        model = apply_lora(model, cfg.model)
    load_weights(model, last / "weights")
    out = export_merged(model, args.out_dir, tokenizer=tokenizer)
    print(f"wrote a standalone model folder from {last.name}: {out}")
    return 0


def cmd_sweep(args) -> int:
    from unisd.training.sweep import print_progress, run_sweep

    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    cells = run_sweep(args.sweep_files, devices=devices)
    print_progress(cells)
    return 1 if any(c.status.startswith("failed") for c in cells) else 0


def cmd_report(args) -> int:
    from unisd.reporting.report import build_report

    result = build_report(args.run_dirs, args.out, focus=args.focus, against=args.against)
    for row in result["paired"]:
        print(f"{row['task']} / {row['model']}: {row['focus']} vs {row['other']}: "
              f"{100 * row['diff']:+.1f} points [{100 * row['ci_lo']:+.1f}, {100 * row['ci_hi']:+.1f}] "
              f"(n={row['n']}), {row['verdict']}")
    for note in result["notes"]:
        print(f"note: {note}")
    flagged = [r["run"] for r in result["collapse"] if r["collapse"]]
    if flagged:
        print(f"collapse watch flagged: {', '.join(flagged)}")
    print(f"{len(result['runs'])} runs -> {', '.join(str(f) for f in result['files'])}")
    return 0


def cmd_bench(args) -> int:
    from unisd.bench import run_bench
    from unisd.config import load_config

    cfg = load_config(args.recipe, _overrides(args), args.config)
    try:
        sizes = tuple(int(b) for b in args.batch_size.split(","))
    except ValueError:
        from unisd.config.schema import ConfigError

        raise ConfigError(f"--batch-size: expected integers separated by commas, got {args.batch_size!r}"
                          ) from None
    run_bench(cfg, batch_sizes=sizes, new_tokens=args.new_tokens, steps=args.bench_steps,
              out=Path(args.bench_out))
    return 0


def cmd_recipes(args) -> int:
    from unisd.config import recipe_dict, recipe_names

    width = max(len(n) for n in recipe_names())
    for name in recipe_names():
        print(f"{name:<{width}}  {recipe_dict(name).get('description', '')}")
    return 0


def cmd_tasks(args) -> int:
    from unisd.tasks import TASKS, get_task

    for name in sorted(TASKS):
        try:
            task = get_task(name)
            doc = (sys.modules[type(task).__module__].__doc__ or "").strip().splitlines()[0]
            splits = ", ".join(task.splits)
            print(f"{name:<11} {splits:<34} {doc if len(doc) <= 90 else doc[:87] + '...'}")
        except Exception as err:  # a task module that fails to import should not hide the others
            print(f"{name:<11} (unavailable: {err})")
    return 0


def cmd_models(args) -> int:
    from unisd.models import list_models

    rows = list_models()
    print(f"{'alias':<28} {'installed':<10} {'converted':<10} {'params':<8} {'size':<9} install with")
    for row in rows:
        print(f"{row.alias:<28} {'yes' if row.installed else 'no':<10} {'yes' if row.cached else 'no':<10} "
              f"{row.params:<8} {row.size:<9} {row.package}")
    return 0


def _print_summary(summary: dict, quickstart: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from unisd.evaluation.runner import format_accuracy

    console = Console()
    table = Table(title=f"{summary['recipe']} on {summary['task']} ({summary['model']})")
    table.add_column("metric")
    table.add_column("base model")
    table.add_column("after self-distillation")
    before, after = summary.get("before"), summary.get("after")
    # Only the metrics with a CI: aggregates also hold "resources" and "retention" dicts.
    keys = ["accuracy"] + sorted(k for k in (before or after or {}) if isinstance((before or after)[k], dict)
                                 and "mean" in (before or after)[k] and k != "accuracy")
    for key in keys:
        table.add_row(key, format_accuracy(before, key) if before else "-", format_accuracy(after, key) if after else "-")
    console.print(table)
    data = summary["data"]
    # soft_wrap: paths and reasons stay on one line, so they can be copied and grepped
    console.print(f"examples: {data['used']} used of {data['loaded']} loaded; dropped: {data['dropped'] or 0}; "
                  f"truncated: {data['truncated'] or 0}; without negative: {data['without_negative']}", soft_wrap=True)
    processes = f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else ""
    console.print(f"steps: {summary['steps']} ({summary['skipped_steps']} skipped), time: {summary['seconds']:.0f} s, "
                  f"peak memory: {summary['peak_memory_gb']:.1f} GB, device: {summary['device']}{processes}",
                  soft_wrap=True)
    console.print(f"outputs: {summary['run_dir']} (config.yaml, metrics.jsonl, eval/, checkpoints/, training.png)",
                  soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unisd", description="Self-distillation for LLMs (UniSD and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with a recipe")
    p.add_argument("recipe", nargs="?", default="sdft", help="recipe name (see `unisd recipes`) or a YAML path")
    _common_run_flags(p)
    p.add_argument("--steps", type=int, help="optimizer steps (optim.steps)")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--out", help="parent folder of run directories (default runs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last complete checkpoint")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("quickstart", help="offline CPU demo: SmolLM2-135M improves on arithmetic by self-distillation")
    _common_run_flags(p)
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--out", help="parent folder of run directories (default runs/)")
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("eval", help="evaluate a base model or a run's checkpoint on a task")
    _common_run_flags(p)
    p.add_argument("--adapter", metavar="RUN_DIR", help="evaluate the last checkpoint of this run")
    p.add_argument("--split", help="split to evaluate (default: the task's test split)")
    p.add_argument("--limit", type=int, help="first N items (0 = all)")
    p.add_argument("--output", help="where to write the per-item JSON")
    p.add_argument("--retention", action=argparse.BooleanOptionalAction, default=None,
                   help="retention metrics against the base model (PPL_ret, JSD, gold fit); default on: "
                        "the adapter-disabled base for a LoRA run, a second copy of the base for a full "
                        "fine-tune, the model itself (JSD 0) without --adapter")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="write a merged standalone HF model folder from a run")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("sweep", help="train a grid of recipes x tasks x models x seeds (resumable)")
    p.add_argument("sweep_files", nargs="+", metavar="sweep_file",
                   help="YAML: lists recipes, tasks, models, seeds; optional set:, per_task:, root:. Several "
                        "files form one queue, in order")
    p.add_argument("--devices", help="comma-separated GPU ids, e.g. 0,1: one `unisd train` child per entry "
                                     "(CUDA_VISIBLE_DEVICES); list a GPU twice (0,0,1,1) to run two cells on it "
                                     "at once; default: one cell after another in-process")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("report", help="report.md, results.csv and plots from run directories")
    p.add_argument("run_dirs", nargs="+",
                   help="run directories, or folders searched for them (e.g. a sweep root)")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--against", nargs="+", default=["base"], metavar="METHOD",
                   help="also compare the focus method with each of these on every task, with the average over "
                        "tasks (default: base)")
    p.add_argument("--focus", default="unisd_star", help="method compared against the strongest other one "
                                                         "(default unisd_star)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("bench", help="measure generation tokens/s (ours and HF), the training step split, "
                                     "MFU and bandwidth bounds; prints a table, writes bench.json")
    p.add_argument("recipe", nargs="?", default="sdft", help="recipe name (see `unisd recipes`) or a YAML path")
    _common_run_flags(p)
    p.add_argument("--batch-size", default="64", help="rows per generate call and per training step; "
                                                       "several as 64,128 (default 64)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens every row decodes (default 128)")
    p.add_argument("--steps", dest="bench_steps", type=int, default=4,
                   help="training steps; the first is dropped as warm-up when there are more (default 4)")
    p.add_argument("--out", dest="bench_out", default="bench",
                   help="folder for bench.json and the training runs (default ./bench)")
    p.set_defaults(fn=cmd_bench)

    sub.add_parser("recipes", help="list the recipes").set_defaults(fn=cmd_recipes)
    sub.add_parser("tasks", help="list the tasks").set_defaults(fn=cmd_tasks)
    sub.add_parser("models", help="list packaged model aliases and whether they are installed").set_defaults(fn=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    from unisd.config.schema import ConfigError
    from unisd.errors import (ModelNotInstalledError, ResourceError, TrainingStopped, UnknownNameError,
                              WeightsMismatchError)
    from unisd.models.loading import ModelLoadError
    from unisd.tasks.base import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    # Only errors the user can fix: any other exception (a plain KeyError included) is a bug and
    # keeps its traceback.
    except (ConfigError, DataError, FileNotFoundError, ModelLoadError, ModelNotInstalledError, UnknownNameError,
            WeightsMismatchError, TrainingStopped, ResourceError) as err:
        print(f"unisd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
