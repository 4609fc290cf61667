"""Train: `python scripts/train.py --config configs/<exp>.py[:variant] --workdir DIR [--config.key=value ...]`.

Resumes from DIR's latest checkpoint when DIR already holds one of the same config.
"""

from __future__ import annotations

import argparse
import json
import sys

from ftlab import config as config_lib


def main(argv: list[str] | None = None) -> int:
    overrides, rest = config_lib.parse_cli_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/<exp>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="output directory (created; resumed if it has a checkpoint)")
    args = parser.parse_args(rest)
    try:
        cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ftlab.train.loop import train_and_evaluate

    results = train_and_evaluate(cfg, args.workdir)
    m = results["best_metrics"] or results["metrics"] or {}
    print(json.dumps({"task": results["task"], "method": results["method"],
                      "dev": {k: round(v, 4) for k, v in m.items()},
                      "trainable_params": results["trainable_params"], "delta_bytes": results["delta_bytes"],
                      "steps_per_second": results["steps_per_second"], "workdir": args.workdir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
