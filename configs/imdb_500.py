"""IMDB sentiment from 500 labelled reviews: direct fine-tuning vs domain- vs task-adaptive MLM first.

Gururangan et al. (2020, "Don't Stop Pretraining") found domain-adaptive (DAPT) and task-adaptive (TAPT)
pre-training each help and are complementary. This is the small-scale version on MiniLM: the same 500
reviews (task.train_subset=500, subset_seed 42) fine-tuned from
  :direct  all-MiniLM-L6-v2 as released
  :dapt    MiniLM after the :dapt stages of configs/imdb_mlm.py (MLM on 20k IMDB unlabeled reviews)
  :tapt    MiniLM after the :tapt stages (MLM on the text of these 500 reviews)
evaluated once, at the end, on 1000 reviews of the IMDB test split (task.eval_subset, drawn with seed 43). Reviews are
truncated to their first 128 tokens (a CPU budget; most are longer). Seeds 1, 2, 3.
Command:  (the adapted models first, then their last stage exported as a Hugging Face folder)
  FTLAB_DATA=../shared/data python scripts/train.py --config configs/imdb_mlm.py:dapt --workdir runs/imdb/dapt
  python -m ftlab.cli export --workdir runs/imdb/dapt/1-adapt --out runs/imdb/dapt-merged
  FTLAB_DATA=../shared/data python scripts/train.py --config configs/imdb_500.py:dapt --workdir runs/imdb/ft-dapt-1 --config.seed=1
Expected: see docs/adaptive.md (report whatever holds).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "imdb"
    c.task.train_subset = 500
    c.task.eval_split = "test"
    c.task.eval_subset = 1000
    c.task.max_length = 128
    c.model.pooling = "mean"  # all-MiniLM-L6-v2 was trained with mean pooling
    c.model.head = "new"      # the adapted folders carry an MLM head: start a classifier
    c.delta.method = "full"
    c.train.epochs = 3
    c.train.eval_every = 10_000  # only at the end (the last step always evaluates)
    c.train.batch_size = 16
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 0
    c.train.export_delta = "none"
    c.optim.lr = 5e-5
    c.optim.warmup_ratio = 0.1
    return apply_variant(c, variant, {
        "direct": {},
        "dapt": {"model.name": "runs/imdb/dapt-merged"},
        "tapt": {"model.name": "runs/imdb/tapt-merged"},
    })
