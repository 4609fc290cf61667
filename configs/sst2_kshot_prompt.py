"""SST-2 few-shot, prompt-based fine-tuning of SmolLM2-135M (LM-BFF's manual prompt, K=16 per class, seed 42).

The loss is cross-entropy over the causal LM's scores of the label words (" terrible" / " great" after
"<sentence> It was"; ftlab/train/prompting.py), no new head; all parameters are trained. Train and dev are the
LM-BFF K-shot split 16-42 (32 + 32 sentences, ftlab/tasks/kshot.py, checked against the committed md5 manifest);
the best δ on that dev split is kept, and the test number is SST-2's original 872-sentence dev set.
Hyper-parameters follow LM-BFF (1000 steps, batch 8, lr 1e-5, eval every 100 steps on the K-shot dev set).
Paper/reference: Gao, Fisch & Chen 2021 (LM-BFF); Schick & Schütze 2021 (PET).
Command:  python scripts/train.py --config configs/sst2_kshot_prompt.py --workdir runs/sst2_kshot_prompt
          ftlab eval --workdir runs/sst2_kshot_prompt --split test
Expected: not measured yet (CPU-only here). LM-BFF reports 92.7 (5 seeds) with RoBERTa-large; SmolLM2-135M
zero-shot with this prompt scores 0.5–0.7 (scripts/fewshot.py), so prompt FT should land between the two.
Other seeds / K: --config.task.kshot=16-13 (seeds 13 21 42 87 100; K 4 8 16 32 64).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.model.name = "smollm2"
    c.task.name = "sst2"
    c.task.kshot = "16-42"
    c.task.max_length = 128
    c.task.eval_split = "dev"  # the K-shot dev split (model selection); `--split test` = the original dev set
    c.prompt.pattern = "sst2:0"  # "{sentence} It was {mask}." with 0=terrible, 1=great
    c.prompt.scorer = "causal"
    c.delta.method = "full"
    c.train.max_steps = 1000
    c.train.batch_size = 8
    c.train.eval_batch_size = 16
    c.train.eval_every = 100
    c.train.log_every = 20
    c.train.checkpoint_every = 0
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    return apply_variant(c, variant, {
        # a few steps on CPU: 2 updates of batch 4, eval on the 32 K-shot dev sentences
        "runlocal": {"train.max_steps": 2, "train.batch_size": 4, "train.eval_every": 2, "train.log_every": 1,
                     "train.checkpoint_every": 2},
    })
