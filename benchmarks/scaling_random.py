"""Build a randomly initialised model with SmolLM2-135M's architecture (and unisd's byte-level
test tokenizer) as a local folder, for throughput runs on a machine that has no model files.
Speed does not depend on weight values. Usage: python benchmarks/scaling_random.py OUT_DIR"""

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unisd.models.tiny import tiny_tokenizer

cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, bos_token_id=257, eos_token_id=258, pad_token_id=256)
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
tiny_tokenizer(model_max_length=8192).save_pretrained(sys.argv[1])
print("saved", sys.argv[1])
