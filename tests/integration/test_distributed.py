"""Data parallelism on CPU (gloo): `torchrun --nproc_per_node 2 -m unisd train` against one
process with the same global batch, replicas that stay identical, and exact resume; plus the
collectives themselves in two spawned processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unisd.config.schema import ConfigError
from unisd.training import distributed

# --standalone: a local rendezvous on a free port, so parallel test runs do not collide
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
COMPARED = ("loss", "grad_norm", "tokens", "rows", "lr", "loss/divergence", "loss/nll")


def _sets(model_dir: Path, root: Path, name: str, *extra: str) -> list[str]:
    sets = [f"model.name={model_dir}", "data.task=arithmetic", "data.train_limit=24", "optim.steps=3",
            "optim.batch_size=4", "optim.micro_batch_size=1", "rollout.max_new_tokens=8", "eval.before=false",
            "eval.after=false", f"output.root={root}", f"output.name={name}", "model.lora_r=4", *extra]
    return [x for s in sets for x in ("--set", s)]


def _run(launcher: list[str], *args: str, debug_dump: bool = False) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("UNISD_DEBUG_RANK_DUMP", None)
    if debug_dump:
        env["UNISD_DEBUG_RANK_DUMP"] = "1"
    # A session of its own, so a hang kills torchrun *and* its workers.
    proc = subprocess.Popen([*launcher, "-m", "unisd", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe, extra", [("sft", ()), ("gkd", ("rollout.on_policy_fraction=0",))])
def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, tmp_path, recipe, extra):
    """Gold completions (no sampling): two ranks of 2 rows each give one process's 4-row step,
    loss and gradient norm, up to float summation order."""
    _run([sys.executable], recipe, *_sets(tiny_model_dir, tmp_path, "one", *extra))
    _run(TORCHRUN, recipe, *_sets(tiny_model_dir, tmp_path, "two", *extra))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2, 3]
    assert [m["processes"] for m in two] == [2, 2, 2]
    for a, b in zip(one, two, strict=True):
        for key in COMPARED:
            if key in a:
                # abs: GKD's JSD here is ~2e-5, a difference of log-probs of size ~5, so the
                # last-bit differences of the weights after step 1 show up at ~1e-9
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-8), (a["step"], key)
    # only rank 0 writes the run directory: one line per step, one summary
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert len((tmp_path / "two" / "samples.jsonl").read_text().splitlines()) == 3


def test_sampling_run_keeps_replicas_identical_and_resumes_exactly(tiny_model_dir, tmp_path):
    """SDFT with each rank sampling its own completions: finite steps, identical trainable weights
    on both ranks at the end, and a resume from the step-2 checkpoint that logs what the
    uninterrupted run logged (every rank's sampling stream is restored). Evaluation runs on rank 0
    while rank 1 waits."""
    sets = _sets(tiny_model_dir, tmp_path, "ref", "optim.steps=4", "output.checkpoint_every=2",
                 "eval.before=true", "eval.after=true", "eval.limit=4", "eval.max_new_tokens=4")
    _run(TORCHRUN, "sdft", *sets, debug_dump=True)
    ref = tmp_path / "ref"
    assert json.loads((ref / "eval" / "after.json").read_text())["aggregate"]["n"] == 4
    want = _metrics(ref)
    assert [m["step"] for m in want] == [1, 2, 3, 4]
    assert all(m["finite"] and m["tokens"] > 0 and m["rollout/on_policy_rows"] == 4 for m in want)
    rank0, rank1 = (torch.load(ref / "debug" / f"rank-{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and rank0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any("lora_B" in k and rank0[k].abs().sum() > 0 for k in rank0)  # they did train

    # The same run, interrupted after the step-2 checkpoint: no step-4 checkpoint, metrics cut at 2.
    run = tmp_path / "cut"
    shutil.copytree(ref, run, ignore=shutil.ignore_patterns("debug", "summary.json", "training.png"))
    shutil.rmtree(run / "checkpoints" / "step-000004")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    _run(TORCHRUN, "--resume", str(run))
    got = _metrics(run)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(got, want, strict=True):
        for key in COMPARED + ("rollout/completion_len", "rollout/repetition"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)


# ---- the pieces, without a model ----------------------------------------------------------------

@contextlib.contextmanager
def _gloo_group(rank: int, world: int, init_file: str):
    """A gloo process group for a spawned test worker. On success the ranks meet at a barrier and the
    worker process ends right there (exit status 0, which is all `spawn` checks): about one CI run in
    five, tearing the group down raced with the peer's and aborted a rank inside gloo's C++ threads
    ("terminate called without an active exception") after every assertion had passed. On an error
    the group is destroyed and the exception goes back to the test as usual."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    os._exit(0)  # no teardown: see above

def _workers(rank: int, world: int, init_file: str) -> None:
    with _gloo_group(rank, world, init_file):
        distributed.BUCKET_ELEMENTS = 5  # several buckets, one tensor larger than a bucket
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2, 4))
        c = torch.nn.Parameter(torch.zeros(2))
        a.grad = torch.full((3,), float(rank + 1))
        b.grad = torch.arange(8.0).view(2, 4) * (rank + 1)
        if rank == 0:  # rank 1 has no gradient for c: it counts as zeros
            c.grad = torch.tensor([1.0, 2.0])
        distributed.sync_gradients([a, b, c])
        assert torch.equal(a.grad, torch.full((3,), 3.0))
        assert torch.equal(b.grad, torch.arange(8.0).view(2, 4) * 3)
        assert torch.equal(c.grad, torch.tensor([1.0, 2.0]))

        sums, counts = distributed.sum_over_ranks({"loss/total_sum": 1.5 * (rank + 1), "w_last": rank},
                                                  {"rows": 2} if rank == 0 else {})
        assert sums == {"loss/total_sum": 4.5, "w_last": 0} and counts == {"rows": 2}
        assert int(distributed.all_reduce_sum(torch.tensor(rank + 1))) == 3

        same = [("w", torch.ones(4))]
        distributed.check_replicas_equal(same, "test")
        differ = [("w", torch.ones(4) * (1 + rank * 1e-7))]
        with pytest.raises(RuntimeError, match="replicas differ"):
            distributed.check_replicas_equal(differ, "test")


