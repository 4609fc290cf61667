"""llama.cpp GGUF import (llama architecture): dequantise, undo the Q/K RoPE permutation, config from metadata.

llama.cpp's converter permutes the rows of attn_q / attn_k so its RoPE kernel can rotate adjacent pairs;
HF's rotate-half RoPE needs the original order, so we apply the inverse permutation (as transformers'
`LlamaTensorProcessor._reverse_permute_weights` does). Dequantising the whole file takes tens of seconds,
so the converted float32 tensors (HF names) and the HF config dict are cached as one safetensors file
under ~/.cache/ftlab/ (or $FTLAB_CACHE), keyed by the GGUF file's sha256 and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ftlab.checkpoint.hf import CheckpointError, atomic_save_safetensors, convert_tensors
from ftlab.models.configs import LlamaConfig

CACHE_VERSION = "1"

GGUF_TO_HF = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"blk\.(\d+)\.attn_k\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"blk\.(\d+)\.attn_v\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_gate\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", r"model.layers.\1.mlp.down_proj.weight"),
]

META_TO_HF = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("FTLAB_CACHE", Path.home() / ".cache" / "ftlab"))


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation. w: [n_head * Dh, in] (rows interleaved per head) -> HF order."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def hf_config_from_gguf(reader: Any, source: Path) -> dict[str, Any]:
    """HF LlamaConfig dict from GGUF metadata; raises naming an unsupported architecture."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported (supported: llama)")
    d: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    for k, hf_key in META_TO_HF.items():
        v = _field(reader, f"{arch}.{k}")
        if v is not None:
            d[hf_key] = v
    if "vocab_size" not in d:
        d["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    for k, hf_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        v = _field(reader, f"tokenizer.ggml.{k}")
        if v is not None:
            d[hf_key] = int(v)
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise CheckpointError(f"{source}: GGUF rope scaling {scaling!r} is not supported")
    # No output.weight tensor means the LM head is tied to the token embedding (as transformers decides).
    d["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    return d


def dequantize_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All tensors of a GGUF file as float32 with HF names and layout ([out, in]), plus the HF config dict."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    hf_cfg = hf_config_from_gguf(reader, path)
    n_head, n_kv = (
        hf_cfg["num_attention_heads"],
        hf_cfg.get("num_key_value_heads", hf_cfg["num_attention_heads"]),
    )
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for pattern, repl in GGUF_TO_HF:
            if re.fullmatch(pattern, t.name):
                key = re.sub(pattern, repl, t.name)
                break
        else:
            raise CheckpointError(f"unused tensor {t.name!r} {tuple(t.shape)} in {path}: no HF/ftlab name")
        # gguf lists dims fastest-first; dequantize returns the row-major array, i.e. torch's [out, in].
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if ".attn_q." in t.name:
            w = reverse_permute(w, n_head)
        elif ".attn_k." in t.name:
            w = reverse_permute(w, n_kv)
        out[key] = np.ascontiguousarray(w)
    return out, hf_cfg


def load_gguf(path: Path) -> tuple[dict[str, Any], LlamaConfig, Any]:
    """(params, config, tokenizer) for a GGUF file, using/filling the float32 cache."""
    from safetensors import safe_open

    size = path.stat().st_size
    cached = cache_dir() / f"gguf-{file_sha256(path)[:32]}-{size}-v{CACHE_VERSION}.safetensors"
    if cached.exists():
        with safe_open(str(cached), "np") as f:
            hf_cfg = json.loads(f.metadata()["hf_config"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    else:
        tensors, hf_cfg = dequantize_gguf(path)
        atomic_save_safetensors(tensors, cached, {"hf_config": json.dumps(hf_cfg), "source": str(path)})
    config = LlamaConfig.from_hf(hf_cfg)
    params, config = convert_tensors(tensors, config, str(path), hf_cfg.get("architectures"))
    return params, config, _cached_tokenizer(path, cached.with_suffix(".tokenizer"))


def _cached_tokenizer(path: Path, folder: Path) -> Any:
    """Tokenizer from the GGUF file; parsing its vocabulary takes ~10 s, so the result is saved once in
    HF format next to the tensor cache (temp folder + os.replace, so a crash never leaves half a folder)."""
    from transformers import AutoTokenizer

    if folder.exists():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, suffix=".tmp"))
    try:
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, folder)
    except OSError:
        pass  # another process won the race; its folder is complete
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return tokenizer
