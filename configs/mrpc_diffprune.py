"""MRPC paraphrase, MiniLM diff pruning — θ₀ + a sparse diff (0.5% of the backbone entries) + the head.

Two runs. Stage 1 (this config): θ₀ + z ⊙ w with hard-concrete gates and the expected-L0 penalty.
Stage 2 (':fixed_mask'): magnitude projection of stage 1's diff to 0.5% of the entries, then training of
those values with the mask fixed; it reads stage 1's exported δ from runs/mrpc_diffprune/delta.
lr 1e-4 for w (it starts at 0). The gates follow Guo et al.'s released code (dguo98/DiffPruning,
run_glue_diffpruning.py): stretch interval (γ, ζ) = (-1.5, 1.5), log_alpha trained at lr 0.1 (×1000 here),
no gradient clipping (their code clips w's and log_alpha's gradients separately, each to norm 1; one global
clip over w, log_alpha and the head would shrink the penalty's gradient). With Adam's ε = 1e-8 this matters:
the penalty's gradient per gate, λ·σ'(log_alpha) ≈ 8e-10 at log_alpha = 5, is below ε, so a gate with no task
gradient moves ~lr·g/ε per step (0.008 at lr 0.1), and gates can close within a run. At the previous
lr 1e-2 with (γ, ζ) = (-0.1, 1.1) and a global clip the expected L0 fell by 0.002% in a run (docs/results/
mrpc_diffprune_v0*.json). No weight decay (the L0 penalty is the regulariser).
Paper/reference: Guo, Rush & Kim 2021, "Parameter-Efficient Transfer Learning with Diff Pruning" (λ_L0 = 1.25e-7,
          alpha_init 5, target 0.5%); gates: Louizos et al. 2018.
Command:  python scripts/train.py --config configs/mrpc_diffprune.py --workdir runs/mrpc_diffprune
          python scripts/train.py --config configs/mrpc_diffprune.py:fixed_mask --workdir runs/mrpc_diffprune_fixed
Expected: stage 2 dev F1 0.846 (docs/results/mrpc_diffprune.json; 98.4% of mrpc_full's 0.860; accuracy 0.765 vs
          0.799): 113,566 diff values (0.5% of the backbone) + the 770-entry head, 912 kB of δ. Stage 1
          (mrpc_diffprune_l0.json): F1 0.877 at its best eval (step 687), where 20.7% of the deterministic gates
          were open. With the earlier gate settings (mrpc_diffprune_v0*.json) no gate closed (expected L0 -0.002%),
          and stage 2 reached F1 0.828 (96.3%).
          Stage 2 with `--config.optim.lr=1e-3` (mrpc_diffprune_lr1e-3.json): F1 0.884 at its first eval (102.8%,
          accuracy 0.836), 0.873 at the last: the 0.5% kept values learn faster at BitFit's lr.
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
    c.delta.gamma, c.delta.zeta = -1.5, 1.5  # Guo et al.'s code (Louizos et al.: -0.1, 1.1)
    c.delta.init_from = ""
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.groups = ((r"diffprune/log_alpha/.*", 1000.0), (r".*", 1.0))  # log_alpha at lr 0.1
    c.optim.grad_clip = 0.0
    return apply_variant(
        c,
        variant,
        {
            "fixed_mask": {
                "delta.phase": "fixed_mask",
                "delta.init_from": "runs/mrpc_diffprune/delta",
                "optim.groups": ((r".*", 1.0),),
                "optim.grad_clip": 1.0,
            },
        },
    )
