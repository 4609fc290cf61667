"""Soft labels of a fine-tuned teacher on a task's train split, for a distilled student (`task.soft_labels`).

    python scripts/teacher_labels.py --teacher runs/sst2_full_quick --out runs/sst2_teacher_t2.jsonl --temperature 2
    python scripts/train.py --config configs/sst2_prune.py:movement10 --workdir runs/sst2_prune_movement10_distil \
        --config.task.soft_labels=runs/sst2_teacher_t2.jsonl --config.task.distill_temperature=2

The file holds every example of the split in file order (so the student's task.train_subset draws the same
examples as from the task's own file) with softmax(z_teacher / T); see ftlab/train/teacher.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab import config as config_lib  # noqa: E402
from ftlab.train import teacher  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="workdir of a finished classification run")
    ap.add_argument("--out", required=True, help="JSONL to write (task.soft_labels of the student)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--temperature", type=float, default=2.0, help="T: the student's task.distill_temperature")
    ap.add_argument("--delta", default="delta", help="δ folder of the teacher run (delta, best_delta, ...)")
    ap.add_argument("--batch-size", type=int, default=0, help="default: the teacher run's eval_batch_size")
    args = ap.parse_args(argv)
    try:
        summary = teacher.write(args.teacher, args.out, args.split, args.temperature, args.delta, args.batch_size,
                                progress=sys.stderr.isatty())
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
