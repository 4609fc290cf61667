"""MRPC paraphrase, MiniLM IA³ scaling vectors on keys, values and the FFN / attention-output inputs (PEFT's BERT targets).

Trainable: L·(D + D + D + 4D) = 16,128 scaling parameters on MiniLM, plus the head.
lr 3e-3; epochs and batch size as mrpc_full.
Paper/reference: Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning" (T-Few lr 3e-3).
Command:  python scripts/train.py --config configs/mrpc_ia3.py --workdir runs/mrpc_ia3
Expected: dev F1 a few points below mrpc_full (HF+PyTorch full FT: 0.862); not yet measured with ftlab on MiniLM.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.delta.method = "ia3"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 3e-3
    return apply_variant(
        c,
        variant,
        {},
    )
