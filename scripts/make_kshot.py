"""Write LM-BFF K-shot splits and their md5 manifest (see ftlab/tasks/kshot.py for the procedure and format).

    python scripts/make_kshot.py --data-dir ../shared/data --out /tmp/kshot
    python scripts/make_kshot.py --data-dir ../shared/data --check          # regenerate, compare, write nothing
    python scripts/make_kshot.py --data-dir ../shared/data --update-manifest  # rewrite the committed manifest

Defaults: tasks sst2,sst5,mr,trec,mrpc; K 4,8,16,32,64; seeds 13,21,42,87,100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab.tasks import get_task, kshot  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="", help="write DIR/<task>/<K>-<seed>/{train,dev}.tsv and DIR/manifest.json")
    p.add_argument("--tasks", default=",".join(kshot.TASKS))
    p.add_argument("--k", default=",".join(map(str, kshot.KS)))
    p.add_argument("--seeds", default=",".join(map(str, kshot.SEEDS)))
    p.add_argument("--check", action="store_true", help="compare with the committed manifest; exit 1 on a mismatch")
    p.add_argument("--update-manifest", action="store_true", help=f"rewrite {kshot.MANIFEST}")
    a = p.parse_args(argv)
    manifest: dict = {}
    committed = kshot.load_manifest()
    bad = 0
    for name in a.tasks.split(","):
        task = get_task(name)
        examples, cache = task.read("train", a.data_dir), {}
        for k in map(int, a.k.split(",")):
            for seed in map(int, a.seeds.split(",")):
                files = kshot.sample(task, a.data_dir, k, seed, examples, cache)
                got = kshot.entries(name, k, seed, files)
                manifest.update(got)
                if a.check:
                    for key, want in got.items():
                        if committed.get(key) != want:
                            bad += 1
                            print(f"MISMATCH {key}: {want} vs committed {committed.get(key)}")
                if a.out:
                    kshot.write(a.out, name, k, seed, files)
    doc = {"procedure": "ftlab/tasks/kshot.py (LM-BFF): RandomState(seed) permutation of the original train set; "
                        "first K per class = train, next K per class = dev", "test_split": kshot.TEST_SPLIT,
           "files": dict(sorted(manifest.items()))}
    if a.out:
        with open(os.path.join(a.out, "manifest.json"), "w") as f:
            json.dump(doc, f, indent=1)
    if a.update_manifest:
        os.makedirs(os.path.dirname(kshot.MANIFEST), exist_ok=True)
        with open(kshot.MANIFEST, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(f"{len(manifest)} files" + (f", {bad} mismatches" if a.check else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
