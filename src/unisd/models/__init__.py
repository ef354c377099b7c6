"""Models: packaged aliases, loading (GGUF -> cached safetensors), LoRA, teacher weights, export.

Public API (import from here):
    resolve, load_model_and_tokenizer, list_models, cache_dir   (loading)
    MODELS, is_installed, install_command, locate_gguf          (registry of packaged models)
    apply_lora, trainable_parameters, count_parameters          (what the optimizer trains)
    TeacherWeights                                              (frozen_base | live | ema)
    CompiledLayers, decoder_layers                              (model.compile)
    save_weights, load_weights, export_merged                   (checkpoints and export)
    tiny_model, tiny_tokenizer                                  (random tiny models for tests)
"""

from unisd.models.compile import CompiledLayers, decoder_layers
from unisd.models.export import export_merged, load_weights, save_weights
from unisd.models.loading import (ModelInfo, ModelLoadError, cache_dir, enable_gradient_checkpointing,
                                  list_models, load_model_and_tokenizer, prepare_tokenizer, resolve,
                                  resolve_dtype, tie_embeddings)
from unisd.models.lora import apply_lora, count_parameters, is_lora, lora_targets, trainable_parameters
from unisd.models.registry import MODELS, PackagedModel, install_command, is_installed, locate_gguf
from unisd.models.teacher import TeacherWeights
from unisd.models.tiny import tiny_model, tiny_tokenizer

__all__ = [
    "CompiledLayers", "MODELS", "ModelInfo", "ModelLoadError", "PackagedModel", "TeacherWeights", "apply_lora",
    "cache_dir", "decoder_layers",
    "count_parameters", "enable_gradient_checkpointing", "export_merged", "install_command", "is_installed",
    "is_lora", "list_models", "load_model_and_tokenizer", "load_weights", "locate_gguf", "lora_targets",
    "prepare_tokenizer", "resolve", "resolve_dtype", "save_weights", "tie_embeddings", "tiny_model",
    "tiny_tokenizer", "trainable_parameters",
]