def test_collectives_in_two_processes(tmp_path):
    torch.multiprocessing.spawn(_workers, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_alone_everything_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = distributed.init()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    distributed.sync_gradients([p])
    assert torch.equal(p.grad, torch.ones(2))
    parts = ({"a": 1.0},)
    assert distributed.sum_over_ranks(*parts) == parts


@pytest.mark.parametrize("sets, world, message", [
    (["optim.batch_size=3", "optim.micro_batch_size=1"], 2,
     r"optim.batch_size \(3\) must be a multiple of the number of processes \(2\)"),
    (["optim.batch_size=4", "optim.micro_batch_size=4"], 2,
     r"2 rows per rank\) must be a multiple of optim.micro_batch_size \(4\)"),
    (["optim.batch_size=4", "optim.micro_batch_size=2", "rollout.backend=vllm"], 2, r"rollout.backend: 'vllm'"),
])
def test_config_errors_name_the_fields(sets, world, message):
    from unisd.config import load_config

    distributed.check_config(load_config("sdft", ["optim.batch_size=4", "optim.micro_batch_size=2"]), 2)
    distributed.check_config(load_config("sdft", sets), 1)  # one process: nothing to split
    with pytest.raises(ConfigError, match=message):
        distributed.check_config(load_config("sdft", sets), world)


def test_resume_with_another_process_count_is_refused(tmp_path):
    from unisd.training.checkpoint import MARKER, load_checkpoint

    path = tmp_path / "step-000002"
    path.mkdir()
    (path / MARKER).write_text("2")
    torch.save({"ranks": [{}, {}]}, path / "trainer_state.pt")
    with pytest.raises(ConfigError, match=r"2 process\(es\); resume it with the same number "
                                          r"\(torchrun --nproc_per_node 2\), not 1"):
        load_checkpoint(path, model=None, optimizer=None, scheduler=None, teacher=None, rng=None)


# ---- FSDP2: distributed.strategy=fsdp --------------------------------------------------------------

FSDP = "distributed.strategy=fsdp"


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = run / "checkpoints" / f"step-{step:06d}" / "weights"
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_fsdp_matches_one_process_and_resumes_exactly(tiny_model_dir, tmp_path):
    """GKD, full fine-tuning, with the frozen-base teacher copy sharded too. The sampled rows are
    all truncated and masked out, so the loss comes from the gold rows alone and one process can
    be matched; they also leave micro-batches where one rank has loss tokens and the other none
    (it must still join the forward and backward). Two FSDP ranks of 2 rows each (micro-batches
    of 1: one unsynced backward before the synced one; clipping binds) log one process's losses
    and gradient norms and end with its weights, up to float summation order. Gradient
    checkpointing does not change the numbers. Then a resume from the step-2 checkpoint (full
    tensors written by rank 0, the optimizer state re-sharded) logs and ends with what the
    uninterrupted run did."""
    full = ("rollout.mask_truncated=true", "rollout.max_new_tokens=2", "model.finetune=full", "optim.lr=1e-3",
            "optim.max_grad_norm=0.003", "output.checkpoint_every=2")
    _run([sys.executable], "gkd", *_sets(tiny_model_dir, tmp_path, "one", *full))
    _run(TORCHRUN, "gkd", *_sets(tiny_model_dir, tmp_path, "two", *full, FSDP,
                                 "model.gradient_checkpointing=true"))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["processes"] for m in two] == [2, 2, 2]
    assert all(m["grad_norm"] > 0.003 for m in one)  # clipping binds at every step
    # GKD's seeded coins give rank 0 only sampled (masked) rows at step 1, rank 1 a gold one
    assert [m["rollout/on_policy_rows"] for m in two] == [3, 1, 2]
    assert all(m["rollout/truncated_rate"] == 1 for m in one + two)
    for a, b in zip(one, two, strict=True):
        for key in COMPARED:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-8), (a["step"], key)
    want = _weights(tmp_path / "one", 3)
    assert "model.layers.0.mlp.up_proj.weight" in want
    torch.testing.assert_close(_weights(tmp_path / "two", 3), want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(want["model.layers.0.mlp.up_proj.weight"],
                           _weights(tmp_path / "one", 2)["model.layers.0.mlp.up_proj.weight"])  # it trained

    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "two", run, ignore=shutil.ignore_patterns("summary.json", "training.png"))
    shutil.rmtree(run / "checkpoints" / "step-000003")
    (run / "metrics.jsonl").write_text("\n".join((run / "metrics.jsonl").read_text().splitlines()[:2]) + "\n")
    _run(TORCHRUN, "--resume", str(run))
    for a, b in zip(_metrics(run), two, strict=True):
        for key in COMPARED:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    torch.testing.assert_close(_weights(run, 3), _weights(tmp_path / "two", 3), rtol=1e-6, atol=1e-7)


