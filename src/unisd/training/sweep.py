"""A grid of ordinary runs: recipes x tasks x models x seeds, each cell its own run directory.

A sweep file is YAML:

    recipes: [sft, sdft, unisd_star]
    tasks: [arithmetic]
    models: [smollm2-135m-instruct]
    seeds: [1, 2, 3]
    set: {optim.steps: 200, eval.limit: 200}   # optional, applied to every cell
    per_task:                                   # optional, applied to the cells of one task
      mbpp: {eval.extra_tasks: [humaneval]}
    root: runs/my-sweep                         # optional, default runs/<file stem>

Cell `<recipe>__<task>__<model basename>__s<seed>` is trained exactly as `unisd train <recipe>
--set ...` would train it, into `<root>/<cell>/`. A sweep can be killed and started again: a
cell with summary.json is skipped, a cell with a complete checkpoint continues from it (with
the config it was started with, like `unisd train --resume`), any other cell starts afresh.

Cells share one evaluation of the base model per task, model and seed (`eval.base_cache` =
`<root>/base_evals` unless `set` names another folder). Several sweep files given together form one
queue, in file order (e.g. every method with one seed, then two more seeds of a few methods).

Cells run one after another in this process, or with `devices` one `python -m unisd train`
child per listed device (CUDA_VISIBLE_DEVICES), its output in `<cell>/sweep.log`; a device
listed twice runs two cells at once (small models leave a GPU mostly idle). This module
schedules runs; it does not compare them (`unisd report` does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unisd.config.io import load_config, read_run_config, to_dict
from unisd.config.schema import ConfigError, RunConfig
from unisd.training import checkpoint as ckpt

AXES = {"recipes": "recipe", "tasks": "data.task", "models": "model.name", "seeds": "optim.seed"}
"""Sweep-file lists and the config field each one sets (recipes pick the preset itself)."""
OWNED = ("data.task", "model.name", "optim.seed", "output.root", "output.name")
"""Fields the sweep sets per cell; `set:` may not override them."""


@dataclass
class Cell:
    recipe: str
    task: str
    model: str
    seed: int
    name: str
    run_dir: Path
    overrides: list[str]
    cfg: RunConfig
    status: str = "pending"
    """pending -> one of: skipped (done before), trained, resumed, failed (...)."""
    action: str = field(default="new")
    """What the sweep will do: "skip", "resume" (complete checkpoint, no summary) or "new"."""


def read_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file as a dict, checked: the four lists non-empty, `set` a mapping of dotted
    fields that the sweep does not own, `root` defaulting to runs/<file stem>."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with {', '.join(AXES)}, set, root")
    unknown = sorted(set(spec) - set(AXES) - {"set", "per_task", "root"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(list(AXES) + ['set', 'per_task', 'root'])}")
    for key in AXES:
        value = spec.get(key)
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{path}: {key} must be a non-empty list")
        spec[key] = value
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec["seeds"]):
        raise ConfigError(f"{path}: seeds must be integers, got {spec['seeds']}")
    spec["set"] = _settings(spec.get("set"), path=path, section="set")
    spec["root"] = str(spec.get("root") or Path("runs") / path.stem)
    spec["set"].setdefault("eval.base_cache", str(Path(spec["root"]) / "base_evals"))
    per_task = spec.get("per_task") or {}
    if not isinstance(per_task, dict):
        raise ConfigError(f"{path}: per_task must map task names to settings, got {per_task!r}")
    stray = sorted(set(per_task) - set(map(str, spec["tasks"])))
    if stray:
        raise ConfigError(f"{path}: per_task names {', '.join(stray)}, which tasks does not list "
                          f"({', '.join(map(str, spec['tasks']))})")
    spec["per_task"] = {str(task): _settings(tree, path=path, section=f"per_task: {task}")
                        for task, tree in per_task.items()}
    return spec


def _settings(tree: Any, *, path: Path, section: str) -> dict[str, Any]:
    """A `set:` or `per_task:` mapping, flattened to dotted fields, none of them one the sweep owns."""
    settings = _flatten(tree or {}, where=f"{path}: {section}")
    clash = sorted(k for k in settings if k in OWNED)
    if clash:
        raise ConfigError(f"{path}: {section}: {', '.join(clash)} is chosen per cell by the sweep "
                          f"(recipes/tasks/models/seeds/root); remove it from {section}")
    return settings


def _flatten(tree: Any, *, where: str, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-5}} and {"optim.lr": 1e-5} both -> {"optim.lr": 1e-5}. Only a section
    written as a nested mapping is flattened; a mapping value under a dotted key (task_args) stays."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of field: value, got {tree!r}")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and "." not in str(key) and not prefix:
            out.update(_flatten(value, where=where, prefix=f"{full}."))
        else:
            out[full] = value
    return out


def _override(key: str, value: Any) -> str:
    # `--set` values are read back as YAML, so a YAML dump round-trips any value exactly
    # (quoted "true" stays a string, 1.0e-05 stays a float, lists stay lists).
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix('...').strip()}"  # drop the end-of-document marker of a scalar


def cell_name(recipe: str, task: str, model: str, seed: int) -> str:
    return f"{Path(recipe).stem}__{task}__{Path(str(model).rstrip('/')).name}__s{seed}"


def plan_cells(spec: dict[str, Any]) -> list[Cell]:
    """Every cell of the grid with its validated config and what to do with it. Config errors
    (a misspelt recipe or field) surface here, before any cell has spent time."""
    root = Path(spec["root"])
    cells, seen = [], {}
    for recipe in spec["recipes"]:
        for task in spec["tasks"]:
            for model in spec["models"]:
                for seed in spec["seeds"]:
                    name = cell_name(recipe, task, model, seed)
                    if name in seen:
                        raise ConfigError(f"sweep cells {seen[name]} and {(recipe, task, model, seed)} would "
                                          f"share the run directory {name}; rename one model folder")
                    seen[name] = (recipe, task, model, seed)
                    settings = {**spec["set"], **spec["per_task"].get(str(task), {})}
                    overrides = [_override(k, v) for k, v in settings.items()] + [
                        _override("data.task", task), _override("model.name", str(model)),
                        _override("optim.seed", seed), _override("output.root", str(root)),
                        _override("output.name", name)]
                    cfg = load_config(str(recipe), overrides)
                    cell = Cell(str(recipe), str(task), str(model), seed, name, root / name, overrides, cfg)
                    cell.action = _action(cell.run_dir)
                    cells.append(cell)
    return cells


def _action(run_dir: Path) -> str:
    if (run_dir / "summary.json").exists():
        return "skip"
    if ckpt.latest_checkpoint(run_dir) is not None:
        return "resume"
    return "new"


def _prepare_new(cell: Cell) -> None:
    """A cell that starts afresh in a folder left by a run killed before its first checkpoint:
    the loop reuses eval/before.json, which is only right if the config is unchanged."""
    before = cell.run_dir / "eval" / "before.json"
    if before.exists() and _stored_config(cell.run_dir) != to_dict(cell.cfg):
        before.unlink()


def _stored_config(run_dir: Path) -> dict | None:
    try:
        return to_dict(read_run_config(run_dir))
    except ConfigError:
        return None


def _warn_if_changed(cell: Cell, console) -> None:
    stored = _stored_config(cell.run_dir)
    if stored is not None and stored != to_dict(cell.cfg):
        console.print(f"[yellow]{cell.name}: the sweep's config changed since this cell started; it resumes "
                      f"with its stored config.yaml", soft_wrap=True)


def run_sweep(paths: str | Path | list[str | Path], *, devices: list[str] | None = None, console=None,
              show_progress: bool = True, poll_s: float = 1.0) -> list[Cell]:
    """Run (or continue) the sweep(s) in `paths`, as one queue; returns the cells with their final
    status. A cell that two files both name runs once."""
    from rich.console import Console

    console = console or Console()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    cells, planned, roots = [], set(), []
    for path in paths:
        spec = read_sweep(path)
        for cell in plan_cells(spec):
            if cell.run_dir not in planned:
                planned.add(cell.run_dir)
                cells.append(cell)
        root = Path(spec["root"])
        root.mkdir(parents=True, exist_ok=True)
        roots.append(str(root))
        # the grid as it was asked for, next to its cells (unless the sweep file is that very file)
        asked_path = root / f"sweep-{Path(path).stem}.yaml" if len(paths) > 1 else root / "sweep.yaml"
        if asked_path.resolve() != Path(path).resolve():
            asked = {k: spec[k] for k in (*AXES, "set", "per_task", "root")}
            asked_path.write_text(yaml.safe_dump(asked, sort_keys=False))
    root = ", ".join(dict.fromkeys(roots))
    todo = []
    for cell in cells:
        if cell.action == "skip":
            cell.status = "skipped (done)"
            continue
        if cell.action == "resume":
            _warn_if_changed(cell, console)
        else:
            _prepare_new(cell)
        todo.append(cell)
    where = f" on devices {','.join(devices)}" if devices else ""
    console.print(f"sweep {root}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
                  f"{len(todo)} to run{where}", soft_wrap=True)
    if devices:
        _run_on_devices(todo, devices, console, poll_s)
    else:
        for i, cell in enumerate(todo, 1):
            console.rule(f"[{i}/{len(todo)}] {cell.name} ({cell.action})")
            _run_in_process(cell, console, show_progress)
    return cells


def _run_in_process(cell: Cell, console, show_progress: bool) -> None:
    from unisd.training.loop import train

    try:
        if cell.action == "resume":
            train(read_run_config(cell.run_dir), resume_dir=cell.run_dir, console=console,
                  show_progress=show_progress)
        else:
            train(cell.cfg, console=console, show_progress=show_progress)
        cell.status = "resumed" if cell.action == "resume" else "trained"
    except Exception as err:  # one failed cell (OOM, a stopped run) should not cost the others
        traceback.print_exc()
        cell.status = f"failed ({type(err).__name__}: {err})"


def _command(cell: Cell) -> list[str]:
    base = [sys.executable, "-m", "unisd", "train"]
    if cell.action == "resume":
        return base + ["--resume", str(cell.run_dir)]
    return base + [cell.recipe] + [x for o in cell.overrides for x in ("--set", o)]


def _run_on_devices(todo: list[Cell], devices: list[str], console, poll_s: float) -> None:
    pending = deque(todo)
    running: dict[int, tuple[Cell, subprocess.Popen, Any]] = {}  # slot (index into devices) -> its cell
    try:
        while pending or running:
            for slot, dev in enumerate(devices):
                if slot not in running and pending:
                    cell = pending.popleft()
                    cell.run_dir.mkdir(parents=True, exist_ok=True)
                    log = open(cell.run_dir / "sweep.log", "a")
                    env = dict(os.environ, CUDA_VISIBLE_DEVICES=dev, PYTHONUNBUFFERED="1")
                    proc = subprocess.Popen(_command(cell), stdout=log, stderr=subprocess.STDOUT, env=env)
                    running[slot] = (cell, proc, log)
                    console.print(f"device {dev}: {cell.name} ({cell.action}), "
                                  f"log {cell.run_dir / 'sweep.log'}", soft_wrap=True)
            time.sleep(poll_s)
            for slot, (cell, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[slot]
                dev = devices[slot]
                if proc.returncode == 0 and (cell.run_dir / "summary.json").exists():
                    cell.status = "resumed" if cell.action == "resume" else "trained"
                else:
                    cell.status = f"failed (exit {proc.returncode}; see {cell.run_dir / 'sweep.log'})"
                console.print(f"device {dev}: {cell.name} {cell.status}", soft_wrap=True)
    finally:  # interrupted: stop the children this sweep started, so no orphan holds a GPU
        for _cell, proc, log in running.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()


def print_progress(cells: list[Cell], console=None) -> None:
    """The table printed at the end: cell, status, accuracy after tuning (from summary.json)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from unisd.evaluation.runner import format_accuracy

    console = console or Console()
    table = Table(title="sweep")
    for col in ("cell", "status", "accuracy after"):
        table.add_column(col)
    for cell in cells:
        acc = "-"
        summary = cell.run_dir / "summary.json"
        if summary.exists():
            after = json.loads(summary.read_text()).get("after")
            acc = format_accuracy(after) if after else "not evaluated"
        table.add_row(cell.name, cell.status, acc)
    console.print(table)
