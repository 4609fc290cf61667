"""Label-word scores from language-model logits: the JAX side of prompt-based fine-tuning and prompting.

A prompt batch (`ftlab.prompts.encode`, shapes there: B examples, R rows each, Q verbalizer choices, M target
tokens per choice, C labels) is run through a model with an LM head ('masked_lm' for the cloze scorer,
'causal_lm' for the causal one, 'seq2seq_lm' for T5's seq2seq scorer, whose R = Q rows are decoder rows
reading one encoder row per example, `ftlab.prompts.seq2seq`), giving logits [B*R, T, V]. Then

    choice score  s[b, q] = Σ_m w[b,q,m] · log_softmax(logits[row[b,q], pos[b,q,m]])[tok[b,q,m]]
                   (causal: sum of the label word's (and suffix's) log-probs; cloze: their mean over the masks;
                    seq2seq: sum of the decoder's log-probs of the word's tokens (and eos), teacher-forced)
    label score   z[b, c] = mean of s[b, q] over the choices q of label c

Prompt-based fine-tuning (LM-BFF, PET) minimises cross-entropy over z: softmax over the label words' scores,
no new head; predictions are argmax_c z. `make_loss` / `make_scores` plug into `ftlab.train.step`'s
`loss(logits, batch, step)` and `scores(logits, batch)` hooks.

In-context prompting reuses one long shared prefix (the demonstrations): `score_with_prefix` runs the prefix
once into a KV cache and scores each batch of rows against it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab.train import losses

Array = jax.Array
HEADS = {"cloze": "masked_lm", "causal": "causal_lm", "seq2seq": "seq2seq_lm"}
FAMILY_SCORER = {"bert": "cloze", "llama": "causal", "gpt2": "causal", "t5": "seq2seq"}


def choice_scores(logits: Array, batch: dict) -> Array:
    """logits [B*R, T, V] -> choice scores [B, Q] (float32). With batch['positions'] [B*R, P] (the batch
    `ftlab.prompts.encode` collates) the logits are the LM head's at those positions only, [B*R, P, V], and each
    choice_pos is looked up among its row's positions."""
    pos = batch["choice_pos"]
    if "positions" in batch:
        if logits.shape[1] != batch["positions"].shape[1]:
            raise ValueError(f"logits {logits.shape} are not at the batch's {batch['positions'].shape[1]} "
                             "positions: pass positions= to the model (ftlab.train.step.model_inputs)")
        at = jnp.asarray(batch["positions"])[batch["choice_row"]]  # [B, Q, P]
        pos = jnp.argmax(at[:, :, None, :] == pos[..., None], axis=-1)  # [B, Q, M] slot of each read position
    picked = logits[batch["choice_row"][..., None], pos]  # [B, Q, M, V]
    logp = jax.nn.log_softmax(picked.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, batch["choice_tok"][..., None], axis=-1)[..., 0]  # [B, Q, M]
    return jnp.sum(tok * batch["choice_w"], axis=-1)


def label_scores(logits: Array, batch: dict, num_labels: int) -> Array:
    """logits [B*R, T, V] -> label scores [B, C]: the mean score of each label's words."""
    s = choice_scores(logits, batch)
    onehot = jax.nn.one_hot(batch["choice_label"], num_labels, dtype=jnp.float32)  # [B, Q, C]
    return jnp.einsum("bq,bqc->bc", s, onehot) / jnp.maximum(onehot.sum(1), 1.0)


def make_scores(num_labels: int) -> Callable:
    """scores(logits, batch) -> [B, C] for `step.make_eval_step(..., scores=...)`."""
    return lambda logits, batch: label_scores(logits, batch, num_labels)


def make_loss(num_labels: int) -> Callable:
    """loss(logits, batch, step) -> (CE over the label scores, {'loss_sum', 'weight'}) for the train step."""
    return lambda logits, batch, step: losses.compute("classification", label_scores(logits, batch, num_labels),
                                                      batch)


def model_inputs(batch: dict) -> dict:
    """Model keyword inputs of a prompt batch (position ids when the rows are left-padded; the decoder rows
    of a seq2seq batch)."""
    kw = {"attention_mask": batch["attention_mask"]}
    for k in ("position_ids", "positions", "decoder_input_ids", "decoder_attention_mask", "encoder_rows"):
        if k in batch:
            kw[k] = batch[k]
    return kw


