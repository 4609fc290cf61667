"""STS-B similarity regression, MiniLM prompt tuning, 20 soft prompt vectors initialised from sampled vocabulary embeddings.

Trainable: P·D = 7,680 prompt parameters on MiniLM, plus the head (BERT's pooler reads the first prompt vector, as PEFT).
lr 1e-2; epochs and batch size as stsb_full.
Paper/reference: Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (small models lag full FT; PEFT recipe lr ~1e-2..3e-2).
Command:  python scripts/train.py --config configs/stsb_prompt.py --workdir runs/stsb_prompt
Expected: dev Pearson ≈ 0.776 (docs/results/stsb_prompt.json; 89.7% of stsb_full 0.865; the frozen encoder with
a head: 0.486): prompt tuning needs large models to match full FT (Lester et al.).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.delta.method = "prompt"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.num_virtual_tokens = 20
    c.delta.init = "vocab"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-2
    return apply_variant(
        c,
        variant,
        {},
    )
