"""SST-2 sentiment, MiniLM prompt tuning, 20 soft prompt vectors initialised from sampled vocabulary embeddings.

Trainable: P·D = 7,680 prompt parameters on MiniLM, plus the head (BERT's pooler reads the first prompt vector, as PEFT).
lr 1e-2; epochs and batch size as sst2_full.
Paper/reference: Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (small models lag full FT; PEFT recipe lr ~1e-2..3e-2).
Command:  python scripts/train.py --config configs/sst2_prompt.py --workdir runs/sst2_prompt
Expected: :quick dev accuracy ≈ 0.814 (docs/results/sst2_prompt_quick.json; sst2_full:quick 0.865, HF+PyTorch full FT :quick
0.858): below full fine-tuning, as Lester et al. find for small models; the full training set not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "prompt"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.num_virtual_tokens = 20
    c.delta.init = "vocab"
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.bucket = True  # as sst2_full
    c.train.pad_to_multiple_of = 16
    c.train.eval_every = 700
    c.optim.lr = 1e-2
    return apply_variant(
        c,
        variant,
        {
            "quick": {"task.train_subset": 20000, "train.eval_every": 0},
        },
    )
