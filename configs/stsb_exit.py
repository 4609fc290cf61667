"""STS-B similarity regression, MiniLM with an exit after every layer (one regression output each).

As configs/sst2_exit.py for a regression task: PABEE's weighted routine by default, ':two_stage' (DeeBERT),
':alternating' (BERxiT, whose learned exit predictor is what makes early exit work for regression). The entropy
policy does not apply to regression; patience (with a tolerance) and the learned predictor do.
Paper/reference: Xin et al. 2021 (BERxiT, regression); Zhou et al. 2020 (PABEE); Cer et al. 2017 (STS-B).
Command:  python scripts/train.py --config configs/stsb_exit.py --workdir runs/stsb_exit
          python scripts/early_exit.py --workdir runs/stsb_exit --out docs/early_exit
Expected: last-exit Pearson ≈ stsb_full (0.865 with HF+PyTorch); measured 0.834 (exit after layer 4: 0.838),
          docs/early_exit.md.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "stsb"
    c.exit.routine = "weighted"
    c.train.epochs = 5
    c.train.batch_size = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {
        "two_stage": {"exit.routine": "two_stage"},
        "alternating": {"exit.routine": "alternating"},
    })
