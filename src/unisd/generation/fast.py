"""The fast backend: our own decode loop over transformers' `StaticCache`, one CUDA graph per step.

How a batch is decoded:
1. Prompts are left-padded into a batch of a bucketed size (filler rows are born finished) and
   prefilled once into a `StaticCache` of a bucketed length L (eagerly; on CUDA replayed from a CUDA
   graph per prompt width, `graph_prefill`). Slot s of the cache holds the s-th column of the padded
   sequence for every row, so all rows write the same slot each step.
2. Each decode step - mark the new slot in the [B, L] attention mask, advance the position ids,
   run the model on one token per row, sample on the device, write the token, update `finished` -
   touches only preallocated buffers. On CUDA the step is captured once into a `torch.cuda.CUDAGraph`
   (after a warm-up on a side stream) and replayed; the step (model forward, sampling, bookkeeping)
   is compiled whole with `torch.compile` to fuse its small kernels. On CPU the same function runs
   eagerly, so the CPU tests check the logic that the graph replays (and, with compile=True, the
   compiled step).
3. The host syncs only every `check_every` steps, to stop once every row is finished and, when at
   most half the rows are still running, to compact: alive rows move to the front of every buffer
   and of the KV cache, and the loop continues with the graph of the smaller bucket, whose buffers
   and cache are views of the first rows of the big ones (no new memory).

Greedy outputs equal HF `generate`: position ids are HF's (mask.cumsum - 1), the attention mask is
the same 2D mask HF extends each step (transformers builds the 4D mask from it inside the step),
and finished rows keep decoding pad tokens exactly as HF does. On GPU the compiled forward fuses
ops differently from eager, so bf16 logits differ in the last bits and near-ties can flip; exact
agreement is a float32 property.

Graphs, buffers and caches are kept per (batch bucket, cache length) and reused across calls, as
long as the model's parameter tensors are the same objects in memory: in-place updates (optimizer
steps, LoRA training) are seen by the graph, but reallocating parameters (`.to(...)`, loading a
new state dict by assignment) or switching adapters on or off drops every graph, which is then
re-captured. Only full-attention decoder models are supported (no sliding-window cache layers);
attention implementations "sdpa" and "eager" are the ones checked. While it decodes, an "sdpa" model
is switched to `GROUPED_SDPA` (`unisd.generation.attention`), which avoids HF
materialising K/V per query head at every step; the model's config is restored afterwards.

Cost and speed (H200, SmolLM2-135M architecture, bf16, batch 64 x 128 new tokens, 2026-11-29;
benchmarks/results/session7_h200/, docs/benchmarks.md): the first call per dtype compiles the step
(60-83 s of warm-up measured); then 53-55k tok/s (HF generate in the same run: 2.4k default cache,
13.0k static): 1.05 ms per decode step, bound by kernel count rather than memory bandwidth, a 10 ms
prompt pass (HF's eager element-wise kernels, graphed) and 5-9 ms of host time. `fuse` (q/k/v and
gate/up read through one GEMM each, `unisd.generation.fused`; default on CUDA) saves 0.31 ms per
step, the Triton decode attention (`unisd.generation.triton_attention`; default where Triton runs)
0.28 ms against cuDNN's (0.21 ms in session 5, 0.07 ms more with session 7's launch settings),
inductor's combo kernels (`compile_options`' default) 0.1 ms, and `graph_prefill` (the eager prompt
pass captured in a CUDA graph per (batch, width) bucket; default on CUDA) about 40 ms per call.
`compile_prefill` (12 ms, but a two-minute compile) stays off.

Shapes: B batch rows (bucketed), P prompt width, L cache length, T max new tokens, V vocabulary.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from unisd.generation._util import (check_params, cut_at_eos, left_pad, model_device, position_ids_from_mask,
                                    seeded, unwrap_model)
from unisd.generation import triton_attention
from unisd.generation.attention import SDPA_BACKENDS, STANDALONE_BACKENDS, decode_backends, grouped_attention
from unisd.generation.base import SamplingParams
from unisd.generation.fused import DecodeWeights

_MAX_EOS = 8  # eos ids live in a fixed-size buffer (padded with -1) so graphs do not depend on their count


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _reset_write_counters(cache: Any) -> None:
    """Point every initialised layer of a StaticCache back at slot 0 (its next write starts there)."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.cumulative_length.zero_()


def batch_bucket(n: int, min_bucket: int) -> int:
    """Rows a batch of `n` is padded to: a power of two up to 64, then a multiple of 64."""
    n = max(n, min_bucket)
    return 1 << (n - 1).bit_length() if n <= 64 else _round_up(n, 64)