def test_fsdp_sampling_with_lora_matches_replicas(tiny_model_dir, tmp_path):
    """SDFT with LoRA (the adapter sharded with its layers): each rank samples its own rows from
    whole weights gathered for generation, the teacher (adapter switched off) scores them sharded,
    and rank 0 evaluates the gathered model. Every rank draws what it draws under "replicate", so
    the two runs log the same steps and score the same answers."""
    sets = ("eval.after=true", "eval.limit=4", "eval.max_new_tokens=4", "rollout.backend=fast")
    _run(TORCHRUN, "sdft", *_sets(tiny_model_dir, tmp_path, "replicate", *sets))
    _run(TORCHRUN, "sdft", *_sets(tiny_model_dir, tmp_path, "fsdp", *sets, FSDP))
    want, got = _metrics(tmp_path / "replicate"), _metrics(tmp_path / "fsdp")
    assert all(m["finite"] and m["rollout/on_policy_rows"] == 4 for m in got)
    for a, b in zip(got, want, strict=True):
        for key in COMPARED + ("rollout/completion_len", "rollout/repetition"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), (a["step"], key)
    items = [json.loads((tmp_path / name / "eval" / "after.json").read_text())["items"]
             for name in ("replicate", "fsdp")]
    assert items[0] == items[1] and len(items[0]) == 4
    torch.testing.assert_close(_weights(tmp_path / "fsdp", 3), _weights(tmp_path / "replicate", 3),
                               rtol=1e-5, atol=1e-6)


