"""IMDB from 500 labelled reviews with the joint form of adaptive fine-tuning: task loss + λ · masked-LM loss on
the IMDB unlabeled reviews, in one run (instead of configs/imdb_mlm.py's LM stage *before* fine-tuning).

MiniLM with ftlab's shipped MLM head (`model.name=minilm-mlm`; the head starts the LM source, multitask.base_head=lm),
full fine-tuning, one δ for the encoder, the classifier (head/imdb, mean pooling) and the MLM head (head/lm).
Every step: 16 of the 500 labelled reviews (task.train_subset=500, subset_seed 42: configs/imdb_500.py's reviews,
truncated to 128 tokens) and 16 packed 128-token rows of the first 20,000 IMDB unlabeled reviews minus the last 500
(lm.heldout: configs/imdb_mlm.py's text and held-out split), BERT masking (15%, 80/10/10) drawn in the step;
loss = CE(imdb) + λ·MLM with λ = 1 (ftlab.train.multitask: the joint form). 3 epochs of the 500 reviews
(93 steps), AdamW lr 5e-5, 10% warmup, as configs/imdb_500.py; one eval at the end on the same 1,000 IMDB test
reviews (task.eval_subset, seed 43). Variants: :control (λ = 0: the same run without the LM source, the MLM
head dropped), :lam01 (λ = 0.1), :runlocal (a few steps on small text).
Paper/reference: Gururangan et al. 2020 ("Don't Stop Pretraining") for DAPT/TAPT as separate stages; the joint
objective as in Chronopoulou et al. 2019 ("An Embarrassingly Simple Approach for Transfer Learning from
Pretrained Language Models": task loss + weighted LM loss).
Command:  FTLAB_DATA=../shared/data python -m ftlab.cli multitask --config configs/imdb_joint.py --workdir runs/imdb/joint-1 --config.seed=1
          (seeds 1, 2, 3 as configs/imdb_500.py; compare with its :direct and :dapt runs)
Expected: not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.model.name = "minilm-mlm"
    c.model.pooling = "mean"  # all-MiniLM-L6-v2 was trained with mean pooling
    c.task.train_subset = 500
    c.task.subset_seed = 42
    c.task.eval_split = "test"
    c.task.eval_subset = 1000
    c.task.max_length = 128
    c.lm.train = "imdb/unsup.txt.gz"
    c.lm.heldout = 500
    c.lm.max_documents = 20000
    c.lm.block_size = 128
    c.delta.method = "full"
    c.train.epochs = 3
    c.train.eval_every = 10_000  # only at the end (the last step always evaluates)
    c.train.batch_size = 16
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 0
    c.train.export_delta = "none"
    c.optim.lr = 5e-5
    c.optim.warmup_ratio = 0.1
    c.multitask.tasks = ("imdb",)
    c.multitask.lm_weight = 1.0
    c.multitask.lm_batch_size = 16
    c.multitask.base_head = "lm"  # minilm-mlm's shipped MLM head starts the LM source's head
    return apply_variant(c, variant, {
        "control": {"multitask.lm_weight": 0.0, "multitask.base_head": "drop"},
        "lam01": {"multitask.lm_weight": 0.1},
        "runlocal": {"task.train_subset": 64, "task.eval_subset": 32, "lm.max_documents": 300, "lm.heldout": 20,
                     "train.max_steps": 4, "train.eval_every": 4, "train.log_every": 2, "train.batch_size": 8,
                     "multitask.lm_batch_size": 4},
    })
