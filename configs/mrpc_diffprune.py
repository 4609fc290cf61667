"""MRPC paraphrase, MiniLM diff pruning — θ₀ + a sparse diff (0.5% of the backbone entries) + the head.

Two runs. Stage 1 (this config): θ₀ + z ⊙ w with hard-concrete gates and the expected-L0 penalty.
Stage 2 (':fixed_mask'): magnitude projection of stage 1's diff to 0.5% of the entries, then training of
those values with the mask fixed; it reads stage 1's exported δ from runs/mrpc_diffprune/delta.
lr 1e-4 for w (it starts at 0); log_alpha gets ×100 (1e-2) so that gates can close within a run
(at 1e-4 a gate would need ~7e4 steps to travel from alpha_init=5 to closed); no weight decay (the
L0 penalty is the regulariser).
Paper/reference: Guo, Rush & Kim 2021, "Parameter-Efficient Transfer Learning with Diff Pruning" (λ_L0 = 1.25e-7,
          alpha_init 5, target 0.5%); gates: Louizos et al. 2018.
Command:  python scripts/train.py --config configs/mrpc_diffprune.py --workdir runs/mrpc_diffprune
          python scripts/train.py --config configs/mrpc_diffprune.py:fixed_mask --workdir runs/mrpc_diffprune_fixed
Expected: stage 2 dev F1 a few points below mrpc_full at 0.5% of the backbone stored (8 bytes per nonzero); not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.delta.method = "diffprune"
    c.delta.phase = "l0"
    c.delta.l0_weight = 1.25e-7
    c.delta.alpha_init = 5.0
    c.delta.target_fraction = 0.005
    c.delta.init_from = ""
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.groups = ((r"diffprune/log_alpha/.*", 100.0), (r".*", 1.0))
    return apply_variant(
        c,
        variant,
        {
            "fixed_mask": {
                "delta.phase": "fixed_mask",
                "delta.init_from": "runs/mrpc_diffprune/delta",
                "optim.groups": ((r".*", 1.0),),
            },
        },
    )
