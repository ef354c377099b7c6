"""The composed objective on a tiny model: micro-batch invariance, and every mechanism acts.

"Acts" means: switching the mechanism on changes both the loss and the gradient relative to
plain SDFT on the same batch. These are regression tests for the reference code's no-ops
(sequence-level agreement cancelled by normalisation, a clip that never binds, ...).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unisd.config.schema import ObjectiveConfig
from unisd.training.scoring import completion_outputs
from unisd.training.step import RolloutRows, StepContext, count_loss_tokens, micro_batch_loss

VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).float()


def make_rows(batch: int = 6, k: int = 3, seed: int = 1) -> RolloutRows:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return RolloutRows(
        ids=[f"ex{i}" for i in range(batch)],
        student_prompts=[ids(3, 8) for _ in range(batch)],
        completions=[ids(2, 9) for _ in range(batch)],
        teacher_prompts=[ids(6, 14) for _ in range(batch)],
        aux_prompts=[[ids(4, 12) for _ in range(k)] for _ in range(batch)],
        negative_prompts=[ids(6, 14) if i % 3 else None for i in range(batch)],
        loss_mask=[True] * batch,
    )


def run(model, teacher, rows: RolloutRows, objective: ObjectiveConfig, micro: int, pad_to: int = 1):
    model.zero_grad(set_to_none=True)

    def teacher_forward(view, hidden_layer):
        with torch.no_grad():
            return completion_outputs(teacher, view, hidden_layer=hidden_layer)

    n_tok = count_loss_tokens(rows)
    ctx = StepContext(objective, 0, torch.device("cpu"), float(n_tok), teacher_forward, pad_to_multiple_of=pad_to)
    total = 0.0
    for lo in range(0, len(rows), micro):
        loss, _ = micro_batch_loss(model, rows.select(list(range(lo, min(lo + micro, len(rows))))), ctx)
        loss.backward()
        total += float(loss.detach())
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    return total, grads


@pytest.fixture(scope="module")
def models():
    student = tiny_llama(0)
    teacher = tiny_llama(1)  # a different network, so divergences are far from zero
    return student, teacher


def with_(obj: ObjectiveConfig, **changes) -> ObjectiveConfig:
    obj = copy.deepcopy(obj)
    for path, value in changes.items():
        target = obj
        parts = path.split("__")
        for part in parts[:-1]:
            target = getattr(target, part)
        setattr(target, parts[-1], value)
    return obj


SDFT = ObjectiveConfig(divergence="reverse_kl")


@pytest.mark.parametrize("objective", [
    SDFT,
    with_(SDFT, divergence="forward_kl"),
    with_(SDFT, divergence="jsd", beta=0.3),
    with_(SDFT, agreement__granularity="token"),
    with_(SDFT, agreement__granularity="sequence"),
    with_(SDFT, contrastive__weight=0.5),
    with_(SDFT, features__weight=0.5),
    with_(SDFT, clip__mode="static", clip__value=0.005),
    ObjectiveConfig(loss="nll"),
], ids=["rkl", "fkl", "jsd", "agree_tok", "agree_seq", "contrastive", "features", "clip_static", "nll"])
def test_micro_batch_invariance(models, objective):
    student, teacher = models
    rows = make_rows()
    full_loss, full_grad = run(student, teacher, rows, objective, micro=len(rows))
    for micro in (1, 2, 4):
        loss, grad = run(student, teacher, rows, objective, micro=micro)
        assert loss == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
        torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("objective", [SDFT, with_(SDFT, agreement__granularity="sequence"),
                                       with_(SDFT, contrastive__weight=0.5), with_(SDFT, features__weight=0.5),
                                       ObjectiveConfig(loss="nll")],
                         ids=["rkl", "agree_seq", "contrastive", "features", "nll"])
def test_padding_lengths_to_a_multiple_changes_nothing(models, objective, monkeypatch):
    # model.compile rounds every forward's length up to 16; the extra columns are masked padding
    import unisd.training.step as step_module

    student, teacher = models
    rows = make_rows()
    loss, grad = run(student, teacher, rows, objective, micro=3)
    widths = []
    real = step_module.completion_outputs
    monkeypatch.setattr(step_module, "completion_outputs",
                        lambda model, view, **kw: widths.append(view.input_ids.shape[1]) or real(model, view, **kw))
    padded_loss, padded_grad = run(student, teacher, rows, objective, micro=3, pad_to=16)
    assert widths and all(w % 16 == 0 for w in widths)  # every student (and auxiliary) forward padded
    assert padded_loss == pytest.approx(loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(padded_grad, grad, rtol=1e-4, atol=1e-6)


def test_views_round_their_length_up():
    from unisd.scoring import build_view, concat_views

    view = build_view([[5, 6], [7]], [[8, 9, 10], [11]], 0, pad_to_multiple_of=8)
    assert view.input_ids.shape == (2, 8) and view.attention_mask.sum() == 7
    # logits at gather_index predict the completion tokens: the next input id is the target
    assert view.input_ids.flatten()[view.gather_index + 1].tolist() == view.targets.tolist() == [8, 9, 10, 11]
    stacked, _ = concat_views([view, build_view([[1]], [[2]], 0)], 0, pad_to_multiple_of=16)
    assert stacked.input_ids.shape == (3, 16)
    assert stacked.input_ids.flatten()[stacked.gather_index + 1].tolist() == [8, 9, 10, 11, 2]


MECHANISMS = {
    "agreement_token": with_(SDFT, agreement__granularity="token"),
    "agreement_sequence": with_(SDFT, agreement__granularity="sequence"),
    "agreement_selective": with_(SDFT, agreement__granularity="token", agreement__selective_fraction=0.5),
    "contrastive_hinge": with_(SDFT, contrastive__weight=0.5),
    "contrastive_distribution": with_(SDFT, contrastive__weight=0.5, contrastive__variant="distribution"),
    "features_joint": with_(SDFT, features__weight=0.5),
    "features_cosine": with_(SDFT, features__weight=0.5, features__kind="cosine"),
    "features_only": with_(SDFT, features__only=True),
    "clip_quantile_bound": with_(SDFT, clip__mode="quantile", clip__quantile=0.8),
    "clip_quantile_drop": with_(SDFT, clip__mode="quantile", clip__quantile=0.8, clip__gradient="drop"),
    "clip_static_fkl": with_(SDFT, divergence="forward_kl", clip__mode="static", clip__value=0.005),
    "clip_quantile_jsd": with_(SDFT, divergence="jsd", clip__mode="quantile", clip__quantile=0.8),
}


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_each_mechanism_changes_loss_and_gradient(models, name):
    student, teacher = models
    rows = make_rows()
    base_obj = SDFT
    if "jsd" in name:
        base_obj = with_(SDFT, divergence="jsd")
    if "fkl" in name:
        base_obj = with_(SDFT, divergence="forward_kl")
    base_loss, base_grad = run(student, teacher, rows, base_obj, micro=3)
    loss, grad = run(student, teacher, rows, MECHANISMS[name], micro=3)
    assert abs(loss - base_loss) > 1e-6, f"{name} left the loss unchanged"
    assert (grad - base_grad).abs().max() > 1e-7, f"{name} left the gradient unchanged"


def test_sequence_weights_scale_whole_sequences(models):
    """Sequence-level agreement must change how much each *sequence* contributes: with one row
    the normalised reference form would be exactly SDFT; ours is not."""
    student, teacher = models
    rows = make_rows(batch=1)
    base, _ = run(student, teacher, rows, SDFT, micro=1)
    weighted, _ = run(student, teacher, rows, with_(SDFT, agreement__granularity="sequence", agreement__gamma=5.0),
                      micro=1)
    assert weighted < base  # the weight is in (0, 1] and it multiplies the sequence's loss


def test_fully_masked_rows_give_zero_loss(models):
    student, teacher = models
    rows = make_rows(batch=2)
    rows.loss_mask = [False, False]
    ctx = StepContext(SDFT, 0, torch.device("cpu"), 0.0,
                      lambda v, h: completion_outputs(teacher, v, hidden_layer=h))
    loss, _ = micro_batch_loss(student, rows, ctx)
    assert float(loss) == 0.0 and torch.isfinite(loss)


def test_logits_align_across_views(models):
    """The gathered rows of two views with different prompts predict the same completion tokens."""
    from unisd.training.views import build_view

    student, _ = models
    rows = make_rows(batch=3)
    a = build_view(rows.student_prompts, rows.completions, 0)
    b = build_view(rows.teacher_prompts, rows.completions, 0)
    assert torch.equal(a.targets, b.targets)
    flat_a = a.input_ids.flatten()
    # the token right after each gathered position is the completion token it predicts
    assert torch.equal(flat_a[a.gather_index + 1], a.targets)
    flat_b = b.input_ids.flatten()
    assert torch.equal(flat_b[b.gather_index + 1], b.targets)
    # and the logits equal a full forward's logits at those positions
    logits, _ = completion_outputs(student, a)
    full = student(input_ids=a.input_ids, attention_mask=a.attention_mask).logits
    torch.testing.assert_close(logits, full.reshape(-1, full.shape[-1])[a.gather_index], rtol=1e-5, atol=1e-5)


def test_step_loss_and_gradients_equal_full_logits_reference(models):
    """The step applies the student's head chunk by chunk (HeadLogits); its loss and gradients are
    those of the divergence on full-forward logits, computed here without any chunking."""
    from unisd.objectives import token_divergence
    from unisd.training.views import build_view

    student, teacher = models
    rows = make_rows(batch=4)
    n_tok = count_loss_tokens(rows)
    loss, grads = run(student, teacher, rows, SDFT, micro=4)

    student.zero_grad(set_to_none=True)
    s_view = build_view(rows.student_prompts, rows.completions, 0)
    t_view = build_view(rows.teacher_prompts, rows.completions, 0)
    s_full = student(input_ids=s_view.input_ids, attention_mask=s_view.attention_mask).logits
    with torch.no_grad():
        t_full = teacher(input_ids=t_view.input_ids, attention_mask=t_view.attention_mask).logits
    s = s_full.reshape(-1, VOCAB)[s_view.gather_index]
    t = t_full.reshape(-1, VOCAB)[t_view.gather_index]
    want = token_divergence(s, t, kind=SDFT.divergence, beta=SDFT.beta,
                            temperature=SDFT.temperature).sum() / n_tok
    want.backward()
    want_grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                            for p in student.parameters()])
    assert loss == pytest.approx(float(want), rel=1e-5)
    torch.testing.assert_close(grads, want_grads, rtol=1e-4, atol=1e-6)


def test_step_never_holds_the_students_whole_logits(models):
    """Of the [N, V] tensors a step allocates (forward and backward), only the teacher's logits
    remain: the student's logits and their gradient exist one vocab chunk at a time."""
    from torch.utils._python_dispatch import TorchDispatchMode

    student, teacher = models
    rows = make_rows(batch=4)
    n = count_loss_tokens(rows)
    objective = with_(SDFT, vocab_chunk=4)

    class WholeLogits(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            for x in out if isinstance(out, (tuple, list)) else (out,):
                if (isinstance(x, torch.Tensor) and tuple(x.shape) == (n, VOCAB)
                        and x.untyped_storage().data_ptr() not in inputs):
                    WholeLogits.count += 1
            return out

    with WholeLogits():
        run(student, teacher, rows, objective, micro=4)
    assert WholeLogits.count == 1  # the teacher's head output


def test_every_chunked_term_uses_the_configured_chunk(models, monkeypatch):
    """`objective.vocab_chunk` bounds every chunked term, the distribution contrastive's included
    (it once fell back to the function's own default of 1024 rows)."""
    import unisd.objectives.divergence as divergence_module

    chunks = []
    real = divergence_module._map_rows

    def spy(fn, tensors, chunk):
        chunks.append(chunk)
        return real(fn, tensors, chunk)

    monkeypatch.setattr(divergence_module, "_map_rows", spy)
    student, teacher = models
    objective = with_(SDFT, vocab_chunk=3, contrastive__weight=0.5, contrastive__variant="distribution",
                      agreement__granularity="token")
    run(student, teacher, make_rows(), objective, micro=6)
    assert chunks and set(chunks) == {3}


def test_training_attention_leaves_out_cudnn_on_cuda_only():
    # model.cudnn_attention=false (default): while the step's forwards and backward run on CUDA, SDPA
    # may use flash, memory-efficient and math attention but not cuDNN's (it plans per new shape);
    # the flags come back afterwards, and nothing changes on the CPU or when cuDNN is asked for
    from unisd.training.loop import training_attention

    def flags():
        b = torch.backends.cuda
        return (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(),
                b.math_sdp_enabled())

    before = flags()
    assert before == (True, True, True, True)
    with training_attention(torch.device("cuda"), cudnn=False):
        assert flags() == (False, True, True, True)
    assert flags() == before
    for device, cudnn in ((torch.device("cuda"), True), (torch.device("cpu"), False)):
        with training_attention(device, cudnn):
            assert flags() == before
