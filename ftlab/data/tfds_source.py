"""tensorflow-datasets as a data source without TensorFlow.

A dataset prepared in ArrayRecord format (`download_and_prepare(file_format='array_record')`, or copied from a
machine that prepared it) is opened with `tfds.builder(name, data_dir=...).as_data_source(split)`: a random
access sequence of NumPy/bytes feature dicts decoded by tfds' NumPy example parser, so TensorFlow is never
imported. Nothing is downloaded: a dataset that is not prepared under `data_dir` is a `DataError`.
"""

from __future__ import annotations

from typing import Any

from ftlab.data.errors import DataError


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise DataError(f"tfds sources need tensorflow-datasets installed ({e})") from None
    return tfds


def builder(name: str, data_dir: str | None) -> Any:
    """The tfds builder of a prepared dataset `name` ("glue/sst2", "glue/sst2:2.0.0") under `data_dir`.

    `data_dir=None` uses tfds' default (`$TFDS_DATA_DIR`, else ~/tensorflow_datasets).
    """
    tfds = _tfds()
    try:
        b = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several unrelated types for "not found"; keep its message
        raise DataError(f"tfds dataset {name!r} not found under data_dir {data_dir!r}: {e}") from None
    if not b.is_prepared():
        raise DataError(
            f"tfds dataset {name!r} is not prepared under {b.data_dir!r}; prepare it (file_format='array_record') "
            f"on a machine with network access and copy the folder"
        )
    return b


def data_source(name: str, split: str, data_dir: str | None) -> Any:
    """Random-access source of one split: `len(src)`, `src[i] -> {feature: value}` (text as bytes)."""
    b = builder(name, data_dir)
    if split not in b.info.splits:
        raise DataError(f"tfds dataset {name!r} has no split {split!r} (splits: {sorted(b.info.splits)})")
    try:
        return b.as_data_source(split)
    except Exception as e:
        raise DataError(
            f"tfds dataset {name!r} split {split!r} cannot be opened as a data source (is it prepared as "
            f"array_record? TFRecord needs TensorFlow): {e}"
        ) from None
