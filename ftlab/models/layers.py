"""Building blocks shared by every ftlab model family: Dense (with the LoRA hook), Embed, norms, attention, RoPE.

Parameters are always created in float32; `dtype` is the compute dtype (float32 or bfloat16). Norm statistics
and the attention softmax are computed in float32 whatever the compute dtype, as Hugging Face does.

Module deltas read the `delta` variable collection at the module path they modify. The LoRA and IA³ hooks live
here, in `Dense`, because every linear layer of every ftlab model is this `Dense`:

    y = x @ kernel + bias + lora_scale * ((x @ lora_a) @ lora_b)     # W + BA is never formed

plus LoRA on `Embed`, and the helpers the model files use at their sites: `adapters` (bottleneck adapter
stacks), `with_prefix` (prefix tuning's extra key/value slots), `delta_leaf` (a delta in a child's scope),
`input_noise` (the regularisers' perturbation of the word embeddings, ftlab.train.regularizers).

Shape letters: B batch, T query length, S key length, D model width, H query heads, K key/value heads,
G = H // K query heads per key/value head, Dh head width, V vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Initializer = Callable[..., Array]

def gelu_erf(x: Array) -> Array:
    """Exact GELU written as HF/PyTorch write it, x * 0.5 * (1 + erf(x / sqrt(2))).

    `jax.nn.gelu(approximate=False)` uses erfc, which XLA expands into exp + branch selects: on CPU its
    forward + backward took ~3.7x as long as this erf form (equal to within 1 ulp in float32)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x / 1.4142135623730951))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Hugging Face names -> functions with the same numerics ("gelu" is the exact erf form).
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation called `name` in Hugging Face configs; raises naming the unknown one."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def compute_dtype(name: str) -> Any:
    """'float32' | 'bfloat16' -> jnp dtype ('float64' too, for numerical reference tests under jax_enable_x64)."""
    if name not in ("float32", "bfloat16", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {name!r}")
    return jnp.dtype(name)


def _stat_dtype(dtype: Any) -> Any:
    # Norm statistics and softmax run in at least float32 (bfloat16 compute would lose too much there).
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------------------------------ sums as GEMVs
# XLA on CPU rewrites a reduction over more than 32 elements into a tree of reduce-window ops that it does not
# fuse (openxla/xla#16792; ftlab turns YNNPACK's fusions off, see ftlab/__init__.py): in the MiniLM full
# fine-tuning step those trees held ~19% of the XLA time. The norms therefore compute their statistics as
# x @ (1/D) and take their parameter gradients (Σ over all tokens) as ones @ g through custom VJPs, which cut
# the step's reduce-window time by about a quarter. Accumulation is float32 whatever the compute dtype.
#
# Dense layers (`matmul`, `matmul_bias`) have their own VJP too. Under plain autodiff XLA formed each kernel
# gradient xᵀ·g by first copying the wide cotangent g [tokens, out] into a transposed [out, tokens] buffer and
# then ran that dot at ~0.6× the rate of the forward dots (MiniLM full step profile: the 12 FFN kernel-gradient
# dots and their copies ~1 s of ~4.3 s). The custom backward transposes the thinner operand explicitly (xᵀ·g or
# (gᵀ·x)ᵀ) and takes the bias gradient as ones @ g (alone, that GEMV had made XLA transpose the FFN cotangent; with
# the kernel rule it is a further gain). Same-core A/B on the MiniLM full step: 8.84 -> 7.58 s (−14%) with the
# other core busy; LoRA, frozen and Houlsby unchanged. Values and gradients equal plain autodiff (tests).
# The adapters' bottleneck projections use `matmul_bias` as well: with the plain VJP, XLA transposed the wide
# residual-stream cotangent for their kernel gradients, fused every upper layer's LayerNorm backward into that
# transpose and recomputed it per layer (Houlsby's MiniLM step was 1.9× LoRA's; 2.1 s of Pfeiffer's 5.1 s).


def sum_rows(g: Array) -> Array:
    """Σ of g [..., F] over every axis but the last -> [F] float32, as one GEMV (ones @ g)."""
    g2 = g.reshape(-1, g.shape[-1])
    return jnp.dot(jnp.ones((g2.shape[0],), g2.dtype), g2, preferred_element_type=jnp.float32)


def mean_last(x: Array) -> Array:
    """Mean of x [..., D] over its last axis, keepdims, as x @ (1/D) (a GEMV; its gradient a broadcast)."""
    d = x.shape[-1]
    return jnp.dot(x, jnp.full((d,), 1.0 / d, x.dtype), preferred_element_type=x.dtype)[..., None]


def _kernel_grad(x: Array, g: Array, w: Array) -> Array:
    """xᵀ·g for x [..., i], g [..., o] -> [i, o] in w's dtype, transposing the thinner operand explicitly."""
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = x2.T @ g2 if x2.shape[1] <= g2.shape[1] else (g2.T @ x2).T
    return dw.astype(w.dtype)


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
    """x @ w (x [..., i], w [i, o]) with the kernel-gradient rule above."""
    return jnp.dot(x, w)


def _matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    return jnp.dot(g, w.T).astype(x.dtype), _kernel_grad(x, g, w)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def matmul_bias(x: Array, w: Array, b: Array) -> Array:
    """x @ w + b with the kernel-gradient rule above and db = sum_rows(g)."""
    return jnp.dot(x, w) + b


def _matmul_bias_fwd(x, w, b):
    return jnp.dot(x, w) + b, (x, w)


def _matmul_bias_bwd(res, g):
    x, w = res
    return jnp.dot(g, w.T).astype(x.dtype), _kernel_grad(x, g, w), sum_rows(g).astype(w.dtype)


matmul_bias.defvjp(_matmul_bias_fwd, _matmul_bias_bwd)


@jax.custom_vjp
def scale_shift(x: Array, scale: Array, shift: Array) -> Array:
    """x * scale + shift (x [..., D]; scale, shift [D]): a norm's affine part; dscale = sum_rows(g·x)."""
    return x * scale + shift


def _scale_shift_fwd(x, scale, shift):
    return scale_shift(x, scale, shift), (x, scale)


def _scale_shift_bwd(res, g):
    x, scale = res
    return (g * scale).astype(x.dtype), sum_rows(g * x).astype(scale.dtype), sum_rows(g).astype(scale.dtype)


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


@jax.custom_vjp
def scale_only(x: Array, scale: Array) -> Array:
    """scale * x (RMSNorm's scale, in x's dtype); dscale = sum_rows(g·x)."""
    return scale.astype(x.dtype) * x


def _scale_only_fwd(x, scale):
    return scale_only(x, scale), (x, scale)


def _scale_only_bwd(res, g):
    x, scale = res
    return (g * scale.astype(g.dtype)).astype(x.dtype), sum_rows(g * x).astype(scale.dtype)


scale_only.defvjp(_scale_only_fwd, _scale_only_bwd)


class Dense(nn.Module):
    """y = x @ kernel + bias, plus the module-delta hooks read from the `delta` collection at this path.

    x: [..., in] -> y: [..., features]. kernel: [in, features] (HF Linear weight transposed).
    delta (all optional; see ftlab.deltas.lora / ftlab.deltas.ia3):
      lora_a [in, r], lora_b [r, features], lora_scale scalar (1.0 if absent), lora_dropout scalar rate
        (applied to the A path's input only when `deterministic` is False, with the 'dropout' rng);
        y += lora_scale * ((dropout(x) @ lora_a) @ lora_b)
      stacked LoRA (serving many tasks in one batch): lora_a [N, in, r], lora_b [N, r, features],
        lora_scale [N], lora_index int [B]: row b uses delta lora_index[b] (x must be [B, ...])
      ia3_in [in]: y = (x * ia3_in) @ kernel + bias       (IA³ on a feed-forward layer's input)
      ia3_out [features]: y = (x @ kernel + bias) * ia3_out   (IA³ on keys / values)
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)
    bias_init: Initializer = nn.initializers.zeros
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        x = x.astype(self.dtype)
        x_in = x
        if self.has_variable("delta", "ia3_in"):
            x_in = x * self.get_variable("delta", "ia3_in").astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = matmul_bias(x_in, kernel.astype(self.dtype), bias.astype(self.dtype))
        else:
            y = matmul(x_in, kernel.astype(self.dtype))
        if self.has_variable("delta", "ia3_out"):
            y = y * self.get_variable("delta", "ia3_out").astype(self.dtype)
        if self.has_variable("delta", "lora_a"):
            y = y + self._lora(x)
        return y

    def _lora(self, x: Array) -> Array:
        a = self.get_variable("delta", "lora_a").astype(self.dtype)
        b = self.get_variable("delta", "lora_b").astype(self.dtype)
        has_scale = self.has_variable("delta", "lora_scale")
        scale = jnp.asarray(self.get_variable("delta", "lora_scale") if has_scale else 1.0, jnp.float32)
        if self.has_variable("delta", "lora_dropout") and not self.deterministic:
            rate = self.get_variable("delta", "lora_dropout")
            keep = dropout_keep_mask(self.make_rng("dropout"), rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate), 0).astype(self.dtype)
        if a.ndim == 3:  # one LoRA per task, selected per batch row
            idx = self.get_variable("delta", "lora_index")
            h = jnp.einsum("b...i,bir->b...r", x, a[idx])
            h = jnp.einsum("b...r,bro->b...o", h, b[idx])
            scale = scale[idx].reshape((-1,) + (1,) * (h.ndim - 1))
        else:
            # Low-rank path as two thin matmuls: cost O((in + out) r) per token and no [in, out] temporary.
            h = (x @ a) @ b
        return (scale * h).astype(self.dtype)


# ------------------------------------------------------------------------------------------------ dropout

_U32_GOLDEN = 0x9E3779B9


def _mix32(x: Array) -> Array:
    """A bijective 32-bit integer mixer (xorshift-multiply, 'lowbias32'): full avalanche in a few ALU ops."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_keep_mask(rng: Array, rate: float | Array, shape: tuple[int, ...],
                      perm: tuple[int, ...] | None = None) -> Array:
    """bool `shape`, each element True (keep) with probability 1 - rate, independently; a function of `rng`.

    Dropout masks are the largest random draws of a training step (attention-probability dropout alone is
    B·H·T·S per layer), and threefry — JAX's default PRNG, 20 rounds per pair of words — made them about a
    sixth of a BERT-size CPU step. Here threefry only draws two 32-bit seeds from `rng`; every element is
    then a counter-based hash: two rounds of an avalanche mixer over (element index ^ seed), compared with
    round(rate·2³²). That is a few integer ops per element, fuses into the consumer, and partitions like
    an iota under SPMD. The keep probability is 1 - rate to within 2⁻³². Same key, same mask (runs and
    resumes are reproducible); the draws differ from `jax.random.bernoulli`'s. `perm`: return the mask
    transposed by it (`jnp.transpose(mask, perm)`), drawn in that layout directly (attention's backward).
    """
    seeds = jax.random.bits(rng, (3,), jnp.uint32)
    n = int(np.prod(shape, dtype=np.int64))
    if perm is not None:
        if n >= 2**32:
            return jnp.transpose(dropout_keep_mask(rng, rate, shape), perm)
        strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]  # row-major element strides of `shape`
        out_shape = tuple(shape[a] for a in perm)
        ctr = jnp.zeros(out_shape, jnp.uint32)
        for j, a in enumerate(perm):
            if shape[a] > 1:
                ctr = ctr + jax.lax.broadcasted_iota(jnp.uint32, out_shape, j) * jnp.uint32(int(strides[a]))
        return _keep_from_counter(ctr, seeds[0], seeds[1], rate)
    # Element index within a block of < 2**32 elements (trailing axes) and, for larger arrays, block index.
    split = len(shape)
    while split > 0 and int(np.prod(shape[split - 1:], dtype=np.int64)) < 2**32:
        split -= 1
    inner = shape[split:]
    ctr = jnp.zeros(inner, jnp.uint32)
    stride = 1
    for ax in range(len(inner) - 1, -1, -1):
        if inner[ax] > 1:
            ctr = ctr + jax.lax.broadcasted_iota(jnp.uint32, inner, ax) * jnp.uint32(stride)
        stride *= inner[ax]
    ctr = jnp.broadcast_to(ctr, shape)
    second = seeds[1]
    if split > 0 and n >= 2**32:
        block = jnp.zeros(shape, jnp.uint32)
        stride = 1
        for ax in range(split - 1, -1, -1):
            block = block + jax.lax.broadcasted_iota(jnp.uint32, shape, ax) * jnp.uint32(stride)
            stride *= shape[ax]
        second = second ^ _mix32(block * jnp.uint32(_U32_GOLDEN) + seeds[2])
    return _keep_from_counter(ctr, seeds[0], second, rate)


