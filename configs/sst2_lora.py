"""SST-2 sentiment, MiniLM LoRA r=8, α=16 on query/value (+ the classifier head).

Trainable: 2·L·r·(D+D) = 73,728 LoRA parameters on MiniLM-L6-H384, plus the head.
lr 5e-4; epochs and batch size as sst2_full.
Paper/reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (GLUE recipe: r=8, α=16, q/v, lr 4e-4..5e-4).
Command:  python scripts/train.py --config configs/sst2_lora.py --workdir runs/sst2_lora
Expected: dev accuracy ≈ 0.872 (docs/results/sst2_lora.json; sst2_full 0.899); :quick 0.827 (sst2_full:quick 0.865; HF+PyTorch full FT :quick 0.858).
LoRA r=8 on every encoder Dense (q, k, v, attention output, both FFN layers; 332,546 trainable) reaches 0.8807
(docs/results/sst2_lora_all.json, 97.95% of sst2_full):
  python scripts/train.py --config configs/sst2_lora.py --workdir runs/sst2_lora_all \
      '--config.delta.targets=.*/encoder/.*/(query|key|value|dense)'
The same for 2 epochs (docs/results/sst2_lora_all_2ep.json): best eval 0.892 at step 3500 of 4208 (99.2% of
sst2_full), last eval 0.883 (98.2%):
  python scripts/train.py --config configs/sst2_lora.py --workdir runs/sst2_lora_all_2ep \
      '--config.delta.targets=.*/encoder/.*/(query|key|value|dense)' --config.train.epochs=2
3 epochs on q/v did not help: dev accuracy 0.869 at steps 2100, 2800 and 3500 of 6312 (stopped there).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.delta.method = "lora"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.r = 8
    c.delta.alpha = 16.0
    c.delta.dropout = 0.1
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.bucket = True  # as sst2_full
    c.train.pad_to_multiple_of = 16
    c.train.eval_every = 700
    c.optim.lr = 5e-4
    return apply_variant(
        c,
        variant,
        {
            "quick": {"task.train_subset": 20000, "train.eval_every": 0},
        },
    )
