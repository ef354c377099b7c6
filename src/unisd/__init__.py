"""unisd: self-distillation for large language models (UniSD and its baselines).

Nothing runs at import; submodules import torch/transformers lazily where they need them.
"""

__version__ = "0.1.0"
