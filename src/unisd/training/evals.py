"""A run's evaluations: the training task and `eval.extra_tasks`, before and after training.

Each target is evaluated by `unisd.evaluation.runner.evaluate` (greedy, same code path for the
base and the tuned model) into `eval/before.json` and `eval/after.json` for the training task and
`eval/<task>/{before,after}.json` for an extra (out-of-distribution) task. Base-model results are
reused: from the run's own folder when it resumes, and from `eval.base_cache` when another run
already evaluated the same model on the same items with the same settings (a sweep's cells share
one base evaluation per task, model and seed). This module does not score or generate itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from unisd.config.schema import ConfigError, RunConfig
from unisd.contexts._cache import content_key
from unisd.evaluation.runner import evaluate, format_accuracy, save_eval
from unisd.tasks import get_task
from unisd.tasks.base import Example, Task, runs_code


@dataclass
class EvalTarget:
    name: str
    task: Task
    examples: Sequence[Example]
    folder: Path
    """Where its before.json and after.json go, relative to the run directory."""
    extra: bool


def task_options(cfg: RunConfig, name: str | None = None) -> dict[str, Any]:
    """Constructor options for a task: DataConfig.task_args for the training task, plus the
    code-execution opt-in for code tasks."""
    name = name or cfg.data.task
    opts = dict(cfg.data.task_args) if name == cfg.data.task else {}
    if name in ("mbpp", "humaneval"):
        opts.setdefault("execute", cfg.eval.execute_code)
    return opts


def check_can_score(task: Task, cfg: RunConfig) -> None:
    """Code tasks need the sandbox opt-in to be scored; say so before any model time is spent."""
    if (cfg.eval.before or cfg.eval.after) and runs_code(task) and not task.execute:
        raise ConfigError(f"task {task.name!r} is scored by running model-written code; pass --execute-code "
                          "(eval.execute_code=true) to allow it in the sandbox, or set eval.before=false and "
                          "eval.after=false to train without evaluating")


def eval_targets(cfg: RunConfig, task: Task) -> list[EvalTarget]:
    """The training task's test items and every extra task's, loaded now so that a bad name or
    file fails before any model time; [] when the run evaluates nothing."""
    if not (cfg.eval.before or cfg.eval.after):
        return []
    targets = []
    for name in [cfg.data.task, *cfg.eval.extra_tasks]:
        extra = name != cfg.data.task
        t = get_task(name, **task_options(cfg, name)) if extra else task
        check_can_score(t, cfg)
        examples = t.load(cfg.eval.split, data_dir=cfg.data.data_dir, limit=cfg.eval.limit, seed=cfg.optim.seed)
        targets.append(EvalTarget(name, t, examples, Path("eval", name) if extra else Path("eval"), extra))
    return targets


def base_cache_path(cfg: RunConfig, name: str) -> Path | None:
    """The shared file for the base model's evaluation on task `name` under these settings."""
    if not cfg.eval.base_cache:
        return None
    from unisd import __version__

    key = content_key([__version__, cfg.model.name, cfg.model.dtype, name, task_options(cfg, name),
                       cfg.data.data_dir, cfg.eval.split, cfg.eval.limit, cfg.eval.max_new_tokens,
                       cfg.eval.batch_size, cfg.rollout.backend, cfg.optim.seed])
    return Path(cfg.eval.base_cache) / f"{name}-{Path(cfg.model.name.rstrip('/')).name}-{key[:16]}.json"


def _read(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:  # a cache cut short: evaluate again
        return None
    return result if isinstance(result, dict) and "aggregate" in result else None


def evaluate_before(targets: list[EvalTarget], run_dir: Path, cfg: RunConfig,
                    run_eval: Callable[[EvalTarget, str], dict], console) -> dict[str, dict]:
    """Base-model results per target: the run's own file, else the shared cache, else `run_eval`."""
    results = {}
    for target in targets:
        path = run_dir / target.folder / "before.json"
        cache = base_cache_path(cfg, target.name)
        result = _read(path)
        if result is None:
            result = _read(cache)
            if result is None:
                result = run_eval(target, "base")
                if cache is not None:
                    save_eval(result, cache)
            else:  # its time and energy were spent (and are counted) by the run that filled the cache
                result = {**result, "reused_from": str(cache)}
            save_eval(result, path)
        results[target.name] = result
        console.print(f"base model on {target.name}: {format_accuracy(result['aggregate'])}")
    return results


def evaluate_after(targets: list[EvalTarget], run_dir: Path, run_eval: Callable[[EvalTarget, str], dict],
                   console) -> dict[str, dict]:
    results = {}
    for target in targets:
        result = run_eval(target, "tuned")
        save_eval(result, run_dir / target.folder / "after.json")
        results[target.name] = result
        if target.extra:
            console.print(f"tuned model on {target.name}: {format_accuracy(result['aggregate'])}")
    return results


def make_run_eval(model, tokenizer, cfg: RunConfig, show_progress: bool, retention_after: bool):
    """`run_eval(target, which)` with the run's generation settings."""
    def run_eval(target: EvalTarget, which: str) -> dict:
        return evaluate(model, tokenizer, target.task, target.examples, max_new_tokens=cfg.eval.max_new_tokens,
                        batch_size=cfg.eval.batch_size, backend=cfg.rollout.backend,
                        description=f"eval {target.name} ({which})", show_progress=show_progress,
                        retention=retention_after and which == "tuned")
    return run_eval
