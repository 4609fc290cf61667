"""CoLA acceptability, MiniLM LoRA r=8, α=16 on query/value (+ the classifier head).

Trainable: 2·L·r·(D+D) = 73,728 LoRA parameters on MiniLM-L6-H384, plus the head.
lr 1e-3; 10 epochs (3 underfit: MCC 0.144 LoRA at lr 5e-4, 0.211 Houlsby, 0.080 Pfeiffer; the LoRA paper trains CoLA 80), batch size as cola_full.
Paper/reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (GLUE recipe: r=8, α=16, q/v, lr 4e-4..5e-4).
Command:  python scripts/train.py --config configs/cola_lora.py --workdir runs/cola_lora
Expected: dev MCC ≈ 0.287 (docs/results/cola_lora.json, best at epoch 6; cola_full 0.284, HF+PyTorch full FT: 0.314).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.delta.method = "lora"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.r = 8
    c.delta.alpha = 16.0
    c.delta.dropout = 0.1
    c.train.epochs = 10  # cola_full trains 3; adapters and LoRA underfit CoLA in 3 (train loss 0.53, MCC 0.08-0.21)
    c.train.batch_size = 32
    c.train.bucket = True  # as cola_full: short sentences, length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-3
    return apply_variant(
        c,
        variant,
        {},
    )
