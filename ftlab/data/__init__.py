"""Data layer: file readers, tensorflow-datasets sources, tokenisation, padding/bucketing and batching.

Submodules: `readers` (TSV/CSV/JSONL/text/CoNLL formats), `paths` (data root resolution and layout),
`tokenize` (examples -> token ids), `batching` (deterministic, host-sharded, dynamically padded batches),
`tfds_source` (tensorflow-datasets via ArrayRecord, no TensorFlow), `counterfactual` (gender-swap
augmentation from a word-pair list, no JAX), `pseudo_labels` (soft- and hard-labelled examples as JSONL: PET's
distillation and iPET's training sets). Task meaning lives in `ftlab/tasks`.
"""

from ftlab.data.batching import batches, num_batches, pack_sequences, packed_lm_batches
from ftlab.data.errors import DataError
from ftlab.data.paths import resolve_data_dir
from ftlab.data.readers import read_text
from ftlab.data.tokenize import Encoded, encode

__all__ = [
    "DataError",
    "Encoded",
    "batches",
    "encode",
    "num_batches",
    "pack_sequences",
    "packed_lm_batches",
    "read_text",
    "resolve_data_dir",
]
