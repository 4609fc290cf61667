"""SST-2 few-shot with PET (Schick & Schütze 2021): four pattern models of SmolLM2-135M on 16 examples per class,
their ensemble's soft labels on unlabeled SST-2 train sentences, and a sequence classifier distilled from them.

Pattern models: ordinary prompt-based runs (configs/sst2_kshot_prompt.py's setting) of the four SST-2 patterns of
ftlab/prompts/patterns.py ("{sentence} It was {mask}." of LM-BFF and PET's Yelp patterns "It was {mask}.
{sentence}", "Just {mask}! {sentence}", "{sentence} All in all, it was {mask}."; 0=terrible, 1=great), causal
scorer, full fine-tuning, K-shot split 16-42 (32 train, 32 dev sentences), LM-BFF's hyper-parameters (1000 steps
of 8, lr 1e-5, the best δ on the K-shot dev split every 100 steps). Unlabeled pool: a random 10,000 of the 67,285
SST-2 train sentences outside the K-shot split (labels never read; a CPU/GPU scoring budget). Ensemble weights:
each pattern model's K-shot train accuracy before training; soft labels softmax(s̄ / 2). Distillation (PET's
SuperGLUE defaults for the final classifier, timoschick/pet README: 5,000 steps of 16, lr 1e-5, T = 2): SmolLM2
with a fresh sequence-classification head (last-token pooling), full fine-tuning, best δ on the K-shot dev split
every 500 steps. Everything is scored on SST-2's original 872-sentence dev set (pet.eval_split=test).
Paper/reference: Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification and Natural
Language Inference" (EACL); Gao, Fisch & Chen 2021 (LM-BFF) for the K-shot protocol.
Command:  FTLAB_DATA=../shared/data python scripts/pet.py --config configs/sst2_pet.py --workdir runs/sst2_pet
          (:ipet adds two iPET generations; :runlocal is a few steps on 64 pool sentences)
Expected: not yet measured. PET reports gains over single patterns and over plain fine-tuning with RoBERTa-large;
whether SmolLM2-135M's ensemble and distilled classifier beat its best single pattern model is what this measures.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.model.name = "smollm2"
    c.task.name = "sst2"
    c.task.kshot = "16-42"
    c.task.max_length = 128
    c.task.eval_split = "dev"  # the K-shot dev split: δ selection of every run
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
    c.pet.patterns = ("sst2:0", "sst2:1", "sst2:2", "sst2:3")
    c.pet.pool_size = 10_000
    c.pet.pool_seed = 0
    c.pet.weights = "accuracy"
    c.pet.temperature = 2.0
    c.pet.eval_split = "test"  # with task.kshot: SST-2's original dev set
    c.pet.score_batch_size = 32
    c.pet.distill = {"train.max_steps": 5000, "train.batch_size": 16, "train.eval_every": 500,
                     "train.log_every": 50, "optim.lr": 1e-5, "delta.method": "full"}
    return apply_variant(c, variant, {
        # PET's iPET defaults (λ = 0.25 of the other models label, ×5 examples per generation), two generations
        "ipet": {"pet.ipet_generations": 2, "pet.ipet_fraction": 0.25, "pet.ipet_scale": 5.0},
        "runlocal": {"train.max_steps": 2, "train.batch_size": 4, "train.eval_every": 2, "train.log_every": 1,
                     "pet.pool_size": 64, "pet.eval_subset": 64,
                     "pet.distill": {"train.max_steps": 2, "train.batch_size": 4, "train.eval_every": 2,
                                     "train.log_every": 1}},
    })