@partial(jax.jit, static_argnums=(0, 3))
def _scores(model, variables, batch, num_labels):
    logits = model.apply(variables, batch["input_ids"], deterministic=True, **model_inputs(batch))
    return label_scores(logits, batch, num_labels)


def score_batch(model: Any, variables: dict, batch: dict, num_labels: int) -> np.ndarray:
    """Label scores [B, C] of one prompt batch (jitted per shape)."""
    keys = ("input_ids", "attention_mask", "position_ids", "positions", "choice_row", "choice_pos", "choice_tok",
            "choice_w", "choice_label", "decoder_input_ids", "decoder_attention_mask", "encoder_rows")
    return np.asarray(_scores(model, variables, {k: batch[k] for k in keys if k in batch}, num_labels))


@partial(jax.jit, static_argnums=(0, 3))
def prefill(model: Any, variables: dict, prefix: Array, slots: int) -> dict:
    """KV cache [1, slots, ...] holding `prefix` [P] at slots 0..P-1 (a causal_lm decoder)."""
    from ftlab.models.generate import init_cache

    p = prefix.shape[0]
    cache = init_cache(model.config, 1, slots, jnp.bfloat16 if model.config.dtype == "bfloat16" else jnp.float32)
    _, cache = model.apply(variables, prefix[None], jnp.ones((1, slots), jnp.int32),
                           position_ids=jnp.arange(p)[None], cache=cache, cache_index=0)
    return cache


@partial(jax.jit, static_argnums=(0, 3, 5))
def _scores_cached(model, variables, cache, p, batch, num_labels):
    ids = batch["input_ids"]
    n, t = ids.shape
    s = jax.tree_util.tree_leaves(cache)[0].shape[1]
    cache = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape[1:])), cache)
    mask = jnp.concatenate([jnp.ones((n, p), jnp.int32), batch["attention_mask"],
                            jnp.zeros((n, s - p - t), jnp.int32)], axis=1)
    kw = {"positions": batch["positions"]} if "positions" in batch else {}  # LM head at the read positions only
    logits, _ = model.apply(variables, ids, mask, position_ids=p + jnp.broadcast_to(jnp.arange(t), (n, t)),
                            cache=cache, cache_index=p, **kw)
    return label_scores(logits, batch, num_labels)


def score_with_prefix(model: Any, variables: dict, cache: dict, prefix_len: int, last_prefix_token: int,
                      batch: dict, num_labels: int) -> np.ndarray:
    """Label scores [B, C] of causal prompt rows that continue a shared prefix held in `cache` (from `prefill`
    of the prefix without its last token; `prefix_len` = the tokens in the cache). Each row's start token is
    replaced by `last_prefix_token`, so position 0 of a row predicts its first token exactly as in the
    prefix-free encoding."""
    ids = np.array(batch["input_ids"])
    ids[:, 0] = np.where(batch["attention_mask"][:, 0] > 0, last_prefix_token, ids[:, 0])
    keys = ("attention_mask", "positions", "choice_row", "choice_pos", "choice_tok", "choice_w", "choice_label")
    feed = {"input_ids": ids, **{k: batch[k] for k in keys if k in batch}}
    return np.asarray(_scores_cached(model, variables, cache, prefix_len, feed, num_labels))


# ------------------------------------------------------------------------------------------------ calibration

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs


def content_free_examples(fields: tuple[str, ...], texts: tuple[str, ...] = CONTENT_FREE) -> list[dict[str, Any]]:
    """One example per content-free string, with every text field the template reads (`fields`, e.g.
    ('text_a', 'text_b') from `ftlab.prompts.template.template_fields`) set to it (Zhao et al. 2021, §5)."""
    if not texts:
        raise ValueError("calibration needs at least one content-free text")
    return [{**{f: t for f in fields}, "label": 0, "source": f"content-free:{t!r}"} for t in texts]


