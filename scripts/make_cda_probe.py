"""Write the counterfactual probe sets: real sentences holding a listed gendered word, each with its swap.

    python scripts/make_cda_probe.py                          # rewrite both committed probes in ftlab/assets/cda/
    python scripts/make_cda_probe.py --check                  # regenerate, compare with the committed files
    python scripts/make_cda_probe.py --probe sst2 --out /tmp/probe.tsv

Both are deterministic and swapped with the shipped word-pair list (ftlab/assets/cda/gender_pairs.tsv) by
ftlab.data.counterfactual.swap_words; no probe sentence is a training example of an SST-2 run.
- sst2 (ftlab/assets/cda/sst2_dev_probe.tsv): every sentence of the SST-2 dev split shipped with ftlab
  (ftlab/assets/data/sst2/dev.tsv, 872 sentences) with at least one swap, in file order; label = its SST-2 label.
- imdb (ftlab/assets/cda/imdb_test_probe.tsv; needs imdb/test.tsv.gz under --data-dir or $FTLAB_DATA, e.g.
  ../shared/data): IMDB test reviews (Maas et al. 2011) with `<br />` made a space and split into sentences after
  . ! or ? followed by a space and an upper-case letter or a quote; per review the first sentence of 8-40 words
  holding a listed word and no '<' or '>'; then IMDB_PER_LABEL such reviews of each label, drawn with
  numpy.random.default_rng(IMDB_SEED) and kept in file order. label = the review's polarity (the sentence's
  own sentiment is not annotated: flip rates need no label, probe accuracy there is only indicative).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab.data import counterfactual  # noqa: E402
from ftlab.data.paths import SHIPPED_ROOT  # noqa: E402
from ftlab.tasks import get_task  # noqa: E402

ASSETS = os.path.dirname(counterfactual.PAIRS_FILE)
FILES = {"sst2": counterfactual.PROBE_FILE, "imdb": os.path.join(ASSETS, "imdb_test_probe.tsv")}
IMDB_PER_LABEL = 500
IMDB_SEED = 0
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sst2_examples(data_root: str = SHIPPED_ROOT) -> tuple[list[dict], str]:
    return get_task("sst2").read("dev", data_root), data_root


def imdb_examples(data_root: str, swaps: counterfactual.Swaps) -> tuple[list[dict], str]:
    """One sentence per selected IMDB test review (see the module docstring), as example dicts."""
    picked: dict[int, list[dict]] = {0: [], 1: []}
    for ex in get_task("imdb").read("test", data_root):
        text = re.sub(r"\s+", " ", ex["text_a"].replace("<br />", " ")).strip()
        for sent in _SENTENCE_END.split(text):
            if 8 <= len(sent.split()) <= 40 and "<" not in sent and ">" not in sent \
                    and counterfactual.swap_words(sent, swaps)[1]:
                picked[ex["label"]].append({**ex, "text_a": sent})
                break
    out = []
    for label in (0, 1):
        rows = picked[label]
        idx = np.random.default_rng(IMDB_SEED).permutation(len(rows))[:IMDB_PER_LABEL]
        out += [rows[i] for i in sorted(idx)]
    return sorted(out, key=lambda e: int(e["source"].rsplit(":", 1)[1])), data_root


def probe_text(name: str, data_root: str | None = None, pairs: str = "") -> str:
    swaps = counterfactual.load_pairs(pairs)
    if name == "sst2":
        examples, root = sst2_examples(data_root or SHIPPED_ROOT)
    elif name == "imdb":
        from ftlab.data.paths import resolve_data_dir

        examples, root = imdb_examples(resolve_data_dir("imdb", data_root), swaps)
    else:
        raise ValueError(f"unknown probe {name!r} (one of {sorted(FILES)})")
    return counterfactual.format_probe(counterfactual.build_probe(examples, swaps, root=root))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", default="sst2,imdb", help="comma list of: sst2, imdb")
    p.add_argument("--out", default="", help="output file (one --probe only; default: the committed file)")
    p.add_argument("--data-dir", default=None, help="data root (sst2 default: the shipped copy; imdb: $FTLAB_DATA)")
    p.add_argument("--pairs", default="", help="word-pair file ('' = the shipped list)")
    p.add_argument("--check", action="store_true", help="compare with the committed files; exit 1 if one differs")
    a = p.parse_args(argv)
    names = a.probe.split(",")
    if a.out and len(names) != 1:
        p.error("--out needs a single --probe")
    bad = 0
    for name in names:
        text = probe_text(name, a.data_dir, a.pairs)
        n = text.count("\n") - 1
        if a.check:
            with open(FILES[name], encoding="utf-8") as f:
                same = f.read() == text
            bad += not same
            print(f"{FILES[name]}: {n} pairs, {'identical' if same else 'DIFFERS'}")
            continue
        out = a.out or FILES[name]
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {out}: {n} pairs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
