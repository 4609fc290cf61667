"""Language-model objectives: BERT's masked LM (80/10/10, whole-word option) and causal LM, plus their metrics.

Masked LM (Devlin et al. 2019, §3.1 and create_pretraining_data.py). In every row, of the candidate tokens
(attended, not [CLS]/[SEP]/[PAD]) exactly n = clip(round(prob · #candidates), 1, M) are chosen uniformly
at random (M = `max_predictions`, the number of prediction slots per row; as BERT's max_predictions_per_seq).
Each chosen token is replaced by [MASK] with probability `mask_ratio` (0.8), by a uniformly random vocabulary
token with probability `random_ratio` (0.1), and left unchanged otherwise; the loss is the cross-entropy of
the original token at the chosen positions only. The vocabulary projection is computed at those M slots
only (`positions`), not at all T positions: the prediction head's cost drops by T/M (≈ 6.7× at prob 0.15).

Whole-word masking (BERT's 2019 release, create_masked_lm_predictions): WordPiece continuation pieces
("##...") belong to the word that starts before them; words are visited in random order and each is taken
whole if it still fits into n chosen tokens (a word that would overflow is skipped, later ones may fit); the
80/10/10 choice is then made per token (as HF's DataCollatorForWholeWordMask).

Masks are drawn inside the jitted step from the step's key (fold_in(rng, step)): fresh masks at every step
and therefore in every epoch, and a resumed run draws the same ones. Evaluation masks are fixed: each eval
batch's key is fold_in(key(0), the batch's first row index), the same at every eval and in every run.

Causal LM: next-token cross-entropy over the packed rows (ftlab.train.losses, kind 'causal_lm').

Metrics: `loss` (mean cross-entropy per predicted token) and `perplexity` = exp(loss); for the masked LM this
is the masked-token perplexity HF's run_mlm.py reports. `pseudo_perplexity` is Salazar et al. (2020)'s
PPPL = exp(−(1/N) Σ_W Σ_t log P(w_t | W without w_t)), masking one token at a time.

Config section `lm` (see DEFAULTS): the text sources and packing of an LM stage (`task.name` mlm | clm) or of
the LM term of a joint run (ftlab.train.multitask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULTS = {
    "train": "",            # text source (ftlab.data.text): a .txt[.gz] / .jsonl[.gz] path, task:<name>:<split>, tfds:...
    "eval": "",             # held-out text source; '' = the last `heldout` documents of `train`
    "heldout": 1000,        # documents of `train` held out for evaluation when `eval` is ''
    "field": "text",        # JSONL field / tfds feature holding the text
    "max_documents": 0,     # >0: use this many documents of `train` (task: sources draw them with task.subset_seed)
    "block_size": 128,      # tokens per packed row
    "mlm_prob": 0.15,       # masked LM: fraction of candidate tokens chosen per row
    "mask_ratio": 0.8,      # ... of which replaced by [MASK]
    "random_ratio": 0.1,    # ... by a random token (the rest stay unchanged)
    "whole_word": False,    # whole-word masking (WordPiece '##' pieces go with their word)
    "max_predictions": 0,   # prediction slots per row; 0 = round(block_size · mlm_prob) + 1
}

LM_TASKS = {"mlm": "masked_lm", "clm": "causal_lm"}


def check_config(lm: dict) -> dict:
    from ftlab.config import ConfigError

    unknown = sorted(set(lm) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown lm key(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **lm}
    if not 0.0 < out["mlm_prob"] < 1.0:
        raise ConfigError(f"lm.mlm_prob={out['mlm_prob']} must be in (0, 1)")
    if out["mask_ratio"] < 0 or out["random_ratio"] < 0 or out["mask_ratio"] + out["random_ratio"] > 1:
        raise ConfigError(f"lm.mask_ratio={out['mask_ratio']} and lm.random_ratio={out['random_ratio']} must be "
                          ">= 0 with a sum <= 1")
    if out["block_size"] < 8:
        raise ConfigError(f"lm.block_size={out['block_size']} must be at least 8")
    return out


def num_predictions(lm: dict) -> int:
    m = lm.get("max_predictions", 0)
    return min(lm["block_size"], m if m > 0 else int(round(lm["block_size"] * lm["mlm_prob"])) + 1)


def continuation_table(tokenizer: Any) -> np.ndarray:
    """[V] bool: vocabulary entries that continue a word (WordPiece '##' pieces)."""
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, bool)
    for tok, i in vocab.items():
        table[i] = tok.startswith("##")
    return table


def mask_tokens(rng: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, *, mask_id: int,
                vocab_size: int, special_ids: Sequence[int], num_predict: int, prob: float = 0.15,
                mask_ratio: float = 0.8, random_ratio: float = 0.1,
                continuation: jax.Array | None = None) -> dict[str, jax.Array]:
    """BERT masking of [B, T] rows (module docstring) -> {'input_ids' (corrupted), 'positions' [B, M],
    'labels' [B, M] (original ids at chosen slots, -100 at unused slots), 'chosen' [B, T] bool}."""
    b, t = input_ids.shape
    k_sel, k_how, k_tok = jax.random.split(rng, 3)
    special = jnp.isin(input_ids, jnp.asarray(list(special_ids), jnp.int32))
    cand = (attention_mask > 0) & ~special
    n_cand = cand.sum(-1)
    n_pred = jnp.where(n_cand > 0, jnp.clip(jnp.round(n_cand * prob), 1, num_predict), 0).astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    u = jax.random.uniform(k_sel, (b, t))
    rows = jnp.arange(b)[:, None]
    if continuation is None:  # n tokens uniformly at random: the n smallest of i.i.d. uniform scores
        order = jnp.argsort(jnp.where(cand, u, 2.0), axis=-1)
        rank = jnp.zeros((b, t), jnp.int32).at[rows, order].set(pos.astype(jnp.int32))
        chosen = cand & (rank < n_pred[:, None])
    else:
        start = ~jnp.asarray(continuation)[input_ids] | ~cand
        word = jnp.cumsum(start, axis=-1) - 1  # [B, T] word index of every token
        wlen = jnp.zeros((b, t), jnp.int32).at[rows, word].add(cand.astype(jnp.int32))  # candidate tokens per word
        order = jnp.argsort(jnp.where(wlen > 0, u, 2.0), axis=-1)  # the words in random order

        def visit(carry, w):  # w [B]: the next word of every row; take it whole if it still fits
            count, taken = carry
            n_w = jnp.take_along_axis(wlen, w[:, None], -1)[:, 0]
            take = (n_w > 0) & (count + n_w <= n_pred)
            taken = taken.at[jnp.arange(b), w].set(take)
            return (count + jnp.where(take, n_w, 0), taken), None

        (_, taken), _ = jax.lax.scan(visit, (jnp.zeros(b, jnp.int32), jnp.zeros((b, t), bool)), order.T)
        chosen = cand & jnp.take_along_axis(taken, word, axis=-1)
    positions = jnp.argsort(jnp.where(chosen, pos, t + pos), axis=-1)[:, :num_predict].astype(jnp.int32)
    slot_used = jnp.take_along_axis(chosen, positions, axis=-1)
    labels = jnp.where(slot_used, jnp.take_along_axis(input_ids, positions, axis=-1), -100)
    r = jax.random.uniform(k_how, (b, t))
    random_tok = jax.random.randint(k_tok, (b, t), 0, vocab_size, jnp.int32)
    ids = jnp.where(chosen & (r < mask_ratio), mask_id, input_ids)
    ids = jnp.where(chosen & (r >= mask_ratio) & (r < mask_ratio + random_ratio), random_tok, ids)
    return {"input_ids": ids.astype(jnp.int32), "positions": positions, "labels": labels.astype(jnp.int32),
            "chosen": chosen}


def make_mlm_transform(lm: dict, tokenizer: Any, vocab_size: int) -> Callable:
    """transform(batch, rng) -> batch with masked input_ids, 'positions' and 'labels' (for ftlab.train.step).
    rng None (evaluation): fixed masks, keyed by the batch's first row index."""
    lm = check_config(lm)
    specials = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
                if i is not None]
    if tokenizer.mask_token_id is None:
        raise ValueError("masked LM needs a tokenizer with a [MASK] token")
    cont = jnp.asarray(continuation_table(tokenizer)[:vocab_size]) if lm["whole_word"] else None
    kw = dict(mask_id=int(tokenizer.mask_token_id), vocab_size=vocab_size, special_ids=tuple(specials),
              num_predict=num_predictions(lm), prob=lm["mlm_prob"], mask_ratio=lm["mask_ratio"],
              random_ratio=lm["random_ratio"])

    def transform(batch: dict, rng: jax.Array | None) -> dict:
        if rng is None:
            rng = jax.random.fold_in(jax.random.key(0), batch["index"][0])
        m = mask_tokens(rng, batch["input_ids"], batch["attention_mask"], continuation=cont, **kw)
        return {**batch, "input_ids": m["input_ids"], "positions": m["positions"], "labels": m["labels"]}

    return transform


