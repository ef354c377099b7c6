"""Turn text into the token ids a chat model sees: one-turn chat prompts and gold completions.

Shared by training (views) and evaluation so both render prompts identically. Tokenizers with
no chat template (base models such as Gemma 3 270M) get the plain text and a newline.
"""

from __future__ import annotations


def chat_prompt_ids(tokenizer, user_text: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt ending with the assistant header. Tokenizers without a
    chat template (base models) get the plain text followed by a newline."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = (system + "\n\n" if system else "") + user_text + "\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def completion_ids(tokenizer, text: str, eos_id: int) -> list[int]:
    """Ids of a gold completion (demonstration) followed by EOS, as the model would emit it."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos_id]
