"""Model configs: frozen dataclasses whose fields mirror Hugging Face config names, plus ftlab fields.

`BertConfig` (BERT, RoBERTa, MiniLM), `LlamaConfig` (Llama, SmolLM2, Qwen2-style q/k/v biases), `GPT2Config`,
`T5Config` (T5 v1.0, T5 v1.1 / Flan-T5 encoder–decoder).
`Cfg.from_hf(d)` reads a Hugging Face `config.json` dict (unknown `model_type` or architecture raises naming
it; keys ftlab does not model are ignored unless they change the computation, then they raise);
`cfg.to_hf()` writes one that `transformers.AutoConfig.for_model(**d)` accepts.

ftlab-only fields (never written to config.json): `dtype` (compute dtype, 'float32' | 'bfloat16'; params stay
float32), `remat` (around each layer: False/'none', True/'full', 'dots', 'dots_no_batch'; see
`layers.remat_layer`), `attention` ('xla' explicit matmuls, 'cudnn' fused flash attention on GPU, 'jax' the
same call on XLA; see `layers.dot_product_attention`), and for BERT `add_pooling_layer`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

FTLAB_FIELDS = ("dtype", "remat", "attention", "add_pooling_layer")

BERT_ARCHITECTURES = {
    f"{m}{s}"
    for m in ("Bert", "Roberta")
    for s in ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForPreTraining")
}
LLAMA_ARCHITECTURES = {
    f"{m}{s}"
    for m in ("Llama", "Qwen2")
    for s in ("Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification")
}
GPT2_ARCHITECTURES = {
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
}


def _check_architectures(d: dict, known: set[str], family: str) -> None:
    for arch in d.get("architectures") or []:
        if arch not in known:
            raise ValueError(f"unknown architecture {arch!r} for family {family!r}; known: {sorted(known)}")


def _pick(cls: type, d: dict, **overrides: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)} - set(FTLAB_FIELDS)
    kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
    kwargs.update(overrides)
    return cls(**kwargs)


def _to_hf(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FTLAB_FIELDS}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT / RoBERTa / MiniLM encoder. `model_type` 'roberta' switches position ids to HF's RoBERTa rule."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    model_type: str = "bert"
    dtype: str = "float32"
    remat: bool | str = False
    attention: str = "xla"
    add_pooling_layer: bool = True

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> BertConfig:
        if d.get("model_type") not in ("bert", "roberta"):
            raise ValueError(
                f"BertConfig: unknown model_type {d.get('model_type')!r} (expected bert|roberta)"
            )
        _check_architectures(d, BERT_ARCHITECTURES, "bert")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BertConfig: position_embedding_type {d['position_embedding_type']!r} unsupported"
            )
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError("BertConfig: decoder / cross-attention BERT is not supported")
        archs = d.get("architectures") or []
        # HF builds *ForMaskedLM / *ForTokenClassification / RobertaForSequenceClassification without a pooler.
        pooler = not any(
            a.endswith(("ForMaskedLM", "ForTokenClassification")) or a == "RobertaForSequenceClassification"
            for a in archs
        )
        return _pick(cls, d, add_pooling_layer=pooler)

    def to_hf(self) -> dict[str, Any]:
        return _to_hf(self)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama-family decoder: RMSNorm, RoPE (+ rope_scaling llama3/linear), GQA, SwiGLU, optional biases.

    `attention_bias` follows Llama (bias on q, k, v and o); model_type 'qwen2' has q/k/v biases only.
    `rope_scaling` holds HF's rope parameters dict without `rope_theta` (None = default RoPE).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    classifier_dropout: float | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    model_type: str = "llama"
    dtype: str = "float32"
    remat: bool | str = False
    attention: str = "xla"

    def __post_init__(self) -> None:
        # Derived defaults as HF sets them; object.__setattr__ because the dataclass is frozen.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    def __hash__(self) -> int:
        # rope_scaling is a dict; hash the HF form so configs (and modules holding them) can be jit-static.
        return hash(json.dumps(self.to_hf(), sort_keys=True))

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        if d.get("model_type") not in ("llama", "qwen2"):
            raise ValueError(
                f"LlamaConfig: unknown model_type {d.get('model_type')!r} (expected llama|qwen2)"
            )
        _check_architectures(d, LLAMA_ARCHITECTURES, "llama")
        if d.get("pretraining_tp", 1) != 1:
            raise ValueError("LlamaConfig: pretraining_tp != 1 is not supported")
        if d.get("model_type") == "qwen2" and d.get("use_sliding_window"):
            raise ValueError("LlamaConfig: qwen2 use_sliding_window=True is not supported")
        # transformers v5 writes `rope_parameters` (theta inside); v4 wrote rope_theta + rope_scaling.
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        scaling = None if rope.get("rope_type", "default") == "default" else rope
        eos = d.get("eos_token_id")
        return _pick(
            cls,
            d,
            rope_theta=float(theta),
            rope_scaling=scaling,
            **({"eos_token_id": eos} if not isinstance(eos, list) else {"eos_token_id": tuple(eos)}),
        )

    def to_hf(self) -> dict[str, Any]:
        d = _to_hf(self)
        rope = {"rope_type": "default"} if self.rope_scaling is None else dict(self.rope_scaling)
        rope["rope_theta"] = self.rope_theta
        d["rope_parameters"] = rope
        d.pop("rope_scaling")
        d.pop("rope_theta")
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        return d


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 decoder: learned positions, pre-LN, Conv1D weights (already [in, out]), tied LM head."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    summary_first_dropout: float = 0.1
    classifier_dropout: float | None = None
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    model_type: str = "gpt2"
    dtype: str = "float32"
    remat: bool | str = False
    attention: str = "xla"

    @property
    def tie_word_embeddings(self) -> bool:
        return True

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> GPT2Config:
        if d.get("model_type") != "gpt2":
            raise ValueError(f"GPT2Config: unknown model_type {d.get('model_type')!r} (expected gpt2)")
        _check_architectures(d, GPT2_ARCHITECTURES, "gpt2")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if d.get(flag):
                raise ValueError(f"GPT2Config: {flag}=True is not supported")
        return _pick(cls, d)

    def to_hf(self) -> dict[str, Any]:
        return _to_hf(self)


T5_ARCHITECTURES = {"T5ForConditionalGeneration", "T5Model"}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5 encoder–decoder: relative position buckets, RMS norm without bias, ReLU (v1.0) or gated-GELU (v1.1,
    Flan-T5) feed-forward from `feed_forward_proj` ('relu', 'gated-gelu', 'gelu', 'gated-silu', ...).

    `tie_word_embeddings`: the LM head is the `shared` table (no head/lm_head parameter); `scale_decoder_outputs`
    (default = tie_word_embeddings, as HF) multiplies the decoder output by d_model**-0.5 before the LM head.
    A checkpoint's own tensors settle tying (ftlab.checkpoint.hf: an lm_head that differs from `shared`
    unties it, as transformers does). `decoder_start_token_id`: the decoder's first input (T5: 0 = pad).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int | None = None
    model_type: str = "t5"
    dtype: str = "float32"
    remat: bool | str = False
    attention: str = "xla"

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        if self.scale_decoder_outputs is None:
            object.__setattr__(self, "scale_decoder_outputs", self.tie_word_embeddings)
        if self.attention != "xla":
            raise ValueError(f"T5Config: attention={self.attention!r} is not available for T5 (its relative position "
                             "bias needs the explicit 'xla' attention)")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"T5Config: feed_forward_proj {self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """HF's activation name for the feed-forward ('gated-gelu' means the tanh GELU, 'gelu_new')."""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> T5Config:
        if d.get("model_type") != "t5":
            raise ValueError(f"T5Config: unknown model_type {d.get('model_type')!r} (expected t5)")
        _check_architectures(d, T5_ARCHITECTURES, "t5")
        if d.get("is_encoder_decoder") is False or d.get("is_decoder"):
            raise ValueError("T5Config: only the encoder–decoder T5 is supported (is_encoder_decoder=True, "
                             "is_decoder=False)")
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            raise ValueError(f"T5Config: a list eos_token_id {eos} is not supported")
        return _pick(cls, d)

    def to_hf(self) -> dict[str, Any]:
        d = _to_hf(self)
        d["is_encoder_decoder"] = True
        if d["decoder_start_token_id"] is None:
            d.pop("decoder_start_token_id")
        return d


ModelConfig = BertConfig | LlamaConfig | GPT2Config | T5Config


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """HF config dict -> the ftlab config of its family; raises naming an unknown model_type."""
    mt = d.get("model_type")
    if mt in ("bert", "roberta"):
        return BertConfig.from_hf(d)
    if mt in ("llama", "qwen2"):
        return LlamaConfig.from_hf(d)
    if mt == "gpt2":
        return GPT2Config.from_hf(d)
    if mt == "t5":
        return T5Config.from_hf(d)
    raise ValueError(f"unknown model_type {mt!r} (supported: bert, roberta, llama, qwen2, gpt2, t5)")


def family(config: ModelConfig) -> str:
    """'bert' | 'llama' | 'gpt2' | 't5'."""
    if isinstance(config, BertConfig):
        return "bert"
    if isinstance(config, LlamaConfig):
        return "llama"
    if isinstance(config, GPT2Config):
        return "gpt2"
    if isinstance(config, T5Config):
        return "t5"
    raise TypeError(f"not an ftlab model config: {type(config).__name__}")