# ----- the pieces of one decode step (run eagerly, or captured into a graph) ---------------------

def _forward_last_logits(model: torch.nn.Module, cache_kwargs: dict[str, Any], input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the last position, [B, V]. `cache_kwargs` is {"cache"|"past_key_values": cache}."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **cache_kwargs)
    return out.logits[:, -1, :].float()


def _prefill_last_logits(model: torch.nn.Module, cache_kwargs: dict[str, Any], input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """`_forward_last_logits` for the prompt pass. A code object of its own, because torch.compile
    caches graphs per code object: the prefill's (dynamic batch and width) stay apart from the decode
    step's."""
    return _forward_last_logits(model, cache_kwargs, input_ids, attention_mask, position_ids)


def _record_tokens(logits: torch.Tensor, mode: str, tokens: torch.Tensor, finished: torch.Tensor,
                   out: torch.Tensor, step: torch.Tensor, eos: torch.Tensor, pad: torch.Tensor,
                   temperature: torch.Tensor, top_p: torch.Tensor) -> None:
    """Sample the next token of every row and write it: into `out` at column `step`, into `tokens`
    (the next step's input), and into `finished` when it is an EOS id. Finished rows emit pad, as HF."""
    new = sample_tokens(logits, mode, temperature, top_p)
    new = torch.where(finished, pad, new)
    out.index_copy_(1, step.view(1), new[:, None])
    finished |= (new[:, None] == eos[None, :]).any(-1)
    tokens.copy_(new[:, None])
    step.add_(1)


def _decode_step(forward: Callable[..., torch.Tensor], model: torch.nn.Module, cache_kwargs: dict[str, Any],
                 mode: str, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 finished: torch.Tensor, out: torch.Tensor, slot: torch.Tensor, step: torch.Tensor,
                 eos: torch.Tensor, pad: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> None:
    """One token for every row; reads and writes preallocated tensors only (what the CUDA graph
    captures). Compiled whole by default, so sampling and bookkeeping fuse with the forward's tail."""
    mask.index_fill_(1, slot.view(1), 1)
    positions.add_(1)
    logits = forward(model, cache_kwargs, tokens, mask, positions)
    slot.add_(1)
    _record_tokens(logits, mode, tokens, finished, out, step, eos, pad, temperature, top_p)


class _GpuTimer:
    """GPU time of consecutive phases of one call, from CUDA events (no host sync until `totals`,
    which runs after the call has synced anyway). Does nothing off CUDA."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []

    def _event(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, name: str) -> None:
        """End the running phase, if any, and start `name`."""
        if not self.on:
            return
        self.stop()
        self.spans.append((name, self._event(), None))

    def stop(self) -> None:
        if self.on and self.spans and self.spans[-1][2] is None:
            name, begin, _ = self.spans[-1]
            self.spans[-1] = (name, begin, self._event())

    def totals(self) -> dict[str, float]:
        """Milliseconds per phase name, summed over the call's batches."""
        self.stop()
        out: dict[str, float] = {}
        for name, begin, end in self.spans:
            end.synchronize()
            out[name] = round(out.get(name, 0.0) + begin.elapsed_time(end), 3)
        return out


def _exponential_race(logits: torch.Tensor) -> torch.Tensor:
    """One categorical sample per row from softmax(logits), without a host sync: argmax p_i / E_i with
    E_i ~ Exp(1) picks i with probability p_i (gpt-fast's multinomial_sample_one_no_sync)."""
    probs = logits.softmax(-1)
    noise = torch.empty_like(probs).exponential_().clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / noise).argmax(-1)


def sample_tokens(logits: torch.Tensor, mode: str, temperature: torch.Tensor,
                  top_p: torch.Tensor) -> torch.Tensor:
    """Next token per row, [B, V] float32 -> [B] long.

    mode "greedy": argmax (HF's greedy). "sample": softmax(logits / temperature). "top_p": the same,
    restricted to the smallest set of most likely tokens whose mass reaches top_p (HF's TopPLogitsWarper:
    a token is dropped when the mass strictly above it is already >= top_p; the top token always stays).
    """
    if mode == "greedy":
        return logits.argmax(-1)
    logits = logits / temperature
    if mode == "sample":
        return _exponential_race(logits)
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_above = probs.cumsum(-1) - probs  # exactly 0 for the top token
    sorted_logits = sorted_logits.masked_fill(mass_above >= top_p, float("-inf"))
    choice = _exponential_race(sorted_logits)
    return sorted_idx.gather(-1, choice[:, None]).squeeze(-1)


def _sampling_mode(params: SamplingParams) -> str:
    if params.temperature == 0:
        return "greedy"
    return "sample" if params.top_p >= 1 else "top_p"


def _model_state(base: torch.nn.Module) -> tuple:
    """What the captured graphs bake in: every parameter's memory, dtype and shape, and the on/off,
    active names and merged flag of every peft adapter layer. One walk over `_modules` (what
    `parameters()` and `modules()` walk too, without their generator layers: those two took ~6 ms of
    host time per call for SmolLM2's 800 modules)."""
    params, adapters = [], []
    stack, seen = [base], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        params.extend((p.data_ptr(), p.dtype, p.shape) for p in m._parameters.values() if p is not None)
        # a property on peft's layers (a method on HF models): looked up on the class, since asking
        # each of a LoRA model's modules (2,499 for 30 layers, all-linear) goes through
        # nn.Module.__getattr__'s failing path
        if isinstance(getattr(type(m), "active_adapters", None), property):
            adapters.append((bool(getattr(m, "disable_adapters", False)), tuple(m.active_adapters),
                             bool(getattr(m, "merged", False))))
        stack.extend(c for c in reversed(m._modules.values()) if c is not None)
    return tuple(params), tuple(adapters)


# ----- per-shape state ---------------------------------------------------------------------------

@dataclass
class _Rows:
    """The first `n` rows of a workspace: views of its buffers, and a cache over the same KV memory."""

    n: int
    cache: Any  # transformers StaticCache
    tokens: torch.Tensor      # [n, 1] long: the token fed to the next step
    positions: torch.Tensor   # [n, 1] long: its position id
    mask: torch.Tensor        # [n, L] long: 1 for prompt tokens and written slots
    finished: torch.Tensor    # [n] bool
    out: torch.Tensor         # [n, L] long: generated tokens, column t = step t
    row_ids: torch.Tensor     # [n] long: which input row each buffer row holds (compaction permutes)


@dataclass
class _PrefillGraph:
    """A captured prompt pass for one prompt width: static inputs, the logits it writes, the graph."""

    input_ids: torch.Tensor   # [B, P] long
    mask: torch.Tensor        # [B, P] long
    positions: torch.Tensor   # [B, P] long
    logits: torch.Tensor      # [B, V] float32, in the graph pool: read before any other graph runs
    graph: Any


@dataclass
class _Workspace:
    """Everything one (batch bucket B, cache length L) needs; all tensors are allocated once."""

    batch: int
    cache_len: int
    full: _Rows
    slot: torch.Tensor         # [] long: cache slot the next step writes
    step: torch.Tensor         # [] long: output column the next sample goes to
    eos: torch.Tensor          # [_MAX_EOS] long, padded with -1
    pad: torch.Tensor          # [] long
    temperature: torch.Tensor  # [] float32
    top_p: torch.Tensor        # [] float32
    views: dict[int, _Rows] = field(default_factory=dict)
    graphs: dict[tuple[int, str], Any] = field(default_factory=dict)
    prefills: dict[int, _PrefillGraph] = field(default_factory=dict)
    pool: Any = None
    """CUDA graph memory pool shared by this workspace's graphs (they never run concurrently; only
    a prompt pass leaves a result in pool memory, its logits, which are sampled from before the next
    graph runs). Per workspace: a pool must not be reused once every graph holding it has been freed."""

    def rows(self, n: int) -> _Rows:
        return self.full if n == self.batch else self.views[n]

    def graph_pool(self) -> Any:
        """`pool`, created on first use."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        return self.pool

    def state(self) -> list[torch.Tensor]:
        """The tensors a step mutates besides the KV cache contents."""
        f = self.full
        return [f.tokens, f.positions, f.mask, f.finished, f.out, f.row_ids, self.slot, self.step,
                *(layer.cumulative_length for layer in f.cache.layers)]


class FastGenerator:
    """`Generator` with a static KV cache, on-device sampling and (on CUDA) a CUDA-graphed decode step.

    Args:
        compile: torch.compile the model forward inside the step (default: on CUDA only). If compiling
            fails, the step falls back to the eager forward with a warning.
        cuda_graph: capture the step in a CUDA graph (default: on CUDA).
        check_every: steps between host syncs (stop when all rows are finished; maybe compact).
        compact: move finished rows out of the running batch when at most half are still running.
        min_bucket: smallest batch bucket (graphs are captured per bucket).
        cache_len_multiple: the cache length (prompt width + max_new_tokens) is rounded up to this, so
            calls with similar lengths reuse the same graphs.
        max_batch: prompts decoded together at most; larger inputs are split (None: no limit).
        max_workspaces: (bucket, length) shapes kept alive; the least recently used is freed.
        fuse: decode with `unisd.generation.fused.DecodeWeights` (q/k/v and gate/up as one GEMM each,
            LoRA adapters batched per group; default: when compiling, i.e. on CUDA). Costs a copy of
            the projection weights; checked once per model against the unfused logits.
        compile_step: when compiling, compile the whole decode step (sampling and bookkeeping fused
            with the forward's tail) rather than the model forward alone.
        compile_prefill: when compiling, compile the prompt pass too (dynamic batch and width: one
            compile of about two minutes on an H200, then 12 ms instead of about 30 ms per call at
            batch 64; off by default for that compile time).
        graph_prefill: on CUDA, capture the prompt pass in a CUDA graph per prompt width (widths
            rounded up to `prefill_width_multiple`; more left padding, masked out), replayed instead
            of HF's Python-bound eager forward (default: whenever the decode step is graphed, i.e. on
            CUDA). Falls back to the plain prompt pass, with a warning, if capturing fails.
        prefill_width_multiple: prompt widths are rounded up to this with `graph_prefill`.
        attention: SDPA backends the one-token decode attention of an "sdpa" model with grouped KV heads
            may use ("flash", "efficient", "cudnn", "math"; math stays allowed as the fallback), or
            ["flex"]: FlexAttention (its decoding kernel when compiled), or ["triton"]: unisd's Triton
            kernel (`unisd.generation.triton_attention`; SDPA where Triton is missing). []: torch's
            own SDPA choice. None (default): the Triton kernel where it can run, else torch's choice.
        compile_mode: torch.compile's `mode` for the step and the prompt pass (None: its default). The
            step is graphed by this class, so give a mode without CUDA graphs, e.g.
            "max-autotune-no-cudagraphs" (inductor benchmarks Triton GEMM templates against cuBLAS and
            may fuse the pointwise tails into them; a longer compile).
        compile_options: inductor options for the step and the prompt pass (torch.compile's `options`;
            not with `compile_mode`). None (default): {"combo_kernels": True} when no `compile_mode`
            is given: independent small kernels (RoPE of q and of k, the KV-cache writes, the 30
            layers' cache write counters) launched as one, 0.09-0.11 ms off SmolLM2's 1.15 ms
            batch-64 step (docs/benchmarks.md, session 7). {} turns it off.
    """

    def __init__(self, *, compile: bool | None = None, cuda_graph: bool | None = None, check_every: int = 8,
                 compact: bool = True, min_bucket: int = 8, cache_len_multiple: int = 128,
                 max_batch: int | None = None, max_workspaces: int = 4, fuse: bool | None = None,
                 compile_step: bool = True, compile_prefill: bool = False, graph_prefill: bool | None = None,
                 prefill_width_multiple: int = 32, attention: Sequence[str] | None = None,
                 compile_mode: str | None = None, compile_options: dict[str, Any] | None = None):
        if check_every < 1 or min_bucket < 1 or cache_len_multiple < 1 or prefill_width_multiple < 1:
            raise ValueError("check_every, min_bucket, cache_len_multiple and prefill_width_multiple must be >= 1")
        unknown = sorted(set(attention or ()) - set(SDPA_BACKENDS))
        if unknown:
            raise ValueError(f"unknown attention backend(s) {unknown}; choose from {sorted(SDPA_BACKENDS)}")
        alone = [n for n in attention or () if n in STANDALONE_BACKENDS]
        if alone and len(set(attention)) > 1:
            raise ValueError(f"attention {alone[0]!r} replaces SDPA: give it alone, got {list(attention)}")
        if compile_mode is not None and compile_mode not in ("default", "reduce-overhead", "max-autotune",
                                                              "max-autotune-no-cudagraphs"):
            raise ValueError(f"unknown compile_mode {compile_mode!r}")
        if compile_mode in ("reduce-overhead", "max-autotune") and cuda_graph is not False:
            raise ValueError(f"compile_mode {compile_mode!r} captures CUDA graphs of its own; this class "
                             "graphs the step itself: use 'max-autotune-no-cudagraphs' (or cuda_graph=False)")
        if compile_options and compile_mode is not None:
            raise ValueError("give compile_mode or compile_options, not both (torch.compile takes one)")
        self.compile = compile
        self.compile_mode = compile_mode
        if compile_options is None and compile_mode is None:
            compile_options = {"combo_kernels": True}
        self.compile_options = dict(compile_options) if compile_options else None
        self.compile_step = compile_step
        self.compile_prefill = compile_prefill
        self.graph_prefill = graph_prefill
        self.prefill_width_multiple = prefill_width_multiple
        self.attention = tuple(attention) if attention is not None else None
        self.cuda_graph = cuda_graph
        self.check_every = check_every
        self.compact = compact
        self.min_bucket = min_bucket
        self.cache_len_multiple = cache_len_multiple
        self.max_batch = max_batch
        self.max_workspaces = max_workspaces
        self.fuse = fuse
        self.last_stats: dict[str, Any] = {}
        """Of the last call: decode steps run, compactions, graphs captured, buckets used; on CUDA also
        the GPU time of the prompt passes and of the decode loops (`prefill_ms`, `decode_ms`)."""
        self._fingerprint: tuple | None = None
        self._workspaces: OrderedDict[tuple[int, int], _Workspace] = OrderedDict()
        self._step: Callable[..., None] = _decode_step
        self._forward: Callable[..., torch.Tensor] = _forward_last_logits  # what the step calls
        self._prefill: Callable[..., torch.Tensor] = _forward_last_logits
        self._compiled = False
        self._weights: DecodeWeights | None = None
        self._fuse_ok: dict[int, bool] = {}  # id() of a model -> did its fused logits match (checked once)

    # ----- public API ------------------------------------------------------------------------------

    def generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 eos_token_ids: Sequence[int], pad_token_id: int,
                 rng: torch.Generator | None = None) -> list[list[int]]:
        if not prompts:
            return []
        check_params(params, prompts)
        if len(eos_token_ids) > _MAX_EOS:
            raise ValueError(f"at most {_MAX_EOS} eos ids are supported, got {len(eos_token_ids)}")
        base = unwrap_model(model)
        device = model_device(base)
        self._prepare(base, device)
        self.last_stats = {"steps": 0, "compactions": 0, "graphs_captured": 0, "buckets": []}
        self._timer = _GpuTimer(device)
        chunk = self.max_batch or len(prompts)
        out: list[list[int]] = []
        with (seeded(rng, device), torch.no_grad(), grouped_attention(base), self._fused_projections(),
              decode_backends(self._decode_attention(device))):
            for lo in range(0, len(prompts), chunk):
                out.extend(self._generate_batch(base, device, prompts[lo:lo + chunk], params,
                                                list(eos_token_ids), pad_token_id))
        self.last_stats.update(self._timer.totals())
        return out

    def _decode_attention(self, device: torch.device) -> tuple[str, ...] | None:
        """The decode attention's backends: as given, else the Triton kernel where it runs (on an H200
        at batch 64: 9.9 us per layer where cuDNN's SDPA took 13.6 with its memset), else torch's
        SDPA choice."""
        if self.attention is not None:
            return self.attention or None
        return ("triton",) if triton_attention.available(device) else None

    def clear(self) -> None:
        """Free every cached graph, KV cache and buffer."""
        self._workspaces.clear()
        self._fingerprint = None
        self._weights = None

    @contextlib.contextmanager
    def _fused_projections(self) -> Iterator[None]:
        """Decode through `DecodeWeights` (refreshed from the current weights), when enabled."""
        weights = self._weights
        if not weights:  # None, or a model without projections to fuse
            yield
            return
        weights.refresh()
        with weights.patched():
            yield

    def _check_fused(self, base: torch.nn.Module, device: torch.device, weights: DecodeWeights) -> bool:
        """Do the patched and the original model give the same logits? (A model that called its
        projections in another order than q, k, v / gate, up would read a stale product.)"""
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, int(base.config.vocab_size), (2, 6), generator=g).to(device)
        with torch.no_grad():
            ref = base(input_ids=ids, use_cache=False).logits.float()
            try:
                with weights.patched():
                    got = base(input_ids=ids, use_cache=False).logits.float()
            except RuntimeError:  # a shim called out of order
                return False
        # loose enough for bf16 rounding differences, far below what a wrong product would give
        return bool(torch.allclose(got, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()) + 1e-6))

    # ----- setup -----------------------------------------------------------------------------------

    def _prepare(self, base: torch.nn.Module, device: torch.device) -> None:
        """Drop cached graphs when the model's parameters or adapter state changed; set up compile."""
        fingerprint = (id(base), base.training, *_model_state(base))
        on_cuda = device.type == "cuda"
        use_compile = on_cuda if self.compile is None else self.compile
        if fingerprint != self._fingerprint:
            self._workspaces.clear()
            self._fingerprint = fingerprint
            self._weights = None
            if (use_compile if self.fuse is None else self.fuse) and self._fuse_ok.get(id(base), True):
                # rebuilt with every fingerprint change (which adapters are live is part of its shape;
                # under FSDP every step gathers new tensors), checked against the model once
                self._weights = DecodeWeights(base)
                if self._weights and id(base) not in self._fuse_ok:
                    self._fuse_ok[id(base)] = self._check_fused(base, device, self._weights)
                    if not self._fuse_ok[id(base)]:
                        import warnings

                        warnings.warn(f"{type(base).__name__}: fused decode projections do not reproduce the "
                                      "model's logits; decoding without them", stacklevel=3)
                        self._weights = None
        if use_compile and not self._compiled:
            dynamo = torch._dynamo.config
            # one compile per (dtype, cache length); batch buckets share it through a dynamic batch dim
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo, name):
                    setattr(dynamo, name, max(getattr(dynamo, name), 64))
            how = {"mode": self.compile_mode, "options": self.compile_options}
            if self.compile_step:
                self._step = torch.compile(_decode_step, **how)
            else:
                self._forward = torch.compile(_forward_last_logits, **how)
            if self.compile_prefill:
                self._prefill = torch.compile(_prefill_last_logits, dynamic=True, **how)
            self._compiled = True
        self._use_graph = on_cuda if self.cuda_graph is None else (self.cuda_graph and on_cuda)
        self._base = base
        sig = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in sig else "past_key_values"  # renamed in transformers 5.2x
        self._logits_kw = {"logits_to_keep": 1} if "logits_to_keep" in sig else {}

    def _workspace(self, base: torch.nn.Module, device: torch.device, batch: int,
                   cache_len: int) -> _Workspace:
        key = (batch, cache_len)
        if key in self._workspaces:
            self._workspaces.move_to_end(key)
            return self._workspaces[key]
        while len(self._workspaces) >= self.max_workspaces:
            self._workspaces.popitem(last=False)
        from transformers import StaticCache

        cache = StaticCache(config=base.config, max_cache_len=cache_len)
        if any(getattr(layer, "is_sliding", False) or not hasattr(layer, "cumulative_length")
               for layer in cache.layers):
            raise NotImplementedError("FastGenerator supports full-attention models only; "
                                      "use the 'hf' backend")
        long = dict(dtype=torch.long, device=device)
        full = _Rows(n=batch, cache=cache, tokens=torch.zeros((batch, 1), **long),
                     positions=torch.zeros((batch, 1), **long), mask=torch.zeros((batch, cache_len), **long),
                     finished=torch.zeros(batch, dtype=torch.bool, device=device),
                     out=torch.zeros((batch, cache_len), **long), row_ids=torch.arange(batch, device=device))
        ws = _Workspace(batch=batch, cache_len=cache_len, full=full, slot=torch.zeros((), **long),
                        step=torch.zeros((), **long), eos=torch.full((_MAX_EOS,), -1, **long),
                        pad=torch.zeros((), **long), temperature=torch.ones((), device=device),
                        top_p=torch.ones((), device=device))
        self._workspaces[key] = ws
        return ws

    def _rows_view(self, ws: _Workspace, n: int) -> _Rows:
        """Rows [:n] of `ws`, with a StaticCache whose layers alias the first n rows of the full cache."""
        if n == ws.batch or n in ws.views:
            return ws.rows(n)
        from transformers import StaticCache

        f = ws.full
        cache = StaticCache(config=self._base.config, max_cache_len=ws.cache_len)
        for small, big in zip(cache.layers, f.cache.layers):
            # sets dims and device (and allocates, replaced on the next line)
            small.lazy_initialization(big.keys[:n], big.values[:n])
            small.keys, small.values = big.keys[:n], big.values[:n]
            small.cumulative_length = big.cumulative_length  # one write counter for all views
        rows = _Rows(n=n, cache=cache, tokens=f.tokens[:n], positions=f.positions[:n], mask=f.mask[:n],
                     finished=f.finished[:n], out=f.out[:n], row_ids=f.row_ids[:n])
        self._mark_dynamic(rows)
        ws.views[n] = rows
        return rows

    def _mark_dynamic(self, rows: _Rows) -> None:
        """Let torch.compile treat the batch dim as dynamic, so buckets share one compiled forward."""
        if not self._compiled:
            return
        for t in (rows.tokens, rows.positions, rows.mask, rows.finished, rows.out,
                  *(x for layer in rows.cache.layers for x in (layer.keys, layer.values))):
            torch._dynamo.maybe_mark_dynamic(t, 0)

    # ----- decoding --------------------------------------------------------------------------------

    def _generate_batch(self, base: torch.nn.Module, device: torch.device, prompts: Sequence[Sequence[int]],
                        params: SamplingParams, eos: list[int], pad: int) -> list[list[int]]:
        mode = _sampling_mode(params)
        batch = batch_bucket(len(prompts), self.min_bucket)
        width = max(len(p) for p in prompts)
        # one captured prompt pass per bucketed width (explicitly asked for off CUDA: the same
        # widths, run eagerly)
        graph_prefill = self._use_graph if self.graph_prefill is None else self.graph_prefill
        if graph_prefill:
            width = _round_up(width, self.prefill_width_multiple)
        input_ids, prompt_mask = left_pad(prompts, pad, device, rows=batch, width=width)
        width, new = input_ids.shape[1], params.max_new_tokens
        ws = self._workspace(base, device, batch, _round_up(width + new, self.cache_len_multiple))
        self.last_stats["buckets"].append(batch)

        # reset the shared state and load the prompts
        f = ws.full
        _reset_write_counters(f.cache)
        f.mask.zero_()
        f.mask[:, :width] = prompt_mask
        f.out.fill_(pad)
        f.finished.copy_(torch.arange(batch, device=device) >= len(prompts))
        f.row_ids.copy_(torch.arange(batch, device=device))
        ws.slot.fill_(width)
        ws.step.zero_()
        ws.eos.fill_(-1)
        ws.eos[:len(eos)] = torch.tensor(eos, dtype=torch.long)
        ws.pad.fill_(pad)
        ws.temperature.fill_(max(params.temperature, 1e-6))
        ws.top_p.fill_(params.top_p)

        # prefill: HF builds the causal + padding mask from the 2D prompt mask
        self._timer.start("prefill_ms")
        positions = position_ids_from_mask(prompt_mask)
        kwargs = {self._cache_kw: f.cache, **self._logits_kw}
        if graph_prefill and self._use_graph:
            logits = self._graphed_prefill(ws, kwargs, input_ids, prompt_mask, positions)
        else:
            logits = self._prefill_logits(base, kwargs, input_ids, prompt_mask, positions)
        f.positions.copy_(positions[:, -1:])
        self._mark_dynamic(f)
        _record_tokens(logits, mode, f.tokens, f.finished, f.out, ws.step, ws.eos, ws.pad, ws.temperature,
                       ws.top_p)
        self._timer.start("decode_ms")

        n = batch
        for step in range(1, new):
            if step % self.check_every == 1 or self.check_every == 1:
                alive = int((~ws.rows(n).finished).sum())  # host sync
                if alive == 0:
                    break
                target = batch_bucket(alive, self.min_bucket)
                if self.compact and target <= n // 2:
                    self._compact(ws, n, target)
                    n = target
                    self.last_stats["compactions"] += 1
            self._run_step(ws, n, mode)
            self.last_stats["steps"] += 1
        self._timer.stop()

        out = f.out[:, :new].tolist()
        row_ids = f.row_ids.tolist()
        by_row: list[list[int]] = [[] for _ in range(batch)]
        for i, r in enumerate(row_ids):
            by_row[r] = out[i]
        return [cut_at_eos(row, eos, new) for row in by_row[:len(prompts)]]

    def _compact(self, ws: _Workspace, n: int, m: int) -> None:
        """Permute rows [:n] so running rows come first, then continue on rows [:m] (m >= running rows).
        Finished rows keep their outputs further down; their KV entries are no longer needed."""
        f = ws.full
        order = torch.argsort(f.finished[:n].int(), stable=True)
        for buf in (f.tokens, f.positions, f.mask, f.finished, f.out, f.row_ids):
            buf[:n] = buf[:n][order]
        keep = order[:m]
        for layer in f.cache.layers:
            layer.keys[:m] = layer.keys[:n].index_select(0, keep)
            layer.values[:m] = layer.values[:n].index_select(0, keep)

    def _prefill_logits(self, base: torch.nn.Module, cache_kwargs: dict[str, Any], input_ids: torch.Tensor,
                        mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        try:
            return self._prefill(base, cache_kwargs, input_ids, mask, positions)
        except Exception as err:  # noqa: BLE001 - a compile failure: warn and stay eager from now on
            if self._prefill is _forward_last_logits:
                raise
            import warnings

            warnings.warn(f"torch.compile of the prompt pass failed ({type(err).__name__}: {err}); "
                          "prefilling eagerly", stacklevel=3)
            self._prefill = _forward_last_logits
            return self._prefill(base, cache_kwargs, input_ids, mask, positions)

    def _graphed_prefill(self, ws: _Workspace, kwargs: dict[str, Any], input_ids: torch.Tensor,
                         mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The prompt pass replayed from this width's graph (captured on first use)."""
        entry = ws.prefills.get(input_ids.shape[1])
        if entry is None:
            if not all(layer.is_initialized for layer in ws.full.cache.layers):
                # a new workspace's first pass allocates its KV cache, on this stream; capture next time
                return self._prefill_logits(self._base, kwargs, input_ids, mask, positions)
            entry = self._capture_prefill(ws, kwargs, input_ids, mask, positions)
            if entry is None:  # capture failed: graph_prefill is now off
                return self._prefill_logits(self._base, kwargs, input_ids, mask, positions)
            ws.prefills[input_ids.shape[1]] = entry
        entry.input_ids.copy_(input_ids)
        entry.mask.copy_(mask)
        entry.positions.copy_(positions)
        entry.graph.replay()
        return entry.logits

    def _capture_prefill(self, ws: _Workspace, kwargs: dict[str, Any], input_ids: torch.Tensor, mask: torch.Tensor,
                         positions: torch.Tensor) -> _PrefillGraph | None:
        """Warm up on a side stream, then capture one prompt pass. The warm-up writes the KV cache and
        advances its write counters, which are reset after (the replay writes the same slots).

        Why a replay computes the same as an eager pass: all that differs between two calls of one
        (batch, width) bucket is the input ids, mask and positions, which are copied into the
        captured buffers first, and the cache's write counters, reset to 0 before every prompt
        pass (on transformers versions where they are Python ints, the captured 0 is the right
        value too). The decode step reads the KV cache the replay wrote: the same tensors."""
        device = input_ids.device
        inputs = [input_ids.clone(), mask.clone(), positions.clone()]
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                self._prefill_logits(self._base, kwargs, *inputs)
            torch.cuda.current_stream(device).wait_stream(stream)
            _reset_write_counters(ws.full.cache)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=ws.graph_pool()):
                logits = self._prefill_logits(self._base, kwargs, *inputs)
        except Exception as err:  # noqa: BLE001 - e.g. a host sync inside the forward: stay uncaptured
            import warnings

            warnings.warn(f"capturing the prompt pass in a CUDA graph failed ({type(err).__name__}: {err}); "
                          "prefilling without a graph", stacklevel=4)
            self.graph_prefill = False
            return None
        finally:  # the caller's pass (a replay, or the eager fallback) writes from slot 0
            _reset_write_counters(ws.full.cache)
        self.last_stats["graphs_captured"] += 1
        return _PrefillGraph(*inputs, logits=logits, graph=graph)

    def _step_once(self, ws: _Workspace, rows: _Rows, mode: str) -> None:
        """One token for rows [:n] (`_decode_step` on this workspace's buffers)."""
        self._step(self._forward, self._base, {self._cache_kw: rows.cache}, mode, rows.tokens, rows.positions,
                   rows.mask, rows.finished, rows.out, ws.slot, ws.step, ws.eos, ws.pad, ws.temperature, ws.top_p)

    def _run_step(self, ws: _Workspace, n: int, mode: str) -> None:
        rows = self._rows_view(ws, n)
        if not self._use_graph:
            self._step_once(ws, rows, mode)
            return
        graph = ws.graphs.get((n, mode))
        if graph is None:
            graph = self._capture(ws, rows, mode)
            ws.graphs[(n, mode)] = graph
        graph.replay()

    def _capture(self, ws: _Workspace, rows: _Rows, mode: str) -> Any:
        """Warm up on a side stream (compiles; state restored after each run), then capture one step."""
        saved = [t.clone() for t in ws.state()]

        def restore() -> None:
            for t, s in zip(ws.state(), saved):
                t.copy_(s)

        device = ws.slot.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.random.fork_rng(devices=[device]):  # warm-ups must not consume the caller's randomness
            with torch.cuda.stream(stream):
                for _ in range(2):
                    try:
                        self._step_once(ws, rows, mode)
                    except Exception as err:  # noqa: BLE001 - any compile failure: fall back to eager
                        if self._step is _decode_step and self._forward is _forward_last_logits:
                            raise
                        import warnings

                        warnings.warn(f"torch.compile of the decode step failed "
                                      f"({type(err).__name__}: {err}); "
                                      "falling back to the eager forward", stacklevel=3)
                        self._step, self._forward = _decode_step, _forward_last_logits
                        self.compile = False
                        restore()
                        self._step_once(ws, rows, mode)
                    restore()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=ws.graph_pool()):
                self._step_once(ws, rows, mode)
        restore()
        self.last_stats["graphs_captured"] += 1
        return graph
