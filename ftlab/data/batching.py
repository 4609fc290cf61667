"""Batches from encoded examples: deterministic order, dynamic padding, length bucketing, per-host slices.

`batches(...)` yields dicts of NumPy arrays (shapes for global batch size B, P processes, b = B // P):

    input_ids      [b, T] int32   padded with pad_id
    attention_mask [b, T] int32   1 on real tokens
    token_type_ids [b, T] int32   only if the tokenizer produced them
    labels         [b] int32 / float32, or [b, T] int32 for tagging (-100 on padding)
    soft_labels    [b, C] float32 class distributions, only for soft-labelled examples (distillation; padding
                   rows 0)
    example_mask   [b] float32    1 for a real example, 0 for a padding row (pad_final)
    index          [b] int32      position of the example in `enc`, -1 for a padding row

The order is a pure function of (seed, epoch): `np.random.default_rng([seed, epoch])` — no hidden state, so a
resumed run at (epoch, step) sees exactly the batches it would have seen. T is the longest row of the *global*
batch rounded up to `pad_to_multiple_of` (capped at the encoding's max_length), so every process pads its
slice to the same T and only a handful of shapes get compiled. Every process yields the same number of
batches; process p gets rows [p*b, (p+1)*b) of each global batch.

`bucket=True` groups examples of similar length: the shuffled order is cut into chunks of
`bucket_chunk_batches` batches, each chunk sorted by length and cut into batches, and the order of all full
batches is shuffled again (Transformers' `group_by_length`/fairseq-style), which removes most padding while
keeping batches random. The partial remainder batch (if any) is always the last one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ftlab.data.tokenize import IGNORE, Encoded


def num_batches(n_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of (global) batches per epoch."""
    return n_examples // batch_size if drop_remainder else -(-n_examples // batch_size)


def batch_order(
    lengths: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    bucket: bool = False,
    bucket_chunk_batches: int = 50,
    drop_remainder: bool = False,
) -> list[np.ndarray]:
    """Example indices of each global batch of one epoch (the last one may be partial unless dropped)."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    n_full = n // batch_size * batch_size
    full, rest = order[:n_full], order[n_full:]
    if bucket and n_full:
        chunk = batch_size * bucket_chunk_batches
        parts = []
        for s in range(0, n_full, chunk):
            idx = full[s : s + chunk]
            # Stable sort keeps the shuffled order among equal lengths, so ties stay random.
            parts.append(idx[np.argsort(lengths[idx], kind="stable")])
        full = np.concatenate(parts)
    out = [full[s : s + batch_size] for s in range(0, n_full, batch_size)]
    if bucket and shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    if len(rest) and not drop_remainder:
        out.append(rest)
    return out


def batches(
    enc: Encoded,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    pad_id: int,
    pad_to_multiple_of: int = 16,
    bucket: bool = False,
    bucket_chunk_batches: int = 50,
    drop_remainder: bool,
    pad_final: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of batches of `enc` for this process (see the module docstring for shapes and order).

    `drop_remainder`: skip the last partial batch (training). `pad_final`: pad it to `batch_size` with rows
    whose example_mask is 0 (evaluation, where every example must be seen and shapes must stay fixed). With
    several processes one of the two is required, so every process's slice has the same shape.
    """
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of process_count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if drop_remainder and pad_final:
        raise ValueError("drop_remainder and pad_final are exclusive: drop the partial batch or pad it")
    if process_count > 1 and not (drop_remainder or pad_final):
        raise ValueError(
            "with process_count > 1 set drop_remainder or pad_final so all slices share one shape"
        )
    lengths = enc.lengths
    per_host = batch_size // process_count
    lo, hi = process_index * per_host, (process_index + 1) * per_host
    for idx in batch_order(
        lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        bucket=bucket,
        bucket_chunk_batches=bucket_chunk_batches,
        drop_remainder=drop_remainder,
    ):
        longest = int(lengths[idx].max())
        width = max(longest, min(_round_up(longest, pad_to_multiple_of), enc.max_length))
        if pad_final and len(idx) < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - len(idx), -1, dtype=idx.dtype)])
        if process_count > 1:
            idx = idx[lo:hi]
        yield _collate(enc, idx, width, pad_id)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple if multiple > 1 else x


