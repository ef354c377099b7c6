"""A tiny random causal LM and a byte-level tokenizer, built offline in milliseconds, for tests.

The tokenizer maps each UTF-8 byte to one token (ids 0-255, GPT-2's byte-to-unicode alphabet,
no merges), so any text round-trips exactly; three special tokens follow: <|endoftext|> (256,
pad), <|im_start|> (257) and <|im_end|> (258, eos). It carries a ChatML chat template without a
default system prompt. Weights depend only on `seed`; the global RNG is left untouched.
"""

from __future__ import annotations

from typing import Any

import torch

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table (what the ByteLevel pre-tokenizer emits).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_tokenizer(*, model_max_length: int = 512) -> Any:
    """Byte-level PreTrainedTokenizerFast (259 tokens) with ChatML, eos <|im_end|>, pad
    <|endoftext|>, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, IM_START, IM_END])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                   model_max_length=model_max_length, padding_side="left")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(arch: str = "llama", vocab: int | None = None, *, seed: int = 0, hidden: int = 64,
               layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
               max_positions: int = 512, tie_embeddings: bool = True, init_std: float = 0.02,
               dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer): a randomly initialised `arch` ("llama", "qwen2" or "gpt2") causal LM
    in eval mode on CPU, and `tiny_tokenizer()`.

    Args:
        vocab: model vocabulary size; None uses the tokenizer's 259. Larger values add rows no
            text maps to (as real models pad their vocabularies).
        tie_embeddings: share the input embedding and the LM head (SmolLM2 and Qwen do).
        init_std: std of the normal init; larger values give peakier next-token distributions.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    tokenizer = tiny_tokenizer(model_max_length=max_positions)
    vocab_size = len(tokenizer) if vocab is None else vocab
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab={vocab} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    if arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        config = cls(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                     max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
                     initializer_range=init_std, **ids)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=max_positions, n_inner=intermediate,
                            tie_word_embeddings=tie_embeddings, initializer_range=init_std, **ids)
    else:
        raise ValueError(f"tiny_model: arch {arch!r} not supported; use 'llama', 'qwen2' or 'gpt2'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval(), tokenizer