def _fsdp_clip_workers(rank: int, world: int, init_file: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from unisd.training import fsdp

    with _gloo_group(rank, world, init_file):
        mesh = init_device_mesh("cpu", (world,))
        full = [torch.arange(12.0).view(4, 3) - 5, torch.tensor([3.0, -4.0, 12.0])]  # sharded, whole
        reference = [torch.nn.Parameter(torch.zeros_like(g)) for g in full]
        for p, g in zip(reference, full):
            p.grad = g.clone()
        want = torch.nn.utils.clip_grad_norm_(reference, 2.0)
        sharded = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        sharded.grad = distribute_tensor(full[0], mesh, [Shard(0)])
        whole = torch.nn.Parameter(torch.zeros(3))
        whole.grad = full[1].clone()
        got = fsdp.clip_grad_norm_([sharded, whole], 2.0)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(sharded.grad.full_tensor(), reference[0].grad)
        torch.testing.assert_close(whole.grad, reference[1].grad)


def test_fsdp_clipping_takes_the_norm_over_shards_and_whole_tensors(tmp_path):
    torch.multiprocessing.spawn(_fsdp_clip_workers, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_fsdp_refuses_the_ema_teacher():
    from unisd.config import load_config

    load_config("sdft", [FSDP])
    load_config("ema", ["distributed.strategy=replicate"])
    with pytest.raises(ConfigError, match=r"strategy='fsdp' does not support teacher.weights='ema'"):
        load_config("ema", [FSDP])
    with pytest.raises(ConfigError, match=r"distributed.strategy: got 'zero3'"):
        load_config("sdft", ["distributed.strategy=zero3"])


def test_resume_under_another_strategy_is_refused(tmp_path):
    from unisd.training.checkpoint import MARKER, load_checkpoint

    path = tmp_path / "step-000002"
    path.mkdir()
    (path / MARKER).write_text("2")
    torch.save({"ranks": [{}, {}], "sharded": True}, path / "trainer_state.pt")
    with pytest.raises(ConfigError, match=r"written under distributed.strategy='fsdp'; resume it with "
                                          r"the same strategy, not 'replicate'"):
        load_checkpoint(path, model=None, optimizer=None, scheduler=None, teacher=None, rng=None,
                        world_size=2)


def _fsdp_forget_workers(rank: int, world: int, init_file: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from transformers import LlamaConfig, LlamaForCausalLM

    from unisd.scoring import decoder_and_head
    from unisd.training import fsdp

    with _gloo_group(rank, world, init_file):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
        fsdp._shard_layers(model, init_device_mesh("cpu", (world,)))
        root = decoder_and_head(model)[0]
        state = root._get_fsdp_state()
        ids = torch.arange(8).view(1, 8) + rank
        for hide in (False, True):  # with torch's reset_iter_state, and the fallback older torch takes
            model(input_ids=ids)  # a forward with grad recorded, no backward
            assert state._comm_ctx.post_forward_order, "the forward should have been recorded"
            saved = FSDPModule.__dict__.get("reset_iter_state")
            if hide and saved is not None:
                delattr(FSDPModule, "reset_iter_state")
            try:
                assert hasattr(root, "reset_iter_state") != hide
                fsdp.forget_forwards(root)
            finally:
                if hide and saved is not None:
                    FSDPModule.reset_iter_state = saved
            assert not state._comm_ctx.post_forward_order
        model(input_ids=ids).logits.sum().backward()  # the next step still trains
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fsdp_forgets_recorded_forwards_on_every_torch(tmp_path):
    torch.multiprocessing.spawn(_fsdp_forget_workers, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