def _pad_rows(rows: Sequence[np.ndarray | None], width: int, fill: int) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=np.int32)
    for r, row in enumerate(rows):
        if row is not None:
            out[r, : len(row)] = row
    return out


def _collate(enc: Encoded, idx: np.ndarray, width: int, pad_id: int) -> dict[str, np.ndarray]:
    if hasattr(enc, "collate"):  # prompt encodings (ftlab.prompts.PromptEncoded) lay out their own rows
        return enc.collate(idx, width, pad_id)
    real = idx >= 0
    ids = [enc.input_ids[i] if i >= 0 else None for i in idx]
    batch = {
        "input_ids": _pad_rows(ids, width, pad_id),
        "attention_mask": _pad_rows(
            [None if x is None else np.ones(len(x), np.int32) for x in ids], width, 0
        ),
    }
    if enc.token_type_ids is not None:
        batch["token_type_ids"] = _pad_rows(
            [enc.token_type_ids[i] if i >= 0 else None for i in idx], width, 0
        )
    if enc.kind == "tagging":
        batch["labels"] = _pad_rows([enc.labels[i] if i >= 0 else None for i in idx], width, IGNORE)
    else:
        # Padding rows get label 0: a valid class index (safe to gather with), masked out by example_mask.
        labels = np.zeros(len(idx), dtype=enc.labels.dtype)
        labels[real] = enc.labels[idx[real]]
        batch["labels"] = labels
    if getattr(enc, "soft_labels", None) is not None:  # soft-labelled examples (distillation)
        soft = np.zeros((len(idx), enc.soft_labels.shape[1]), np.float32)
        soft[real] = enc.soft_labels[idx[real]]
        batch["soft_labels"] = soft
    batch["example_mask"] = real.astype(np.float32)
    batch["index"] = idx.astype(np.int32)
    return batch


def pack_sequences(token_lists: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Causal-LM packing: each document + EOS, concatenated, cut into `[N, seq_len]` int32 blocks.

    The final incomplete block is dropped (standard for LM pre-training/fine-tuning). Documents are not
    separated by attention masking: a block may span a document boundary, marked only by the EOS token.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len} must be at least 2")
    lengths = np.fromiter((len(t) + 1 for t in token_lists), dtype=np.int64, count=len(token_lists))
    stream = np.full(int(lengths.sum()), eos_id, dtype=np.int32)
    ends = np.cumsum(lengths)
    for toks, end, n in zip(token_lists, ends, lengths, strict=True):
        stream[end - n : end - 1] = toks
    n_blocks = len(stream) // seq_len
    return stream[: n_blocks * seq_len].reshape(n_blocks, seq_len)


def packed_lm_batches(
    blocks: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of packed `[N, L]` blocks: `input_ids` [b, L], `attention_mask` all ones, `example_mask`,
    `index`. Next-token labels are the inputs shifted by one inside the loss. Same order and sharding rules as
    `batches`; a partial final batch is padded (example_mask 0) when not dropped."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of process_count {process_count}")
    per_host = batch_size // process_count
    lo, hi = process_index * per_host, (process_index + 1) * per_host
    lengths = np.full(len(blocks), blocks.shape[1], dtype=np.int64)
    for idx in batch_order(
        lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_remainder=drop_remainder
    ):
        if len(idx) < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - len(idx), -1, dtype=idx.dtype)])
        idx = idx[lo:hi]
        real = idx >= 0
        ids = np.zeros((len(idx), blocks.shape[1]), dtype=np.int32)
        ids[real] = blocks[idx[real]]
        yield {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids) * real[:, None].astype(np.int32),
            "example_mask": real.astype(np.float32),
            "index": idx.astype(np.int32),
        }
