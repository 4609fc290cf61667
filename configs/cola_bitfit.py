"""CoLA acceptability, MiniLM BitFit — only the biases and the classifier head trained (≈0.1% of the parameters).

Bias terms of every backbone layer (query/key/value, attention output, FFN, LayerNorm) plus the head;
`--config.delta.variant=qm` trains only the query and first-FFN biases (the paper's b_q, b_m2 subset).
lr 1e-3 (Ben Zaken et al. search 1e-4..1e-3 and report the upper end for BERT-base).
Paper/reference: Ben Zaken, Ravfogel & Goldberg 2022, "BitFit: Simple Parameter-efficient Fine-tuning".
Command:  python scripts/train.py --config configs/cola_bitfit.py --workdir runs/cola_bitfit
Expected: dev MCC ≈ 0.219 (docs/results/cola_bitfit.json; cola_full 0.284): below full on MiniLM, unlike BERT-base in the paper.
          `--config.optim.lr=3e-3`: 0.214 (docs/results/cola_bitfit_lr3e-3.json): a larger lr does not close the gap
          (train loss 0.61 over the first 250 steps, 0.51 over the last 500; dev loss 0.59).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "cola"
    c.delta.method = "bitfit"
    # The pooler stays frozen under this method, and all-MiniLM-L6-v2 never trained it (it was trained with
    # mean pooling): a frozen untrained tanh pooler caps the score, so pool by the mean as the model was trained.
    c.model.pooling = "mean"
    c.delta.variant = "all"
    c.train.epochs = 10  # as the other CoLA PEFT runs (3 epochs underfit them)
    c.train.batch_size = 32
    c.train.bucket = True  # as cola_full: short sentences, length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 1e-3
    return apply_variant(c, variant, {})
