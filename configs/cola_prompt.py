"""CoLA acceptability, MiniLM prompt tuning, 20 soft prompt vectors initialised from sampled vocabulary embeddings.

Trainable: P·D = 7,680 prompt parameters on MiniLM, plus the head (BERT's pooler reads the first prompt vector, as PEFT).
lr 1e-2; 10 epochs as the other CoLA PEFT runs (3 underfit them), batch size as cola_full.
Paper/reference: Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (small models lag full FT; PEFT recipe lr ~1e-2..3e-2).
Command:  python scripts/train.py --config configs/cola_prompt.py --workdir runs/cola_prompt
Expected: dev MCC ≈ 0.048 (docs/results/cola_prompt.json; cola_full 0.284; the frozen encoder with a head:
0.012): 20 soft prompt vectors barely move MiniLM on CoLA (prompt tuning needs large models, Lester et al.).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.delta.method = "prompt"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.num_virtual_tokens = 20
    c.delta.init = "vocab"
    c.train.epochs = 10  # as the other CoLA PEFT runs (3 epochs underfit them)
    c.train.batch_size = 32
    c.train.bucket = True  # as cola_full: short sentences, length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-2
    return apply_variant(
        c,
        variant,
        {},
    )
