"""IMDB causal-LM adaptation of SmolLM2-135M-Instruct (domain-adaptive pre-training, Gururangan et al. 2020).

Full fine-tuning with the causal-LM objective on 128-token packed blocks of the IMDB unlabeled reviews
(ftlab.data.text: documents joined by EOS, BOS before each), 30 steps of 8 blocks (31k tokens; a CPU budget),
AdamW lr 5e-5 with 10% warmup. Held-out text: the last 100 reviews of imdb/unsup.txt.gz, never trained on.
Command:  FTLAB_DATA=../shared/data python scripts/train.py --config configs/imdb_clm.py --workdir runs/imdb/smollm2
          python scripts/lm_eval.py --workdir runs/imdb/smollm2 --base --docs 100 --out docs/adaptive/imdb_smollm2_ppl.json
Expected: held-out perplexity below the released model's (docs/adaptive.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.model.name = "smollm2"
    c.task.name = "clm"
    c.lm.train = "imdb/unsup.txt.gz"
    c.lm.heldout = 100
    c.lm.max_documents = 2000
    c.lm.block_size = 128
    c.delta.method = "full"
    c.train.max_steps = 30
    c.train.batch_size = 8
    c.train.eval_every = 30
    c.train.eval_batch_size = 16
    c.train.log_every = 10
    c.train.checkpoint_every = 15
    c.optim.lr = 5e-5
    c.optim.warmup_ratio = 0.1
    return apply_variant(c, variant, {})
