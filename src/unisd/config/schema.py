"""Typed configuration of a run: every field documented once, here.

A run is `RunConfig`, made of one dataclass per concern. Recipes (YAML in `recipes/`) and
CLI overrides only set fields of these classes; no method has a trainer of its own.
`validate()` checks values and cross-field rules; each error names the dotted field and the
allowed values. Loading, overrides and dumping live in `config.io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the field (dotted path) and what is allowed."""


def _choice(path: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{path}: got {value!r}; allowed values: {', '.join(map(repr, allowed))}")


def _range(path: str, value: float, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> None:
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"{path}: got {value!r}; must lie in {lb}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}{rb}")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """A packaged alias (`unisd models`), a hub id, a local folder with safetensors, or a .gguf file."""
    dtype: str = "auto"
    """Weights dtype: "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16"."""
    finetune: str = "lora"
    """"lora" (peft adapter; the frozen base doubles as teacher with no second copy) or "full"."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; keep 0 for exact micro-batch invariance."""
    lora_targets: list[str] | None = None
    """Module names to adapt; None picks the attention and MLP projections for the architecture."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    compile: bool = False
    """torch.compile each decoder layer for the training forward and backward (`unisd.models.compile`):
    fused element-wise work, fewer saved tensors; the first steps pay the compilation."""
    attn_implementation: str | None = None
    """Passed to transformers ("sdpa", "eager", "flash_attention_2"); None lets it choose."""
    cudnn_attention: bool = False
    """Let SDPA use cuDNN's attention in the training forwards and backward (teacher scoring, student
    forward, backward and its recomputation). Off by default: on Hopper and newer GPUs torch 2.11
    puts cuDNN first for masked attention, and cuDNN builds an execution plan for every (batch, length)
    shape it has not seen (pytorch's MHA.cpp plan cache; modelscope/FunASR#3704), while a training
    step's lengths change every step. Measured on an H100 (SmolLM2-135M, checkpointed batch 16):
    0.23-0.35 s of CPU per step in cuDNN's attention against 2.2-3.4 ms for the memory-efficient kernel
    (docs/benchmarks.md, session 8). Flash, memory-efficient and math attention stay allowed.
    Sampling is not affected."""

    def validate(self, p: str = "model") -> None:
        _choice(f"{p}.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice(f"{p}.finetune", self.finetune, ("lora", "full"))
        _range(f"{p}.lora_r", self.lora_r, 1)
        _range(f"{p}.lora_dropout", self.lora_dropout, 0, 1, hi_open=True)
        if not self.name:
            raise ConfigError(f"{p}.name: must not be empty")


@dataclass
class DataConfig:
    task: str = "gsm8k"
    """Task name (`unisd tasks`)."""
    data_dir: str | None = None
    """Folder with the published files (layout of `shared/data`); None tries the hub."""
    task_args: dict[str, Any] = field(default_factory=dict)
    """Task-specific options, e.g. {"path": "my.jsonl", "prompt_field": "q"} for the jsonl task."""
    train_split: str = "train"
    """Split used for training."""
    train_limit: int | None = None
    """Use only the first N training rows (None: all)."""
    max_prompt_tokens: int = 1024
    """Longest prompt (student or teacher view) in tokens."""
    overlong: str = "drop"
    """What to do with a prompt over the limit: "drop" (counted and reported), "truncate" (keep
    the end of the prompt, counted and reported) or "error"."""
    shuffle: bool = True
    """Shuffle the training order each epoch (seeded)."""

    def validate(self, p: str = "data") -> None:
        _choice(f"{p}.overlong", self.overlong, ("drop", "truncate", "error"))
        _range(f"{p}.max_prompt_tokens", self.max_prompt_tokens, 8)
        if self.train_limit is not None:
            _range(f"{p}.train_limit", self.train_limit, 1)


@dataclass
class AuxContextConfig:
    kind: str = "none"
    """Auxiliary teacher contexts: "none", "random" (other examples as demonstrations),
    "retrieval" (nearest neighbours by sentence embedding) or "induced" (instructions the model
    writes from groups of demonstrations)."""
    k: int = 3
    """Number of auxiliary contexts per example."""
    embedder: str = "all-MiniLM-L6-v2"
    """Sentence embedder for retrieval: a hub id, local folder, or the packaged alias."""
    induced_group_size: int = 3
    """Demonstrations per group shown to the model when it writes an induced instruction."""
    induced_count: int = 16
    """How many induced instructions to write (each example then draws K of them)."""


@dataclass
class NegativeConfig:
    enabled: bool = False
    """Build a negative demonstration per example (written by the model itself) for the
    contrastive term."""
    max_new_tokens: int = 192
    """Length limit when the model writes a negative."""
    temperature: float = 0.7
    """Sampling temperature when writing negatives."""


@dataclass
class TeacherConfig:
    weights: str = "frozen_base"
    """Where teacher weights come from: "frozen_base" (the initial model; under LoRA the adapter
    is switched off, no second copy), "live" (the current student, detached) or "ema" (an
    exponential moving average of the student: an EMA adapter under LoRA, a shadow copy under
    full fine-tuning)."""
    context: str = "demonstration"
    """Primary teacher context: "demonstration" (prompt + gold worked solution, SDFT), "answer"
    (prompt + the ground-truth final answer only, OPSD) or "none" (the student prompt)."""
    template: str = (
        "{prompt}\n\nThis is an example of a correct response to the question:\n{demonstration}\n\n"
        "Carefully study the example, then solve the problem above with your own approach."
    )
    """Teacher user turn; placeholders {prompt} and {demonstration}. The negative teacher uses the
    same template with the negative demonstration."""
    ema_decay: float = 0.98
    """EMA: teacher <- decay * teacher + (1 - decay) * student, every `ema_every` steps."""
    ema_every: int = 1
    """EMA update interval in optimizer steps."""
    aux: AuxContextConfig = field(default_factory=AuxContextConfig)
    negative: NegativeConfig = field(default_factory=NegativeConfig)

    def validate(self, p: str = "teacher") -> None:
        _choice(f"{p}.weights", self.weights, ("frozen_base", "live", "ema"))
        _choice(f"{p}.context", self.context, ("demonstration", "answer", "none"))
        _range(f"{p}.ema_decay", self.ema_decay, 0, 1, hi_open=True)
        _range(f"{p}.ema_every", self.ema_every, 1)
        _choice(f"{p}.aux.kind", self.aux.kind, ("none", "random", "retrieval", "induced"))
        _range(f"{p}.aux.k", self.aux.k, 1)
        for name in ("{prompt}", "{demonstration}"):
            if name not in self.template:
                raise ConfigError(f"{p}.template: must contain the placeholder {name}")


@dataclass
class AgreementConfig:
    granularity: str = "none"
    """Multi-teacher agreement weights: "none", "token" or "sequence"."""
    stat: str = "var"
    """Disagreement across the K auxiliary teachers: "var" (variance) or "range" (max - min) of
    the sampled-token log-probs."""
    gamma: float = 1.0
    """Strength: weight = 1 / (1 + gamma * d / scale) for tokens, exp(-gamma * d / scale) for
    sequences."""
    scale: float = 1.0
    """Fixed disagreement scale (nats^2 for var, nats for range), so a weight does not depend on
    which other examples share the micro-batch."""
    min_weight: float = 0.01
    """Floor on every weight."""
    selective_fraction: float = 1.0
    """Run the K auxiliary forwards only for this fraction of the batch (the most uncertain
    examples); the rest get weight 1. 1.0 = all."""
    selective_by: str = "divergence"
    """Uncertainty used to choose them: "divergence" (primary teacher vs student) or "entropy"
    (student)."""

    def validate(self, p: str) -> None:
        _choice(f"{p}.granularity", self.granularity, ("none", "token", "sequence"))
        _choice(f"{p}.stat", self.stat, ("var", "range"))
        _range(f"{p}.gamma", self.gamma, 0)
        _range(f"{p}.scale", self.scale, 0, lo_open=True)
        _range(f"{p}.min_weight", self.min_weight, 0, 1)
        _range(f"{p}.selective_fraction", self.selective_fraction, 0, 1, lo_open=True)
        _choice(f"{p}.selective_by", self.selective_by, ("divergence", "entropy"))


@dataclass
class ClipConfig:
    mode: str = "none"
    """Per-token divergence cap: "none", "static" (cap = `value`) or "quantile" (cap = the
    `quantile` of this batch's token divergences, detached)."""
    value: float = 1.0
    """Static cap in nats."""
    quantile: float = 0.95
    """Quantile for the per-batch cap."""
    gradient: str = "bound"
    """Clipped tokens: "bound" keeps their gradient direction, scaled so the token contributes at
    most the cap; "drop" gives them zero gradient (the reference code's behaviour)."""

    def validate(self, p: str) -> None:
        _choice(f"{p}.mode", self.mode, ("none", "static", "quantile"))
        _range(f"{p}.value", self.value, 0, lo_open=True)
        _range(f"{p}.quantile", self.quantile, 0, 1, lo_open=True)
        _choice(f"{p}.gradient", self.gradient, ("bound", "drop"))


@dataclass
class ContrastiveConfig:
    weight: float = 0.0
    """lambda_C: weight of the contrastive term (0 = off)."""
    margin: float = 0.5
    """Hinge margin m in nats."""
    variant: str = "hinge"
    """"hinge": relu(m + |l_S - l_G| - |l_S - l_B|) on sampled-token log-probs (as published);
    "distribution": relu(m + D(good||S) - D(bad||S)) on full distributions."""

    def validate(self, p: str) -> None:
        _range(f"{p}.weight", self.weight, 0)
        _range(f"{p}.margin", self.margin, 0)
        _choice(f"{p}.variant", self.variant, ("hinge", "distribution"))


@dataclass
class FeatureConfig:
    weight: float = 0.0
    """lambda_F: weight of hidden-state matching added to the divergence (0 = off)."""
    only: bool = False
    """Use feature matching alone, with no divergence term (match_repr)."""
    layer: int = -1
    """Which hidden state (index into `hidden_states`; -1 = final layer output)."""
    kind: str = "mse"
    """"mse" (mean over hidden dims) or "cosine" (1 - cosine similarity)."""

    def validate(self, p: str) -> None:
        _range(f"{p}.weight", self.weight, 0)
        _choice(f"{p}.kind", self.kind, ("mse", "cosine"))


@dataclass
class ObjectiveConfig:
    loss: str = "distill"
    """"distill": divergence between student and teacher on completion tokens; "nll": negative
    log-likelihood of the completion (SFT on gold demonstrations or SSD on own samples)."""
    divergence: str = "reverse_kl"
    """"forward_kl" = KL(teacher || student), "reverse_kl" = KL(student || teacher), "jsd" =
    generalized JSD with `beta`."""
    beta: float = 0.5
    """JSD mixture weight of the teacher: M = beta * p_T + (1 - beta) * p_S; beta=0 gives
    KL(teacher||student) and beta=1 gives KL(student||teacher) in the limit (TRL GKD)."""
    temperature: float = 1.0
    """Logit temperature for both distributions in the divergence."""
    vocab_chunk: int = 256
    """Completion positions per chunk when computing the float32 divergence (memory bound): each
    chunk makes a few float32 [chunk, V] temporaries (a 49k vocabulary: 50 MB each at 256). 1024
    made them the largest transient of a batch-16 step (0.82 GB more live tensor memory than 256,
    measured on the CPU with SmolLM2's vocabulary, `benchmarks/step_peak_memory.py`)."""
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def validate(self, p: str = "objective") -> None:
        _choice(f"{p}.loss", self.loss, ("distill", "nll"))
        _choice(f"{p}.divergence", self.divergence, ("forward_kl", "reverse_kl", "jsd"))
        _range(f"{p}.beta", self.beta, 0, 1)
        _range(f"{p}.temperature", self.temperature, 0, lo_open=True)
        _range(f"{p}.vocab_chunk", self.vocab_chunk, 1)
        self.agreement.validate(f"{p}.agreement")
        self.clip.validate(f"{p}.clip")
        self.contrastive.validate(f"{p}.contrastive")
        self.features.validate(f"{p}.features")


@dataclass
class RolloutConfig:
    source: str = "student"
    """Where training completions come from: "student" (on-policy samples), "gold" (the gold
    demonstration, off-policy) or "mixed" (on-policy with probability `on_policy_fraction`,
    else gold; GKD)."""
    on_policy_fraction: float = 0.5
    """For source="mixed": fraction of examples that use the student's own sample."""
    backend: str = "auto"
    """Generator: "auto" (fast on GPU, hf on CPU), "hf" (transformers generate, the reference),
    "fast" (static KV cache + CUDA graph) or "vllm"."""
    max_new_tokens: int = 128
    """Longest sampled completion."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    mask_truncated: bool = False
    """Give zero loss to completions that hit max_new_tokens without EOS."""
    decode_attention: str = "auto"
    """Fast generator: the one-token decode attention. "auto": unisd's Triton kernel where Triton runs
    (CUDA), else torch's SDPA choice; "sdpa": torch's SDPA choice; "triton"; "flex" (FlexAttention)."""
    graph_prefill: bool = True
    """Fast generator on CUDA: replay the prompt pass from a CUDA graph per prompt width (widths
    rounded up to 32; a width's first call runs eagerly, its second captures)."""
    release_memory: bool = False
    """Free the fast generator's KV caches, CUDA graphs and fused decode weights after each rollout
    (as TRL's vLLM sleep mode frees vLLM's), so they do not add to the backward's peak memory; the
    next rollout re-captures its decode graphs (the compiled code is kept). Other backends keep
    nothing between calls."""

    def validate(self, p: str = "rollout") -> None:
        _choice(f"{p}.source", self.source, ("student", "gold", "mixed"))
        _range(f"{p}.on_policy_fraction", self.on_policy_fraction, 0, 1)
        _choice(f"{p}.backend", self.backend, ("auto", "hf", "fast", "vllm"))
        _choice(f"{p}.decode_attention", self.decode_attention, ("auto", "sdpa", "triton", "flex"))
        _range(f"{p}.max_new_tokens", self.max_new_tokens, 1)
        _range(f"{p}.temperature", self.temperature, 0)
        _range(f"{p}.top_p", self.top_p, 0, 1, lo_open=True)


@dataclass
class OptimConfig:
    steps: int = 100
    """Optimizer steps (the run stops here)."""
    batch_size: int = 16
    """Prompts per optimizer step (global, across devices)."""
    micro_batch_size: int = 4
    """Prompts per forward/backward; gradients accumulate to `batch_size`. Results do not depend
    on it (loss normalised by the global completion-token count)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_ratio: float = 0.1
    """Fraction of steps with linear warmup."""
    schedule: str = "cosine"
    """"cosine" (to 0 after warmup) or "constant"."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 = off)."""
    seed: int = 42
    """Seeds data order, sampling, initialisation of adapters."""
    max_bad_steps: int = 3
    """Stop after this many consecutive non-finite losses/gradients (each one skips the update)."""
    auto_micro_batch: bool = False
    """On running out of GPU memory in a step's forward/backward, halve `micro_batch_size` and redo
    the step, as often as needed (the result does not depend on it; HF Trainer's
    auto_find_batch_size for micro-batches). Off: stop with the settings to lower."""

    def validate(self, p: str = "optim") -> None:
        _range(f"{p}.steps", self.steps, 1)
        _range(f"{p}.batch_size", self.batch_size, 1)
        _range(f"{p}.micro_batch_size", self.micro_batch_size, 1)
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"{p}.batch_size ({self.batch_size}) must be a multiple of "
                              f"{p}.micro_batch_size ({self.micro_batch_size})")
        _range(f"{p}.lr", self.lr, 0, lo_open=True)
        _range(f"{p}.warmup_ratio", self.warmup_ratio, 0, 1)
        _choice(f"{p}.schedule", self.schedule, ("cosine", "constant"))
        _range(f"{p}.max_grad_norm", self.max_grad_norm, 0)
        _range(f"{p}.max_bad_steps", self.max_bad_steps, 1)


@dataclass
class DistributedConfig:
    strategy: str = "replicate"
    """How the processes of a torchrun launch share the model: "replicate" (each holds a full copy;
    gradients are summed after accumulation) or "fsdp" (FSDP2: each decoder layer's weights,
    gradients and optimizer state are sharded across the processes, for models too big to
    replicate; `unisd.training.fsdp` lists what it covers). No effect in a single process."""

    def validate(self, p: str = "distributed") -> None:
        _choice(f"{p}.strategy", self.strategy, ("replicate", "fsdp"))


@dataclass
class EvalConfig:
    split: str = "test"
    """Split to evaluate on."""
    limit: int | None = 100
    """First N items (None: all)."""
    max_new_tokens: int = 256
    """Greedy generation length."""
    batch_size: int = 16
    """Prompts per generation batch."""
    before: bool = True
    """Evaluate the base model before training (same code path)."""
    after: bool = True
    """Evaluate the tuned model after training."""
    execute_code: bool = False
    """Allow running model-written code in the sandbox; code tasks refuse to score without it."""
    extra_tasks: list[str] = field(default_factory=list)
    """Further tasks evaluated before and after training with the same settings (out-of-distribution
    transfer, e.g. [humaneval] after training on mbpp); results in eval/<task>/{before,after}.json."""
    base_cache: str | None = None
    """Folder where base-model evaluations are shared between runs that evaluate the same model on the
    same items with the same settings (`unisd sweep` sets it); None: every run evaluates its own."""

    def validate(self, p: str = "eval") -> None:
        if self.limit is not None:
            _range(f"{p}.limit", self.limit, 1)
        if not isinstance(self.extra_tasks, list) or not all(isinstance(t, str) for t in self.extra_tasks):
            raise ConfigError(f"{p}.extra_tasks: expected a list of task names, got {self.extra_tasks!r}")
        _range(f"{p}.max_new_tokens", self.max_new_tokens, 1)
        _range(f"{p}.batch_size", self.batch_size, 1)


@dataclass
class OutputConfig:
    root: str = "runs"
    """Parent folder of run directories."""
    name: str | None = None
    """Run directory name; None derives "<recipe>-<task>-<timestamp>"."""
    checkpoint_every: int = 50
    """Save a checkpoint every N steps (and always at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    log_every: int = 1
    """Console log interval in steps (metrics.jsonl gets every step)."""
    loggers: list[str] = field(default_factory=list)
    """Extra loggers: "tensorboard", "wandb"."""
    profile_steps: list[int] = field(default_factory=list)
    """Steps (1-based) to record with torch.profiler, each on its own: `profile/step-N.txt` (operators
    and kernels by their own time, with input shapes) and `profile/step-N.json.gz` (a trace for
    Perfetto / chrome://tracing) in the run directory."""

    def validate(self, p: str = "output") -> None:
        _range(f"{p}.checkpoint_every", self.checkpoint_every, 1)
        _range(f"{p}.keep_last", self.keep_last, 1)
        if not isinstance(self.profile_steps, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.profile_steps):
            raise ConfigError(f"{p}.profile_steps: expected a list of step numbers >= 1, got "
                              f"{self.profile_steps!r}")
        for lg in self.loggers:
            _choice(f"{p}.loggers[]", lg, ("tensorboard", "wandb"))


@dataclass
class RunConfig:
    recipe: str = "sdft"
    """Name of the preset this config started from (informational)."""
    description: str = ""
    """One line shown by `unisd recipes`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.teacher.validate()
        self.objective.validate()
        self.rollout.validate()
        self.optim.validate()
        self.distributed.validate()
        self.eval.validate()
        self.output.validate()
        o = self.objective
        if o.loss == "nll" and (o.agreement.granularity != "none" or o.contrastive.weight
                                or o.features.weight or o.features.only):
            raise ConfigError("objective.loss: 'nll' cannot be combined with agreement, contrastive "
                              "or feature terms (they need a teacher); use objective.loss='distill'")
        if o.agreement.granularity != "none" and self.teacher.aux.kind == "none":
            raise ConfigError("objective.agreement.granularity needs auxiliary teachers: set "
                              "teacher.aux.kind to one of 'random', 'retrieval', 'induced'")
        if o.contrastive.weight > 0 and not self.teacher.negative.enabled:
            raise ConfigError("objective.contrastive.weight > 0 needs negative demonstrations: set "
                              "teacher.negative.enabled=true")
        if self.teacher.negative.enabled and self.teacher.context == "none":
            raise ConfigError("teacher.negative.enabled needs a teacher context with a demonstration slot: "
                              "set teacher.context to 'demonstration' or 'answer'")
        if self.teacher.weights == "ema" and self.model.finetune not in ("lora", "full"):
            raise ConfigError("teacher.weights='ema' needs model.finetune 'lora' or 'full'")
        if self.distributed.strategy == "fsdp" and self.optim.auto_micro_batch:
            raise ConfigError("optim.auto_micro_batch with distributed.strategy='fsdp' is not supported (every "
                              "rank would have to redo the step together); set optim.auto_micro_batch=false")
        if self.distributed.strategy == "fsdp" and self.model.compile:
            raise ConfigError("model.compile with distributed.strategy='fsdp' is not supported (untested); "
                              "set model.compile=false or distributed.strategy='replicate'")
        if self.distributed.strategy == "fsdp" and self.teacher.weights == "ema":
            # The EMA pairs each trained tensor with its average, by reference; sharding replaces
            # the module's parameters, so the pairs would point at tensors no longer trained.
            raise ConfigError("distributed.strategy='fsdp' does not support teacher.weights='ema' (the EMA "
                              "holds the student's parameters, which sharding replaces); use teacher.weights "
                              "'frozen_base' or 'live', or distributed.strategy='replicate'")
        return self