def calibrate(scores: np.ndarray, content_free_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): p̂ = softmax over the label scores,
    p̂_cf = the mean of p̂ over the content-free inputs (scored with the same prompt and demonstrations), and
    W = diag(p̂_cf)⁻¹, b = 0. Returns (log of W·p̂ renormalised to sum 1 per row, [N, C]; p̂_cf, [C]).

    Predictions are its argmax, which equals the paper's argmax softmax(W·p̂ + b) (the paper's extra softmax
    changes the probabilities, not their order). A prompt whose content-free input already scores the labels
    uniformly is left unchanged."""
    s = np.asarray(scores, np.float64)
    cf = np.asarray(content_free_scores, np.float64)
    if s.ndim != 2 or cf.ndim != 2 or cf.shape[1] != s.shape[1] or not len(cf):
        raise ValueError(f"calibrate: scores [N, C] and content-free scores [K>0, C] expected, got {s.shape} "
                         f"and {cf.shape}")

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p_cf = np.exp(log_softmax(cf)).mean(0)
    out = log_softmax(log_softmax(s) - np.log(p_cf))
    return out, p_cf


# ------------------------------------------------------------------------------------------------ config

DEFAULTS = {
    "pattern": "",        # '' = off; "<task>:<i>" or "<i>" (a pattern of ftlab.prompts.patterns for task.name)
    "template": "",       # overrides the pattern's template, e.g. "{sentence} It was {mask}."
    "verbalizer": "",     # overrides the pattern's words: "0=terrible|1=great" (or a dict in a config file)
    "scorer": "auto",     # cloze (masked LM) | causal (causal LM) | seq2seq (T5) | auto (the model family's)
    "score_suffix": True,  # causal: also score the template text after the label word; seq2seq: the eos after it
    "slot_text": "",      # seq2seq: what the encoder reads in the {mask} slot ('' = drop it; '<extra_id_0>' = T5's
                          # span-corruption form)
    "demos": "none",      # LM-BFF demonstrations (ftlab.prompts.demos): none | random | similar (MiniLM cosine)
    "demo_sets": 1,       # demonstration sets per evaluation input; label scores are averaged over them
}


def resolve(prompt_cfg: Any, task: Any, model_family: str) -> dict[str, Any] | None:
    """The config's prompt section -> {'template', 'verbalizer', 'scorer', 'score_suffix', 'head', 'demos',
    'demo_sets', 'slot_text'}, or None when prompting is off (no pattern and no template). Raises naming the key
    for an unusable setting."""
    from ftlab.prompts import get_pattern, parse_template, parse_verbalizer

    if not prompt_cfg or not (prompt_cfg.get("pattern") or prompt_cfg.get("template")):
        return None
    unknown = set(prompt_cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"prompt: unknown key(s) {sorted(unknown)} (valid: {sorted(DEFAULTS)})")
    if task.kind != "classification":
        raise ValueError(f"prompt-based training needs a classification task; {task.name!r} is {task.kind}")
    pat = get_pattern(str(prompt_cfg["pattern"]), task.name) if prompt_cfg.get("pattern") else None
    template = prompt_cfg.get("template") or (pat.template if pat else "")
    verbalizer = prompt_cfg.get("verbalizer") or (pat.verbalizer if pat else "")
    if not verbalizer:
        raise ValueError("prompt.template is set but prompt.verbalizer is empty (e.g. '0=terrible|1=great')")
    parse_template(template)
    parse_verbalizer(verbalizer, task.label_names, "prompt.verbalizer")
    scorer = prompt_cfg.get("scorer", "auto")
    if scorer == "auto":
        scorer = FAMILY_SCORER[model_family]
    if scorer not in HEADS:
        raise ValueError(f"prompt.scorer={scorer!r}: choose from auto, {', '.join(HEADS)}")
    if scorer != FAMILY_SCORER[model_family]:
        raise ValueError(f"prompt.scorer={scorer!r} does not fit a {model_family} model (cloze needs an encoder "
                         "with a masked-LM head, causal a decoder, seq2seq an encoder–decoder)")
    demos = prompt_cfg.get("demos", "none")
    if demos not in ("none", "random", "similar"):
        raise ValueError(f"prompt.demos={demos!r}: choose from none, random, similar")
    if demos != "none" and scorer == "seq2seq":
        raise ValueError(f"prompt.demos={demos!r}: LM-BFF demonstrations are not implemented for the seq2seq "
                         "scorer (set prompt.demos=none)")
    slot_text = str(prompt_cfg.get("slot_text", ""))
    if slot_text and scorer != "seq2seq":
        raise ValueError(f"prompt.slot_text={slot_text!r} is read by the seq2seq scorer only (this run's scorer: "
                         f"{scorer}; its {{mask}} slot holds the label word)")
    if int(prompt_cfg.get("demo_sets", 1)) < 1:
        raise ValueError("prompt.demo_sets must be >= 1")
    return {"template": template, "verbalizer": dict(verbalizer) if not isinstance(verbalizer, str) else verbalizer,
            "scorer": scorer, "score_suffix": bool(prompt_cfg.get("score_suffix", True)), "head": HEADS[scorer],
            "demos": demos, "demo_sets": int(prompt_cfg.get("demo_sets", 1)), "slot_text": slot_text}


def embed_sentences(texts: list[str], model_name: str = "minilm", batch_size: int = 64,
                    max_length: int = 128) -> np.ndarray:
    """Sentence embeddings [N, D], L2-normalised mean-pooled last hidden states (all-MiniLM-L6-v2's recipe):
    the similarity for LM-BFF's demonstration filtering."""
    from ftlab.checkpoint import load_base
    from ftlab.models import build_model, init_params

    base = load_base(model_name)
    model = build_model(base.config, None)
    params, _ = init_params(model, jax.random.key(0), base.params, np.zeros((1, 4), np.int32))

    @jax.jit
    def run(ids, mask):
        h = model.apply({"params": params}, ids, mask)
        m = mask[..., None].astype(jnp.float32)
        v = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    out = []
    for s in range(0, len(texts), batch_size):
        enc = base.tokenizer(texts[s : s + batch_size], truncation=True, max_length=max_length,
                             padding="max_length", return_tensors="np")
        out.append(np.asarray(run(enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32))))
    return np.concatenate(out)


