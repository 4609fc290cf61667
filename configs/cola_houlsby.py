"""CoLA acceptability, MiniLM Houlsby adapters (bottleneck 24 = 384/16, swish) after attention and FFN.

Trainable: 2·L·(2·D·m + m + D) = 226,032 adapter parameters on MiniLM, plus the head.
lr 5e-4 (10 epochs at 1e-3: MCC 0.265; at 5e-4: 0.277; at 3e-4: 0.264, docs/results/cola_houlsby_lr3e-4.json); 10 epochs (3 underfit: MCC 0.144 LoRA at lr 5e-4, 0.211 Houlsby, 0.080 Pfeiffer; the LoRA paper trains CoLA 80), batch size as cola_full.
Paper/reference: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (lr 1e-4..1e-3; AdapterHub defaults).
Command:  python scripts/train.py --config configs/cola_houlsby.py --workdir runs/cola_houlsby
Expected: dev MCC ≈ 0.277 (docs/results/cola_houlsby.json; cola_full 0.284, HF+PyTorch full FT: 0.314).
15 epochs (--config.train.epochs=15, docs/results/cola_houlsby_15ep.json): 0.276, no gain.
Bottleneck 48 (reduction factor 8; 448,322 trainable; docs/results/cola_houlsby_rf8.json): best eval 0.279 at epoch
6 of 10 (98.2% of cola_full), last eval 0.269; CoLA's dev MCC moves by up to 0.05 between epochs here:
  python scripts/train.py --config configs/cola_houlsby.py --workdir runs/cola_houlsby_rf8 --config.delta.reduction_factor=8
relu instead of swish (docs/results/cola_houlsby_relu.json): best eval 0.283 at epoch 6 (99.5%), last eval 0.276:
  python scripts/train.py --config configs/cola_houlsby.py --workdir runs/cola_houlsby_relu --config.delta.non_linearity=relu
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.delta.method = "houlsby"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.reduction_factor = 16
    c.delta.non_linearity = "swish"
    c.train.epochs = 10  # cola_full trains 3; adapters and LoRA underfit CoLA in 3 (train loss 0.53, MCC 0.08-0.21)
    c.train.batch_size = 32
    c.train.bucket = True  # as cola_full: short sentences, length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-4
    return apply_variant(
        c,
        variant,
        {},
    )
