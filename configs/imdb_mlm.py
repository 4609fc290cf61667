"""IMDB masked-LM adaptation of MiniLM (domain- / task-adaptive pre-training, Gururangan et al. 2020).

all-MiniLM-L6-v2 ships without a masked-LM head, so every variant trains BERT's `cls.predictions` head from
scratch (transform dense + LayerNorm + output bias; the decoder is tied to the word embeddings):
  :head  encoder frozen (delta frozen), head only, on the IMDB unlabeled reviews -> the MiniLM MLM head that
         makes cloze prompting possible with the *original* encoder ("before" adaptation)
  :dapt  two stages (ftlab.train.stages): :head, then encoder + head (delta full, the head kept) on the IMDB
         unlabeled reviews (domain-adaptive pre-training)
  :tapt  two stages: :head, then encoder + head on the text of the 500 labelled training reviews of the IMDB experiment (task-adaptive;
         the same 500 reviews as configs/imdb_500.py draws; 100 steps, about 2.7 epochs over them — far
         short of Gururangan et al.'s 100 epochs, a CPU budget)
Held-out text for every variant: the last 500 reviews of imdb/unsup.txt.gz, never trained on.
BERT masking (15%, 80/10/10; ftlab.train.lm), 128-token packed blocks, AdamW with linear warmup/decay.
Command:  FTLAB_DATA=../shared/data python scripts/train.py --config configs/imdb_mlm.py:dapt --workdir runs/imdb/dapt
          (stages in runs/imdb/dapt/0-head and 1-dapt; 1-dapt/merged is never written: use `ftlab export`)
Expected: held-out masked-token perplexity and pseudo-perplexity fall from :head to :dapt (docs/adaptive.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mlm"
    c.lm.train = "imdb/unsup.txt.gz"
    c.lm.heldout = 500
    c.lm.max_documents = 20000
    c.lm.block_size = 128
    c.delta.method = "full"
    c.train.max_steps = 200
    c.train.batch_size = 32
    c.train.eval_every = 100
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 100
    c.optim.lr = 1e-4
    c.optim.warmup_ratio = 0.06
    head = {"name": "head", "delta.method": "frozen", "optim.lr": 1e-3}
    adapt = {"name": "adapt", "model.head": "keep"}
    # :tapt's head stage is :dapt's (the same text, steps and seed: the same head), its second stage the task text
    same_text = {"lm.train": c.lm.train, "lm.eval": "", "lm.max_documents": c.lm.max_documents,
                 "train.max_steps": c.train.max_steps, "train.eval_every": c.train.eval_every}
    tapt = {"lm.train": "task:imdb:train", "lm.max_documents": 500, "lm.eval": "imdb/unsup.txt.gz",
            "train.max_steps": 100, "train.eval_every": 50}
    small = {"lm.max_documents": 300, "lm.heldout": 20, "train.max_steps": 4, "train.eval_every": 4,
             "train.batch_size": 8, "train.checkpoint_every": 4}
    return apply_variant(c, variant, {
        "head": {"delta.method": "frozen", "optim.lr": 1e-3},
        "dapt": {"stages": (head, adapt)},
        "tapt": {"stages": ({**head, **same_text}, adapt), **tapt},
        "runlocal": {"stages": (head, adapt), **small},  # both stages, a few steps on 300 reviews
    })
