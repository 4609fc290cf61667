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

# XLA:CPU's default YNNPACK dot fusions accumulate float32 matmuls in a less accurate order than Eigen's:
# measured on SmolLM2 (30 layers, residual stream up to 2e4), logits vs a float64 reference 1.6e-4 with them
# and 1.1e-4 without (HF PyTorch: 6e-5), and the MiniLM training step is ~9% faster without them (docs/bench.md).
# XLA reads XLA_FLAGS when the CPU backend starts, so this works even if jax was imported first; a user's own
# setting of the flag wins. FTLAB_XLA_DEFAULTS=0 leaves XLA_FLAGS alone.
if _os.environ.get("FTLAB_XLA_DEFAULTS", "1") != "0" and "ynn_fusion_type" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=").strip()


def _enable_compilation_cache() -> None:
    """Persist XLA executables across processes (resumes, evals, test runs): compiling a train step costs
    tens of seconds on a small CPU. FTLAB_COMPILATION_CACHE='' turns it off."""
    path = _os.environ.get("FTLAB_COMPILATION_CACHE", _os.path.expanduser("~/.cache/ftlab/jax"))
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


_enable_compilation_cache()