def _keep_from_counter(ctr: Array, first: Array, second: Array, rate: float | Array) -> Array:
    x = _mix32(_mix32(ctr ^ first) ^ second)
    if isinstance(rate, (int, float)):
        threshold = jnp.uint32(min(max(round(rate * 2**32), 0), 2**32 - 1))
    else:  # a traced rate (e.g. LoRA's lora_dropout leaf); 4294967040 = the largest float32 below 2**32
        threshold = jnp.clip(jnp.round(jnp.asarray(rate, jnp.float32) * 2.0**32), 0.0, 4294967040.0)
        threshold = threshold.astype(jnp.uint32)
    return x >= threshold


class Dropout(nn.Module):
    """`flax.linen.Dropout` (same fields and call) with the cheap counter-hash masks of `dropout_keep_mask`.

    x -> where(keep, x / (1 - rate), 0) when training; x unchanged when deterministic or rate == 0."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None, rng: Array | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        keep = dropout_keep_mask(rng, self.rate, x.shape)
        return jax.lax.select(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


class Embed(nn.Module):
    """Token/position embedding table. ids: [...] int -> [..., features]; `attend` gives tied output logits.

    delta (optional, LoRA on an embedding as PEFT does it): lora_a [num_embeddings, r], lora_b [r, features],
    lora_scale: y += lora_scale * lora_a[ids] @ lora_b. `attend` (tied output head) uses the base table only,
    as PEFT's LoRA on the input embedding leaves a tied lm_head unchanged.
    """

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(0.02)

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding", self.embedding_init, (self.num_embeddings, self.features), jnp.float32
        )

    def __call__(self, ids: Array) -> Array:
        y = jnp.take(self.embedding, ids, axis=0).astype(self.dtype)
        if self.has_variable("delta", "lora_a"):
            a = jnp.take(self.get_variable("delta", "lora_a"), ids, axis=0).astype(self.dtype)
            b = self.get_variable("delta", "lora_b").astype(self.dtype)
            has_scale = self.has_variable("delta", "lora_scale")
            scale = jnp.asarray(self.get_variable("delta", "lora_scale") if has_scale else 1.0, jnp.float32)
            y = y + (scale * (a @ b)).astype(self.dtype)
        return y

    def attend(self, x: Array) -> Array:
        """x: [..., features] -> logits [..., num_embeddings] with the same (tied) table."""
        return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


# ------------------------------------------------------------------------------------ module-delta sites

# Adapter non-linearities by code (the code is an int32 leaf of the delta, so it can travel in a pytree).
ADAPTER_ACTIVATIONS = ("relu", "gelu", "swish", "tanh")
_ADAPTER_FNS = (jax.nn.relu, gelu_erf, jax.nn.silu, jnp.tanh)




def adapters(module: nn.Module, h: Array, name: str = "adapter",
             read: Callable[[Array], Array] | None = None) -> Array:
    """Bottleneck adapters stacked at a site: for each slot in order, h = h + up(act(down(read(h)))).

    `read` maps the running stream to the adapter's input: the identity by default (Houlsby, the decoders);
    the Pfeiffer adapter on BERT reads LN(h + residual) instead while adding to the pre-LayerNorm stream h
    (AdapterHub's `residual_before_ln` with `original_ln_before`, re-applied before each stacked adapter).
    Reads delta `name` = {slot: {'down': {'kernel' [D, m], 'bias' [m]}, 'up': {'kernel' [m, D], 'bias' [D]},
    'act': int32 code into ADAPTER_ACTIVATIONS}} in `module`'s scope; slots "0", "1", ... run in numeric order
    (MAD-X stacking: language adapter in slot 0, task adapter in slot 1). h: [..., D]. No-op when absent.
    """
    if not module.has_variable("delta", name):
        return h
    slots = module.get_variable("delta", name)
    dt = h.dtype
    for key in sorted(slots, key=int):
        s = slots[key]
        z = matmul_bias(h if read is None else read(h), s["down"]["kernel"].astype(dt), s["down"]["bias"].astype(dt))
        z = jax.lax.switch(jnp.asarray(s["act"], jnp.int32), _ADAPTER_FNS, z)
        h = h + matmul_bias(z, s["up"]["kernel"].astype(dt), s["up"]["bias"].astype(dt))
    return h


def delta_leaf(module: nn.Module, path: str) -> Array | None:
    """The `delta` collection's leaf at `path` (relative to `module`'s scope, "/"-joined), or None.

    Lets a backbone see a delta that lives in a layer's scope, e.g. the prefix length P for position ids.
    """
    if not module.has_variable("delta", path.split("/")[0]):
        return None
    node: Any = module.variables["delta"]
    for part in path.split("/"):
        if not isinstance(node, dict) and not hasattr(node, "keys"):
            return None
        if part not in node:
            return None
        node = node[part]
    return node


def input_noise(module: nn.Module, x: Array) -> Array:
    """x + delta `input_noise` (read in `module`'s scope) when present, else x unchanged (bit-identical).

    x: [B, T, D] word embeddings of the T real tokens (before a soft prompt is prepended, position / token-type
    embeddings are added and LayerNorm); input_noise: [B, T, D]. The site where R3F/R4F, SMART and FreeLB
    (ftlab.train.regularizers) perturb the input."""
    if not module.has_variable("delta", "input_noise"):
        return x
    return x + module.get_variable("delta", "input_noise").astype(x.dtype)


def with_prefix(k: Array, v: Array, mask: Array | None, prefix_k: Array, prefix_v: Array):
    """Prepend P learned key/value slots (prefix tuning) that every query may attend to.

    k, v: [B, S, K, Dh]; prefix_k/v: [P, K * Dh]; mask: bool [B, 1, T|1, S] -> k, v [B, P+S, K, Dh], mask
    [B, 1, T|1, P+S]. The prefix is used as given (no RoPE), as PEFT passes it as past key/values.
    """
    b, _, kh, dh = k.shape
    p = prefix_k.shape[0]
    pk = jnp.broadcast_to(prefix_k.reshape(1, p, kh, dh).astype(k.dtype), (b, p, kh, dh))
    pv = jnp.broadcast_to(prefix_v.reshape(1, p, kh, dh).astype(v.dtype), (b, p, kh, dh))
    k, v = jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)
    if mask is not None:
        ones = jnp.ones(mask.shape[:-1] + (p,), bool)
        mask = jnp.concatenate([ones, jnp.broadcast_to(mask, mask.shape[:-1] + (mask.shape[-1],))], axis=-1)
    return k, v, mask


class LayerNorm(nn.Module):
    """LayerNorm with params `scale`, `bias`; statistics in float32. x: [..., D] -> [..., D]."""

    epsilon: float = 1e-12
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x32 = x.astype(_stat_dtype(x.dtype))
        mean = mean_last(x32)
        var = mean_last(jnp.square(x32 - mean))
        y = scale_shift((x32 - mean) * jax.lax.rsqrt(var + self.epsilon), scale, bias)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """Llama RMSNorm with param `scale`: normalise in float32, cast back, then scale (HF order). [..., D]."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(_stat_dtype(x.dtype))
        y = x32 * jax.lax.rsqrt(mean_last(jnp.square(x32)) + self.epsilon)
        return scale_only(y.astype(self.dtype), scale)


_ROW_SHARDING: contextvars.ContextVar = contextvars.ContextVar("ftlab_row_sharding", default=None)


@contextlib.contextmanager
def rows_sharded_over(mesh: Any):
    """While tracing inside this context, `constrain_rows` splits activations' rows over (data, fsdp) of `mesh`
    (`make_train_step` with shardings enters it; `jax.set_mesh` cannot be used inside jit)."""
    from jax.sharding import NamedSharding, PartitionSpec

    token = _ROW_SHARDING.set(NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    try:
        yield
    finally:
        _ROW_SHARDING.reset(token)


def constrain_rows(x: Array) -> Array:
    """Activations [B, ...] at a block boundary: rows split over the mesh's (data, fsdp) axes, the rest
    replicated, when traced under `rows_sharded_over`; a no-op otherwise. Without it XLA may keep FSDP-gathered
    activations whole on every device (measured: MiniLM fsdp=8 used 825 MB temp per device vs 284 MB with
    data=8)."""
    sharding = _ROW_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def padding_mask(attention_mask: Array) -> Array:
    """[B, S] 1=real -> bool [B, 1, 1, S] (broadcast over heads and queries)."""
    return attention_mask.astype(bool)[:, None, None, :]


def causal_mask(q_pos: Array, k_len: int) -> Array:
    """q_pos: [T] slot index of each query -> bool [1, 1, T, S]: key slot <= query slot."""
    return (jnp.arange(k_len)[None, :] <= q_pos[:, None])[None, None]


ATTENTION_IMPLS = ("xla", "jax", "cudnn")


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    scale: float | None = None,
    impl: str = "xla",
    causal: bool = False,
) -> Array:
    """Softmax attention with grouped key/value heads (GQA/MQA when K < H).

    q: [B, T, H, Dh], k/v: [B, S, K, Dh], mask: bool broadcastable to [B, H, T, S] (True = attend).
    Returns [B, T, H, Dh] in q's dtype.

    impl 'xla' (default): explicit matmuls rather than `jax.nn.dot_product_attention`, because
    attention-probability dropout (HF's `attention_probs_dropout_prob`) needs the probabilities; masked scores
    use finfo.min (not -inf) so a fully masked row (a pad query) stays finite, as in HF.
    impl 'cudnn' (GPU, bfloat16/float16: cuDNN's fused flash attention) and 'jax' (the same call with
    jax's XLA implementation, to check the arguments on any backend) go through
    `jax.nn.dot_product_attention` with key lengths instead of the mask. That is exact only for right-padded
    keys (what ftlab's collators produce) and is taken only where it applies: no attention dropout in this
    call, S == T (no KV cache, no prefix slots). `causal` says the mask is causal ∧ padding (decoders), else
    it is padding only. Anywhere else the explicit path runs.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    dropping = dropout_rate > 0.0 and dropout_rng is not None
    if impl != "xla" and not dropping and q.shape[1] == k.shape[1]:
        return _fused_attention(q, k, v, mask, scale, impl, causal)
    b, t, h, dh = q.shape
    kh = k.shape[2]
    g = h // kh
    scale = dh**-0.5 if scale is None else scale
    # Heads-major layouts so both products are plain batched matmuls over (B, K) with the [G*T, S] score
    # matrix in its natural layout: XLA then never transposes a [.., T, S] array (forward or backward),
    # only the small [B, T, H, Dh] q/k/v/output. q -> [B, K, G*T, Dh] (query heads of one key/value head
    # adjacent, so [B, K, G*T, S] is [B, H, T, S] by a bitcast); k, v -> [B, K, S, Dh].
    qh = q.reshape(b, t, kh, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, dh)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    out = softmax_attention(qh, kt, vt, mask, dropout_rng if dropping else None, float(scale),
                            float(dropout_rate) if dropping else 0.0, h)
    return out.reshape(b, kh, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


# Attention's backward recomputes the probabilities instead of keeping them. Plain autodiff of
# softmax(QKᵀ)·V keeps the [B, H, T, S] scores, exponentials and probabilities of every layer (and, with
# attention dropout, the keep mask) alive from the forward pass to the backward: for SmolLM2 at batch 8 × 256
# that is ~19 MB per array per layer of the 30. `softmax_attention` keeps only the row max and the row sum
# [.., T, 1] and recomputes scores, probabilities and the (counter-hash, hence reproducible) dropout mask from
# q, k and the key in the backward pass, as FlashAttention does (Dao et al. 2022: dS = P ∘ (dP − rowsum(dP ∘ P))):
# one extra Q·Kᵀ product, a few percent of a layer's FLOPs. The backward works on the transposed [.., S, T]
# matrices (Pᵀ·dO, V·dOᵀ and dSᵀ·Q are then plain matmuls): recomputed in the forward's layout, XLA's CSE
# merged the recomputation with the forward's products (optimization barriers do not survive to CSE on CPU)
# and so kept them alive anyway. Forward values are those of the explicit formula bit for bit; gradients
# equal plain autodiff to rounding (tests).
_BATCH_DIMS = ((0, 1), (0, 1))


def _attention_probs(qh, kt, mask, scale, heads):
    """Softmax probabilities [B, K, G*T, S] in the statistics dtype, and the row max and sum [.., G*T, 1]."""
    b, kh, gt, _ = qh.shape
    s_len = kt.shape[2]
    scores = jax.lax.dot_general(qh, kt, (((3,), (3,)), _BATCH_DIMS))  # [B, K, G*T, S]
    scores = scores.astype(_stat_dtype(qh.dtype)) * scale
    if mask is not None:
        # Masked scores are finfo.min, not -inf, so a fully masked row (a pad query) stays finite, as in HF.
        masked = jnp.where(mask, scores.reshape(b, heads, gt * kh // heads, s_len), jnp.finfo(scores.dtype).min)
        scores = masked.reshape(b, kh, gt, s_len)
    row_max = jax.lax.stop_gradient(scores.max(-1, keepdims=True))
    unnormalized = jnp.exp(scores - row_max)
    row_sum = unnormalized.sum(-1, keepdims=True)
    return unnormalized / row_sum, (row_max, row_sum)


def _transposed_mask(mask, heads, kh, gt, s_len):
    """bool mask broadcastable to [B, H, T, S] -> [B, K, S, G*T] (the transposed score layout)."""
    b = mask.shape[0]
    t = gt * kh // heads
    full = jnp.broadcast_to(mask, (b, heads, t, s_len)).reshape(b, kh, heads // kh, t, s_len)
    return full.transpose(0, 1, 4, 2, 3).reshape(b, kh, s_len, gt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def softmax_attention(qh, kt, vt, mask, rng, scale: float, rate: float, heads: int):
    """softmax(scale·Q·Kᵀ masked) (dropped out) · V in the heads-major layout of `dot_product_attention`.

    qh [B, K, G*T, Dh], kt/vt [B, K, S, Dh], mask bool broadcastable to [B, H, T, S] or None, rng the dropout
    key (None: no dropout), rate the attention dropout rate. Returns [B, K, G*T, Dh] in qh's dtype.
    """
    return _softmax_attention_fwd(qh, kt, vt, mask, rng, scale, rate, heads)[0]


def _softmax_attention_fwd(qh, kt, vt, mask, rng, scale, rate, heads):
    probs, stats = _attention_probs(qh, kt, mask, scale, heads)
    probs = probs.astype(qh.dtype)
    if rng is not None:
        b, kh, gt, s_len = probs.shape
        # Drawn over [B, H, T, S] (the same elements in the same order as [B, K, G*T, S]).
        keep = dropout_keep_mask(rng, rate, (b, heads, gt * kh // heads, s_len)).reshape(probs.shape)
        probs = jnp.where(keep, probs / (1.0 - rate), 0).astype(qh.dtype)
    out = jax.lax.dot_general(probs, vt, (((3,), (2,)), _BATCH_DIMS))  # [B, K, G*T, Dh]
    return out, (qh, kt, vt, mask, rng, stats)


def _softmax_attention_bwd(scale, rate, heads, res, g):
    qh, kt, vt, mask, rng, (row_max, row_sum) = res
    b, kh, gt, _ = qh.shape
    s_len = kt.shape[2]
    stat = _stat_dtype(qh.dtype)
    # Transposed layout [B, K, S, G*T] throughout; the row statistics broadcast along S. The recomputation
    # reads q through a zero that depends on the incoming cotangent g: otherwise XLA's scheduler, free to run
    # it as soon as q and k exist, hoists it into the forward pass and keeps its result alive until here.
    after_g = qh + (g.reshape(-1)[0] * 0).astype(qh.dtype)
    scores_t = jax.lax.dot_general(kt, after_g, (((3,), (3,)), _BATCH_DIMS)).astype(stat) * scale
    mask_t = None if mask is None else _transposed_mask(mask, heads, kh, gt, s_len)
    if mask_t is not None:
        scores_t = jnp.where(mask_t, scores_t, jnp.finfo(stat).min)
    probs_t = jnp.exp(scores_t - jnp.swapaxes(row_max, 2, 3)) / jnp.swapaxes(row_sum, 2, 3)
    dropped_t = probs_t.astype(qh.dtype)
    if rng is not None:
        t = gt * kh // heads
        # keep [B, H, T, S] drawn directly as [B, H, S, T], then [B, K, G, S, T] -> [B, K, S, G*T]
        keep_t = dropout_keep_mask(rng, rate, (b, heads, t, s_len), perm=(0, 1, 3, 2))
        keep_t = keep_t.reshape(b, kh, heads // kh, s_len, t).transpose(0, 1, 3, 2, 4).reshape(b, kh, s_len, gt)
        dropped_t = jnp.where(keep_t, dropped_t / (1.0 - rate), 0).astype(qh.dtype)
    g = g.astype(qh.dtype)
    dv = jax.lax.dot_general(dropped_t, g, (((3,), (2,)), _BATCH_DIMS))  # [B, K, S, Dh]
    dprobs_t = jax.lax.dot_general(vt, g, (((3,), (3,)), _BATCH_DIMS)).astype(stat)  # [B, K, S, G*T]
    if rng is not None:
        dprobs_t = jnp.where(keep_t, dprobs_t / (1.0 - rate), 0)
    dscores_t = probs_t * (dprobs_t - (dprobs_t * probs_t).sum(2, keepdims=True))
    if mask_t is not None:
        dscores_t = jnp.where(mask_t, dscores_t, 0)
    dscores_t = (dscores_t * scale).astype(qh.dtype)
    dq = jax.lax.dot_general(dscores_t, kt, (((2,), (2,)), _BATCH_DIMS))  # [B, K, G*T, Dh]
    dk = jax.lax.dot_general(dscores_t, qh, (((3,), (2,)), _BATCH_DIMS))  # [B, K, S, Dh]
    return dq.astype(qh.dtype), dk.astype(kt.dtype), dv.astype(vt.dtype), None, None


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _fused_attention(q, k, v, mask, scale, impl, causal):
    """`jax.nn.dot_product_attention` with per-row key lengths read off the bool mask (see above)."""
    lengths = None
    if mask is not None:
        # Padding-only masks are [B, 1, 1|T, S]; causal ∧ padding masks [B, 1, T, S] (their last query row
        # sees every real key of a right-padded row). Either way the last row's count is the key length.
        lengths = mask[:, 0, -1, :].sum(-1).astype(jnp.int32)
        # A row with no real key (an all-pad filler row) gets length 1, not 0: finite output, loss-masked.
        lengths = jnp.maximum(jnp.broadcast_to(lengths, (q.shape[0],)), 1)
    out = jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), scale=scale, is_causal=causal,
        key_value_seq_lengths=lengths, implementation="cudnn" if impl == "cudnn" else "xla",
    )
    return out.astype(q.dtype)


REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": None,  # nothing saved: the whole layer is recomputed in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # save matmul outputs, recompute the elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + recompute attention
}


def remat_layer(cls: type, remat: bool | str) -> type:
    """The layer class under `model.remat`: False/'none' (as is), True/'full' (recompute the whole layer),
    'dots' (keep matmul outputs, recompute elementwise work), 'dots_no_batch' (also recompute attention's
    batched matmuls). The policy trades activation memory for recomputation in the backward pass."""
    key = {False: "none", True: "full", "false": "none", "true": "full", "": "none"}.get(remat, remat)
    if key not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)} (or true/false), got {remat!r}")
    if key == "none":
        return cls
    return nn.remat(cls, policy=REMAT_POLICIES[key])


# ----------------------------------------------------------------------------------------------- RoPE


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies [Dh/2] (float32) as HF computes them, for rope types default, linear, llama3."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        # HF divides positions by the factor; dividing the frequencies is the same product.
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wl, high_wl = old_len / low, old_len / high
        wavelen = 2 * np.pi / inv
        out = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotate-half RoPE (HF layout). x: [B, T, N, Dh], positions: [B, T] int -> [B, T, N, Dh]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb)[:, :, None, :], jnp.sin(emb)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)
