"""Data layer: file readers, tensorflow-datasets sources, tokenisation, padding/bucketing and batching.

Submodules: `readers` (TSV/CSV/JSONL/text/CoNLL formats), `paths` (data root resolution and layout),
`tokenize` (examples -> token ids), `batching` (deterministic, host-sharded, dynamically padded batches),
`tfds_source` (tensorflow-datasets via ArrayRecord, no TensorFlow). Task meaning lives in `ftlab/tasks`.
"""

from ftlab.data.errors import DataError
from ftlab.data.paths import resolve_data_dir
from ftlab.data.readers import read_text

__all__ = ["DataError", "read_text", "resolve_data_dir"]
