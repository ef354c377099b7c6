"""tiny_model / tiny_tokenizer: deterministic, offline, usable like a real chat model."""

import torch

from unisd.models import tiny_model, tiny_tokenizer
from unisd.models.tiny import IM_END, IM_START, PAD


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_model(seed=7)
    after = torch.rand(3)
    b, _ = tiny_model(seed=7)
    c, _ = tiny_model(seed=8)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_shape_and_ties():
    model, tok = tiny_model()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, 2, len(tok))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    untied, _ = tiny_model(tie_embeddings=False, vocab=300)
    assert untied.get_input_embeddings().weight is not untied.get_output_embeddings().weight
    assert untied.config.vocab_size == 300
    assert not model.training


def test_tokenizer_round_trips_any_text_and_has_specials():
    tok = tiny_tokenizer()
    text = "Héllo wörld 😀\n\tdef f(x):\n    return x  # ünïcode"
    ids = tok(text).input_ids
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.eos_token == IM_END and tok.pad_token == PAD
    assert tok.convert_tokens_to_ids([PAD, IM_START, IM_END]) == [256, 257, 258]
    assert tok(f"a{IM_END}").input_ids == [97, 258]
    assert tok.padding_side == "left"


def test_chat_template_is_chatml():
    tok = tiny_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_all_archs_generate_left_padded():
    for arch in ("llama", "qwen2", "gpt2"):
        model, tok = tiny_model(arch)
        batch = tok(["a", "abc"], padding=True, return_tensors="pt")
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert out.shape == (2, 3 + 4), arch
