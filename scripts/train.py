"""Train: `python scripts/train.py --config configs/<exp>.py[:variant] --workdir DIR [--config.key=value ...]`.

The same as `ftlab train ...`. Resumes from DIR's latest checkpoint when DIR holds one of the same config;
refuses (and says why) when DIR holds another config's checkpoint.
"""

import sys

from ftlab.cli import cmd_train

if __name__ == "__main__":
    sys.exit(cmd_train(sys.argv[1:]))
