"""Batching: determinism, coverage, padding, bucketing, per-host slices, pad_final, packing."""

from __future__ import annotations

import numpy as np
import pytest

from ftlab.data.batching import batch_order, batches, num_batches, pack_sequences, packed_lm_batches
from ftlab.data.tokenize import IGNORE, Encoded

PAD = 0


def make_enc(n=103, kind="classification", seed=0, types=True, max_length=64):
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, max_length + 1, size=n)
    ids = [np.arange(1, k + 1, dtype=np.int32) + 1000 * i for i, k in enumerate(lens)]
    tt = [(np.arange(k) >= k // 2).astype(np.int32) for k in lens] if types else None
    if kind == "tagging":
        labels = [np.where(np.arange(k) % 2 == 0, i % 9, IGNORE).astype(np.int32) for i, k in enumerate(lens)]
    elif kind == "regression":
        labels = rng.random(n).astype(np.float32)
    else:
        labels = (np.arange(n) % 3).astype(np.int32)
    return Encoded(ids, tt, labels, kind, max_length)


def collect(enc, **kw):
    args = dict(shuffle=True, seed=1, epoch=0, pad_id=PAD, drop_remainder=False, pad_final=False)
    args.update(kw)
    bs = args.pop("batch_size", 8)
    return list(batches(enc, bs, **args))


def test_deterministic_and_epoch_dependent():
    enc = make_enc()
    a, b = collect(enc), collect(enc)
    assert all(all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)) and len(
        a
    ) == len(b)
    c = collect(enc, epoch=1)
    assert not np.array_equal(
        np.concatenate([x["index"] for x in a]), np.concatenate([x["index"] for x in c])
    )
    d = collect(enc, shuffle=False)
    assert np.concatenate([x["index"] for x in d]).tolist() == list(range(103))


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("kind", ["classification", "regression", "tagging"])
def test_each_example_once_and_padding(bucket, kind):
    enc = make_enc(kind=kind)
    out = collect(enc, bucket=bucket, bucket_chunk_batches=3)
    idx = np.concatenate([b["index"] for b in out])
    assert sorted(idx.tolist()) == list(range(len(enc)))
    assert len(out) == num_batches(len(enc), 8, False) == 13
    for b in out:
        n, t = b["input_ids"].shape
        assert b["input_ids"].dtype == np.int32 and b["attention_mask"].dtype == np.int32
        assert b["example_mask"].dtype == np.float32 and b["index"].dtype == np.int32
        longest = max(len(enc.input_ids[i]) for i in b["index"])
        assert t == min(-(-longest // 16) * 16, 64) or t == longest
        for r, i in enumerate(b["index"]):
            k = len(enc.input_ids[i])
            assert (
                np.array_equal(b["input_ids"][r, :k], enc.input_ids[i])
                and (b["input_ids"][r, k:] == PAD).all()
            )
            assert b["attention_mask"][r].tolist() == [1] * k + [0] * (t - k)
            assert np.array_equal(b["token_type_ids"][r, :k], enc.token_type_ids[i])
            if kind == "tagging":
                assert (
                    np.array_equal(b["labels"][r, :k], enc.labels[i]) and (b["labels"][r, k:] == IGNORE).all()
                )
            else:
                assert b["labels"][r] == enc.labels[i]
    assert out[-1]["input_ids"].shape[0] == 103 % 8  # the partial batch is last


def test_bucketing_reduces_padding():
    enc = make_enc(n=2000, max_length=128)

    def waste(**kw):
        out = collect(enc, batch_size=16, drop_remainder=True, **kw)
        return 1 - sum(b["attention_mask"].sum() for b in out) / sum(b["attention_mask"].size for b in out)

    assert waste(bucket=True) < 0.5 * waste(bucket=False)
    # Bucketed batches are still in random order and still cover the (non-dropped) examples once.
    out = collect(enc, batch_size=16, drop_remainder=True, bucket=True)
    idx = np.concatenate([b["index"] for b in out])
    assert len(set(idx.tolist())) == len(idx) == 2000 // 16 * 16


def test_drop_remainder_and_pad_final():
    enc = make_enc()
    dropped = collect(enc, drop_remainder=True)
    assert len(dropped) == 12 == num_batches(103, 8, True) and all(
        b["input_ids"].shape[0] == 8 for b in dropped
    )
    padded = collect(enc, shuffle=False, pad_final=True)
    last = padded[-1]
    assert last["input_ids"].shape[0] == 8
    assert last["example_mask"].tolist() == [1.0] * 7 + [0.0]
    assert last["index"].tolist() == list(range(96, 103)) + [-1]
    assert (
        (last["attention_mask"][-1] == 0).all()
        and (last["input_ids"][-1] == PAD).all()
        and last["labels"][-1] == 0
    )
    assert all(b["example_mask"].all() for b in padded[:-1])
    with pytest.raises(ValueError, match="exclusive"):
        collect(enc, drop_remainder=True, pad_final=True)


@pytest.mark.parametrize("pad_final", [False, True])
def test_host_slices_partition_global_batch(pad_final):
    enc = make_enc(kind="tagging")
    kw = dict(batch_size=8, drop_remainder=not pad_final, pad_final=pad_final, bucket=True)
    whole = collect(enc, **kw)
    parts = [collect(enc, process_index=p, process_count=4, **kw) for p in range(4)]
    assert all(len(p) == len(whole) for p in parts)  # every host runs the same number of steps
    for step, g in enumerate(whole):
        for key in g:
            joined = np.concatenate([parts[p][step][key] for p in range(4)])
            assert np.array_equal(joined, g[key]), key  # same rows, same padded width on every host
    with pytest.raises(ValueError, match="multiple of process_count"):
        collect(enc, batch_size=6, process_count=4, drop_remainder=True)
    with pytest.raises(ValueError, match="drop_remainder or pad_final"):
        collect(enc, process_count=2)


def test_batch_order_bucket_keeps_remainder_last():
    lengths = np.arange(50)
    order = batch_order(lengths, 8, shuffle=True, seed=3, epoch=2, bucket=True, bucket_chunk_batches=2)
    assert [len(o) for o in order] == [8] * 6 + [2]
    for o in order[:-1]:
        assert lengths[o].max() - lengths[o].min() < 16 * 2  # bucketed within chunks of 16


def test_no_token_types_and_width_cap():
    enc = make_enc(types=False, max_length=20)
    b = collect(enc, pad_to_multiple_of=16)[0]
    assert "token_type_ids" not in b and b["input_ids"].shape[1] <= 20


def test_pack_sequences_and_lm_batches():
    blocks = pack_sequences([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eos_id=0)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert blocks.dtype == np.int32
    out = list(packed_lm_batches(blocks, 2, shuffle=False, seed=0, epoch=0, drop_remainder=False))
    assert [b["index"].tolist() for b in out] == [[0, 1], [2, -1]]
    assert out[1]["example_mask"].tolist() == [1.0, 0.0] and out[1]["attention_mask"][1].sum() == 0
