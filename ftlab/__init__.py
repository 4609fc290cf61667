"""ftlab: fine-tuning methods for pre-trained language models as small pure functions over JAX parameter trees.

Start reading at README.md ("Where to start reading"); the five concepts are: the config file
(`configs/`), path-regex rules (`ftlab/tree.py`), the delta contract (`ftlab/deltas/`), the step function
(`ftlab/train/step.py`) and the loop (`ftlab/train/loop.py`).
"""

import os as _os

# ftlab never reaches a model or dataset hub at run time.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
