"""PET / iPET: `python scripts/pet.py --config configs/<task>_pet.py[:variant] --workdir DIR [--config.key=value ...]`.

Pattern models (one prompt-based run per pattern) → their label scores on the task's unlabeled train text →
ensemble soft labels → a sequence classifier distilled from them (ftlab.train.pet, whose docstring has the
procedure and the workdir layout). Rerunning the command skips finished steps after checking their inputs and
resumes an interrupted run. Progress lines go to stderr; DIR/results.json holds each pattern model's, the
ensemble's and the distilled classifier's metrics, and a one-line summary is printed to stdout.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ftlab import config as config_lib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    overrides, rest = config_lib.parse_cli_overrides(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="scripts/pet.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="configs/<task>_pet.py[:variant]")
    ap.add_argument("--workdir", required=True, help="output directory (created; finished steps are skipped)")
    args = ap.parse_args(rest)
    from ftlab.train import pet

    try:
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
        results = pet.run(cfg, args.workdir)
    except (config_lib.ConfigError, pet.StepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = results["main_metric"]
    print(json.dumps({"task": results["task"], "kshot": results["kshot"], "metric": m, "split": results["eval_split"],
                      "patterns": {x["pattern"]: round(x["eval"][m], 4) for x in results["patterns"]},
                      "ensemble": round(results["ensemble"]["eval"][m], 4),
                      "distilled": round(results["distilled"]["eval"][m], 4), "workdir": args.workdir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
