"""Fine-tuning stability on small data: MiniLM full fine-tuning of a 1,000-example training subset, many seeds.

Variant `<task>-<recipe>`, task one of cola, mrpc, stsb, sst2 (dev sets as in GLUE), recipe:
  vanilla   BERT's original recipe as Mosbach et al. describe it: AdamW without bias correction (BERTAdam),
            lr 2e-5, 3 epochs, linear warmup over 10% then linear decay, batch 16, dropout 0.1
  biascorr  vanilla with Adam's bias correction (the first half of Mosbach et al.'s recipe)
  mosbach   Mosbach et al. 2021: bias correction, lr 2e-5, 10% warmup, 20 epochs (small lr, many iterations)
  reinit2   vanilla with the top 2 encoder layers (and the pooler) re-initialised (Zhang et al. 2021)
  llrd      vanilla with layer-wise lr decay 0.9 (each layer below the top gets ×0.9 of the lr above)
  r3f       vanilla + R3F (Aghajanyan et al. 2021): λ=1 symmetric KL to the output under N(0, 1e-5²) embedding noise
  mixout    vanilla with Mixout(w_pre) p=0.9 on every backbone kernel (Lee et al. 2020)
Run with `ftlab sweep` (10 seeds in one program), then scripts/stability.py for the table and plot.
Paper/reference: Mosbach, Andriushchenko & Klakow 2021, "On the Stability of Fine-tuning BERT"; Dodge et al.
          2020; Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning".
Command:  ftlab sweep --config configs/stability.py:cola-vanilla --workdir runs/stability/cola-vanilla
          python scripts/stability.py runs/stability/* --out docs/stability
Expected: Mosbach et al. report fewer failed runs (dev score at or below the majority class) and a lower std
          with bias correction, longer training and re-initialisation; see docs/stability.md for what held here.
"""

from ftlab.train.loop import apply_variant, default_config

TASKS = {  # task: (max_length, eval every N steps — about twice per epoch of 62 steps)
    "cola": (64, 31),
    "sst2": (64, 31),
    "mrpc": (128, 31),
    "stsb": (128, 31),
}
RECIPES = {  # recipe: what it changes from vanilla (dotted config keys)
    "vanilla": {},
    "biascorr": {"optim.bias_correction": True},
    "mosbach": {"optim.bias_correction": True, "train.epochs": 20, "train.eval_every": 125},  # eval every 2 epochs
    "reinit2": {"delta.method": "reinit", "delta.k": 2},
    "llrd": {"optim.llrd": 0.9},
    "r3f": {"reg.method": "r3f", "reg.lam": 1.0, "reg.noise": "normal", "reg.sigma": 1e-5},
    "mixout": {"delta.method": "mixout", "delta.p": 0.9},
}


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.task.train_subset = 1000
    c.task.subset_seed = 42  # the same 1,000 examples for every seed and recipe
    c.train.batch_size = 16
    c.train.epochs = 3
    c.train.pad_to_multiple_of = 16
    c.train.checkpoint_every = 0
    c.train.export_delta = "none"  # 10 seeds × 91 MB of δ per sweep; the scores are the result
    c.optim.lr = 2e-5
    c.optim.warmup_ratio = 0.1
    c.optim.bias_correction = False
    c.sweep.seeds = tuple(range(1, 11))
    variants = {}
    for task, (max_length, eval_every) in TASKS.items():
        for recipe, changes in RECIPES.items():
            variants[f"{task}-{recipe}"] = {"task.name": task, "task.max_length": max_length,
                                            "train.eval_every": eval_every, **changes}
    return apply_variant(c, variant, variants)
