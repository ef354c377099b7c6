"""TeacherWeights: frozen_base, live and ema, under LoRA and full fine-tuning.

The EMA is checked against an EMA computed here by hand from snapshots of the student taken
after every optimizer step, both on the averaged tensors and on the teacher's logits.
"""

import copy

import pytest
import torch

from unisd.config.schema import ModelConfig, TeacherConfig
from unisd.models import TeacherWeights, apply_lora, tiny_model, trainable_parameters

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11], [8, 8, 120, 64, 33, 2, 1, 0]])
DECAY, EVERY, STEPS = 0.7, 2, 5


def _student(finetune, dtype=torch.float32):
    model, _ = tiny_model(init_std=0.2, dtype=dtype)
    with torch.no_grad():
        base_logits = model(input_ids=IDS).logits
    return apply_lora(model, ModelConfig(finetune=finetune, lora_r=4, lora_alpha=8)), base_logits


def _logits(module):
    with torch.no_grad():
        return module(input_ids=IDS).logits


def _teacher_logits(tw, model):
    with torch.no_grad(), tw.activated(model) as teacher:
        return teacher(input_ids=IDS).logits


def _train(model, tw, *, steps=STEPS, lr=1e-2, check=None):
    """AdamW steps on a fixed LM loss; returns the student snapshots taken after each step."""
    opt = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    snaps = []
    for step in range(1, steps + 1):
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
        _teacher_logits(tw, model)  # a teacher forward between steps must not disturb training state
        if check:
            check(model)
        tw.update(step)
        snaps.append({n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad})
    return snaps


def _hand_ema(initial, snaps):
    ema = {n: t.clone() for n, t in initial.items()}
    for step, snap in enumerate(snaps, start=1):
        if step % EVERY == 0:
            ema = {n: DECAY * ema[n] + (1 - DECAY) * snap[n] for n in ema}
    return ema


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_ema_matches_hand_computed_average(finetune):
    model, base_logits = _student(finetune)
    teacher_cfg = TeacherConfig(weights="ema", ema_decay=DECAY, ema_every=EVERY)
    tw = TeacherWeights.from_config(model, teacher_cfg, finetune)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainable_before = [n for n, p in model.named_parameters() if p.requires_grad]

    def check(m):  # the student stays trainable, the EMA adapter never does
        assert [n for n, p in m.named_parameters() if p.requires_grad] == trainable_before
        if finetune == "lora":
            assert m.active_adapter == "default" and m.training

    snaps = _train(model, tw, check=check)
    expected = _hand_ema(initial, snaps)
    state = tw.state_dict()
    assert tw.updates == STEPS // EVERY
    assert set(state["ema"]) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(state["ema"][name], value, rtol=0, atol=1e-6)

    # The EMA sits where the hand computation says: away from both the base and the student.
    student = snaps[-1]
    gap_student = sum((state["ema"][n] - student[n]).norm() ** 2 for n in student) ** 0.5
    gap_base = sum((state["ema"][n] - initial[n]).norm() ** 2 for n in student) ** 0.5
    exp_student = sum((expected[n] - student[n]).norm() ** 2 for n in student) ** 0.5
    assert gap_student > 1e-3 and gap_base > 1e-3
    torch.testing.assert_close(gap_student, exp_student, rtol=1e-4, atol=1e-6)

    # Logits: the teacher equals a copy of the student holding the hand-computed EMA weights.
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in expected:
                p.copy_(expected[n])
    reference.eval()
    teacher = _teacher_logits(tw, model)
    torch.testing.assert_close(teacher, _logits(reference), rtol=0, atol=1e-5)
    model.eval()
    assert (teacher - _logits(model)).abs().max() > 1e-3
    assert (teacher - base_logits).abs().max() > 1e-3


def test_ema_adapter_is_never_trained_or_in_the_optimizer():
    model, _ = _student("lora")
    tw = TeacherWeights(model, "ema", finetune="lora", decay=DECAY, every=1)
    ema_params = [p for n, p in model.named_parameters() if ".ema." in n]
    assert ema_params and not any(p.requires_grad for p in ema_params)
    in_opt = {id(p) for p in trainable_parameters(model)}
    assert not in_opt & {id(p) for p in ema_params}
    before = [p.clone() for p in ema_params]
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    opt.step()
    assert all(p.grad is None for p in ema_params)
    assert all(torch.equal(a, b) for a, b in zip(before, ema_params))  # only tw.update moves it
    with tw.activated(model) as teacher:  # no_grad is enforced even if the caller forgets it
        assert not teacher(input_ids=IDS).logits.requires_grad
        assert not teacher.training
    assert model.training


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_frozen_base_is_the_original_model_exactly(finetune):
    model, base_logits = _student(finetune)
    tw = TeacherWeights(model, "frozen_base", finetune=finetune)
    _train(model, tw, steps=3, lr=5e-2)
    teacher = _teacher_logits(tw, model)
    assert torch.equal(teacher, base_logits)
    model.eval()
    assert (_logits(model) - base_logits).abs().max() > 1e-3  # the student did move
    assert tw.update(2) is False
    if finetune == "lora":
        assert tw.extra_bytes() == 0  # no second copy under LoRA
    else:
        assert tw.extra_bytes() == sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_live_is_the_current_student(finetune):
    model, _ = _student(finetune)
    tw = TeacherWeights(model, "live", finetune=finetune)
    _train(model, tw, steps=2, lr=5e-2)
    teacher = _teacher_logits(tw, model)
    model.eval()
    assert torch.equal(teacher, _logits(model))
    assert tw.forward_model(model) is model


def test_full_bf16_ema_keeps_an_fp32_average():
    # bf16 cannot hold (1 - decay)-sized steps; the fp32 master can, and the shadow follows it.
    model, _ = _student("full", dtype=torch.bfloat16)
    tw = TeacherWeights(model, "ema", finetune="full", decay=DECAY, every=EVERY)
    initial = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    snaps = _train(model, tw, lr=1e-3)
    expected = _hand_ema(initial, snaps)
    state = tw.state_dict()["ema"]
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6)
    shadow = dict(tw._copy.named_parameters())
    assert all(torch.equal(shadow[n], state[n].to(torch.bfloat16)) for n in state)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_state_dict_round_trip_restores_the_ema_teacher(finetune):
    model, _ = _student(finetune)
    tw = TeacherWeights(model, "ema", finetune=finetune, decay=DECAY, every=1)
    _train(model, tw, steps=3)
    expected = _teacher_logits(tw, model)

    fresh, _ = _student(finetune)
    tw2 = TeacherWeights(fresh, "ema", finetune=finetune, decay=DECAY, every=1)
    assert not torch.allclose(_teacher_logits(tw2, fresh), expected)
    tw2.load_state_dict(tw.state_dict())
    assert tw2.updates == 3
    torch.testing.assert_close(_teacher_logits(tw2, fresh), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="teacher state"):
        TeacherWeights(fresh, "live", finetune=finetune).load_state_dict(tw.state_dict())


def test_bad_arguments():
    model, _ = tiny_model()
    with pytest.raises(TypeError, match="apply_lora"):
        TeacherWeights(model, "ema", finetune="lora")
    with pytest.raises(ValueError, match="teacher.weights"):
        TeacherWeights(model, "bogus", finetune="full")
    lora, _ = _student("lora")
    tw = TeacherWeights(lora, "frozen_base", finetune="lora")
    with pytest.raises(RuntimeError, match="activated"):
        tw.forward_model(lora)
    with pytest.raises(ValueError, match="different model"):
        with tw.activated(model):
            pass