def lm_metrics(loss_sum: float, weight: float) -> dict[str, float]:
    loss = loss_sum / max(weight, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": weight}


# -------------------------------------------------------------------------------- held-out text scoring
def _encode_docs(docs: Sequence[str], tokenizer: Any, max_length: int, specials: bool) -> list[np.ndarray]:
    enc = tokenizer(list(docs), add_special_tokens=specials, truncation=True, max_length=max_length)
    return [np.asarray(x, np.int32) for x in enc["input_ids"]]


def pseudo_perplexity(model, variables: Any, docs: Sequence[str], tokenizer: Any, max_length: int = 128,
                      batch_size: int = 256, progress: bool = True) -> dict[str, float]:
    """Salazar et al. (2020) PPPL of a masked-LM `model` (head 'masked_lm') over `docs`, each scored on its own
    as `[CLS] doc [SEP]` (truncated to max_length): every real token is masked once, alone.
    -> {'pseudo_perplexity', 'pll_per_token', 'tokens', 'documents'}."""
    rows = _encode_docs(docs, tokenizer, max_length, True)
    mask_id = tokenizer.mask_token_id
    # one copy per (document, masked position): positions 1..len-2 (not [CLS] / [SEP])
    jobs = [(d, p) for d, r in enumerate(rows) for p in range(1, len(r) - 1)]
    width = max(len(r) for r in rows)

    @jax.jit
    def score(ids, mask, positions, targets):
        logits = model.apply(variables, ids, attention_mask=mask, token_type_ids=jnp.zeros_like(ids),
                             positions=positions)[:, 0]
        return jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), targets[:, None], -1)[:, 0]

    total = 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="pseudo-perplexity", unit="tok", disable=not progress)
    for lo in range(0, len(jobs), batch_size):
        chunk = jobs[lo:lo + batch_size]
        n = len(chunk)
        ids = np.zeros((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        positions = np.zeros((batch_size, 1), np.int32)
        targets = np.zeros(batch_size, np.int32)
        for i, (d, p) in enumerate(chunk):
            r = rows[d]
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
            targets[i] = r[p]
            ids[i, p] = mask_id
            positions[i, 0] = p
        lp = np.asarray(score(ids, mask, positions, targets))[:n]
        total += float(lp.sum())
        bar.update(n)
    bar.close()
    n_tok = len(jobs)
    return {"pseudo_perplexity": math.exp(-total / n_tok), "pll_per_token": total / n_tok, "tokens": n_tok,
            "documents": len(rows)}


def perplexity(model, variables: Any, docs: Sequence[str], tokenizer: Any, max_length: int = 256,
               batch_size: int = 16, progress: bool = True) -> dict[str, float]:
    """Perplexity of a causal-LM `model` over `docs`, each scored on its own (BOS first when the tokenizer
    has one, truncated to max_length): exp of the mean next-token NLL over every predicted token."""
    bos = tokenizer.bos_token_id
    rows = [np.concatenate([[bos], r])[:max_length] if bos is not None else r
            for r in _encode_docs(docs, tokenizer, max_length, False)]
    rows = [r for r in rows if len(r) >= 2]
    width = max(len(r) for r in rows)
    width = -(-width // 32) * 32

    @jax.jit
    def nll(ids, mask):
        logits = model.apply(variables, ids, attention_mask=mask).astype(jnp.float32)[:, :-1]
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1)[..., 0]
        w = mask[:, 1:].astype(jnp.float32)
        return -(lp * w).sum(), w.sum()

    from tqdm import tqdm

    total = tokens = 0.0
    order = np.argsort([len(r) for r in rows])
    for lo in tqdm(range(0, len(rows), batch_size), desc="perplexity", disable=not progress):
        idx = order[lo:lo + batch_size]
        ids = np.zeros((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for i, j in enumerate(idx):
            ids[i, :len(rows[j])] = rows[j]
            mask[i, :len(rows[j])] = 1
        s, w = nll(ids, mask)
        total += float(s)
        tokens += float(w)
    return {"perplexity": math.exp(total / tokens), "nll_per_token": total / tokens, "tokens": tokens,
            "documents": len(rows)}
