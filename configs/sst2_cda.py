"""SST-2 sentiment, MiniLM full fine-tuning with counterfactual data augmentation (gender word and name swaps).

Every train example holding a listed gendered word or first name (ftlab/assets/cda/gender_pairs.tsv) gets a
copy with them swapped (he <-> she, actor <-> actress, james <-> mary, ...; ftlab.data.counterfactual), on a
4,000-example subset for one epoch. Variant ':none' is the same run without augmentation (the baseline),
':replace' swaps those examples instead of adding the copy. Gender sensitivity is measured afterwards by
scripts/counterfactual.py on the SST-2 dev probe pairs (docs/counterfactual.md).
Paper/reference: Lu et al. 2018, "Gender Bias in Neural Natural Language Processing" (counterfactual data
augmentation); word list after Zhao et al. 2018 (WinoBias), names after Hall Maudslay et al. 2019.
Command:  python scripts/train.py --config configs/sst2_cda.py --workdir runs/sst2_cda
          python scripts/train.py --config configs/sst2_cda.py:none --workdir runs/sst2_cda_none
          python scripts/counterfactual.py --workdir runs/sst2_cda_none runs/sst2_cda --out /tmp/cda
Expected: dev accuracy ≈ 0.80 without and ≈ 0.81 with augmentation (seeds 42, 43); probe flip rates of 1-3% in
both, not clearly lower with augmentation; median |Δp(positive)| on the IMDB probe 0.0075 -> 0.0060
(docs/counterfactual.md).
"""

from ftlab.train.loop import apply_variant, default_config


def get_config(variant=None):
    c = default_config()
    c.task.name = "sst2"
    c.task.train_subset = 4000      # drawn with task.subset_seed before augmentation: the same 4,000 in every variant
    c.task.augment = "cda"
    c.task.augment_mode = "add"     # original + swapped copy (two-sided CDA)
    c.train.epochs = 1
    c.train.batch_size = 32
    c.train.eval_every = 0          # one eval, at the end of the epoch
    c.train.bucket = True           # short sentences: length bucketing cuts padding waste
    c.train.pad_to_multiple_of = 16
    c.optim.lr = 5e-5
    return apply_variant(c, variant, {
        "none": {"task.augment": "none"},
        "replace": {"task.augment_mode": "replace"},
    })
