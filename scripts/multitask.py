"""Multi-task training: `python scripts/multitask.py --config configs/<exp>.py[:variant] --workdir DIR
[--config.key=value ...]`.

The same as `ftlab multitask ...` (ftlab.train.multitask). Resumes from DIR's latest checkpoint when DIR holds
one of the same config.
"""

import sys

from ftlab.cli import cmd_multitask

if __name__ == "__main__":
    sys.exit(cmd_multitask(sys.argv[1:]))
