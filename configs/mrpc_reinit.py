"""MRPC paraphrase, MiniLM re-init — the top 2 layers and the pooler re-initialised, then everything trained.

Zhang et al.'s recipe for few-sample fine-tuning: fresh N(0, 0.02) weights for the top layers and the
pooler, bias-corrected Adam, longer training. ':n1000' trains on a 1,000-example subset for 10 epochs
(the few-sample setting where re-init helps; compare with the same subset under full fine-tuning).
Paper/reference: Zhang, Wu, Katiyar, Weinberger & Artzi 2021, "Revisiting Few-sample BERT Fine-tuning".
Command:  python scripts/train.py --config configs/mrpc_reinit.py --workdir runs/mrpc_reinit
Expected: dev F1 close to mrpc_full on the full train set; ':n1000' above full fine-tuning on the same subset with less variance across seeds; not yet measured.
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "mrpc"
    c.delta.method = "reinit"
    c.delta.k = 2
    c.delta.pooler = True
    c.delta.initializer_range = 0.02
    c.train.epochs = 5
    c.train.batch_size = 16
    c.train.bucket = True  # length bucketing of the pairs cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    c.optim.bias_correction = True
    return apply_variant(
        c,
        variant,
        {
            "n1000": {"task.train_subset": 1000, "train.epochs": 10, "train.eval_every": 0},
        },
    )