def add_demonstrations(examples: list, pool: list, prompt: dict, label_names, seed: int, is_pool: bool,
                       num_sets: int) -> tuple[list, str]:
    """(examples with LM-BFF demonstrations, the template reading them) for `prompt` (from `resolve`)."""
    from ftlab.prompts.demos import demo_template, with_demonstrations

    emb = None
    if prompt["demos"] == "similar":
        text = lambda e: e["text_a"] if e.get("text_b") is None else f"{e['text_a']} {e['text_b']}"  # noqa: E731
        emb = (embed_sentences([text(e) for e in examples]), embed_sentences([text(e) for e in pool]))
    out = with_demonstrations(examples, pool, prompt["template"], prompt["verbalizer"], label_names, seed,
                              prompt["demos"], num_sets, emb, pool_is_examples=is_pool)
    return out, demo_template(prompt["template"], prompt["scorer"])


# ------------------------------------------------------------------------------------------------ PET pieces


def pet_soft_labels(scores: list[np.ndarray], weights: list[float] | None = None,
                    temperature: float = 2.0) -> np.ndarray:
    """PET's ensemble (Schick & Schütze 2021a, §3.2): the label scores [N, C] of the models of several patterns on
    unlabeled text, averaged with `weights` (PET: each model's training-set accuracy before training; None =
    uniform), then softmax(· / temperature) -> soft labels [N, C]."""
    s = np.stack([np.asarray(x, np.float64) for x in scores])  # [P, N, C]
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(scores),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(scores)} non-negative numbers, not all 0; got {weights}")
    avg = np.tensordot(w / w.sum(), s, axes=1) / temperature
    avg -= avg.max(-1, keepdims=True)
    p = np.exp(avg)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def distillation_loss(logits: Array, batch: dict, temperature: float = 2.0) -> tuple[Array, dict]:
    """PET's distillation loss: KL(soft labels || softmax(logits / T)) · T², averaged over real examples.
    logits [B, C], batch['soft_labels'] [B, C] (rows sum to 1), batch['example_mask'] [B]."""
    q = batch["soft_labels"].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(q * (jnp.log(jnp.maximum(q, 1e-12)) - logp), axis=-1) * temperature**2
    w = batch.get("example_mask", jnp.ones(logits.shape[0], jnp.float32))
    loss_sum, weight = jnp.sum(kl * w), jnp.sum(w)
    return loss_sum / jnp.maximum(weight, 1.0), {"loss_sum": loss_sum, "weight": weight}
