"""Checkpoints: pre-trained base import (HF folders, GGUF) and Hugging Face export.

load_base(name_or_path) -> Base(family, config, params, tokenizer, source, hash)
export_hf(params, config, folder, head=None, num_labels=None, tokenizer=None) -> Path
"""

from ftlab.checkpoint.hf import Base, CheckpointError, export_hf, load_base, params_hash

__all__ = ["Base", "CheckpointError", "export_hf", "load_base", "params_hash"]
