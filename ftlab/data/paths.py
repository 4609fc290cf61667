"""Where task data lives: `resolve_data_dir` and the documented on-disk layout.

Layout under a data root (`--config.data_dir`, else `$FTLAB_DATA`):

    <root>/<task folder>/<split file>

    sst2/{train,dev,test}.tsv        (GLUE's own folder names are accepted too: SST-2, CoLA, MRPC, STS-B,
    cola/ mrpc/ stsb/ qqp/ mnli/      QQP, MNLI, QNLI, RTE, WNLI; MNLI's dev split files are
    qnli/ rte/ wnli/                  dev_matched.tsv / dev_mismatched.tsv, test_matched.tsv / ...)
    conll2003/{train,valid,test}.txt
    sst5/{train,dev,test}.tsv         (label<TAB>sentence, with a header line)
    mr/rt-polarity.{pos,neg}          (latin-1)
    trec/{train_5500,TREC_10}.label   (latin-1)
    cr/ subj/ mpqa/ {train,dev}.tsv   (label<TAB>text; also found under senteval_preprocessed/<name>/)
    imdb/{train,test}.tsv.gz, imdb/unsup.txt.gz

Each task lists its accepted folder names (`Task.dirs`) and split files (`Task.splits`). Nothing is guessed
beyond that list: a file that is not found raises `DataError` with every path that was tried. The only data
shipped inside the package is SST-2 train/dev (the default run's task), used when neither an explicit directory
nor `$FTLAB_DATA` is given.
"""

from __future__ import annotations

import os

from ftlab.data.errors import DataError

ENV_VAR = "FTLAB_DATA"
SHIPPED_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "data")
SHIPPED_TASKS = ("sst2",)


def resolve_data_dir(task_name: str, data_dir: str | None) -> str:
    """The data root for `task_name`: `data_dir` if given, else `$FTLAB_DATA`, else the shipped copy (sst2 only).

    Returns an existing directory; raises `DataError` saying how to provide the data otherwise.
    """
    if data_dir:
        source = "data_dir argument"
    elif os.environ.get(ENV_VAR):
        data_dir, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    elif task_name in SHIPPED_TASKS:
        return SHIPPED_ROOT
    else:
        raise DataError(
            f"no data directory for task {task_name!r}: pass data_dir (config key data_dir) or set ${ENV_VAR} "
            f"to a folder laid out as <root>/<task>/<split file> (see ftlab/data/paths.py); only "
            f"{list(SHIPPED_TASKS)} ship with ftlab"
        )
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir!r} (from {source}) does not exist (task {task_name!r})")
    return data_dir
