"""Multi-task training: several sources, each with its own head on one shared backbone, trained in one run.

MT-DNN (Liu et al. 2019, "Multi-Task Deep Neural Networks for Natural Language Understanding") fine-tunes one
BERT on all GLUE tasks with a head per task; T5 (Raffel et al. 2020, §3.5.2) compares examples-proportional
mixing with temperature-scaled mixing, p_t ∝ n_t^(1/T). `train_multitask(cfg, workdir)` does both with any
δ of ftlab.deltas (one δ for the whole multi-head model, ftlab.models.multihead).

Sources. A `Source` is one objective: a name (its head's name, head/<name>/...), a head kind and width, a loss
kind of `ftlab.train.losses.compute`, a loss weight, `batches(batch_size, start)` (an infinite iterator of
NumPy batches from the start-th on, so a resumed run sees the batches it would have seen), an optional
`transform(batch, rng) -> batch` applied inside the jitted loss with the step's key (e.g. fresh MLM masks),
and optionally a task whose dev split is evaluated. `task_sources` builds one per `multitask.tasks` entry;
`train_multitask(..., extra_sources=fn)` adds more. `multitask.lm_weight` = λ > 0 adds the language-modelling
source of the config's `lm` section (`lm_source`), which makes the joint form of adaptive fine-tuning,
"task loss + λ · LM loss", in one run (below).

Sampling, realised as a fixed composition of every step. Sampling each of a step's B = train.batch_size
examples from task t with probability p_t puts B·p_t examples of t in the step *in expectation*. We take
exactly that many: every step holds B_t examples of every source t, B_t = B·p_t rounded by largest remainder
(Σ B_t = B, each B_t ≥ 1; `sub_batch_sizes`):

    proportional   p_t = n_t / Σ n_s                       (n_t: training examples of t)
    temperature    p_t = n_t^(1/T) / Σ n_s^(1/T)           (multitask.temperature = T; T=1 proportional, T→∞ equal)
    equal          p_t = 1 / K

This is stratified sampling: the same expected mixture with less variance, and static sub-batch sizes (so
steps do not recompile). Each source runs through its own shuffled epochs independently (order
`batches(seed=crc32(seed/name), epoch)`); a source with its own `batch_size` (an auxiliary objective) gets
that many rows every step on top of B. One "epoch" of the run is Σ n_t / B steps: under proportional
sampling every task then sees its examples about once, under temperature sampling small tasks are seen more
and large ones less (the run reports each task's epochs seen).

Loss. L = Σ_t w_t · L_t, L_t the mean loss of t's sub-batch (losses.compute). Default w_t = B_t / Σ_s B_s over
the sources without an explicit weight, which makes their part of L the mean over their examples in the step
(each example weighs the same, as when one batch is drawn from the mixture); `multitask.weights` (or a source's
`weight`) sets w_t directly. A delta's penalty (diff pruning's L0) is added once.

The joint form (`multitask.lm_weight` = λ > 0; e.g. configs/imdb_joint.py). One more source, named `lm`, with
head head/lm/... (masked_lm for encoders, causal_lm for decoders: the model family decides) and weight λ, gets
`multitask.lm_batch_size` packed rows of the `lm` section's text every step, outside the sampling rule: the text
an LM stage with the same `lm` section trains on (ftlab.data.text; `lm.heldout` documents of lm.train are held
out when lm.eval is '', so a joint run never sees the held-out text either). The masked LM draws BERT's masks
inside the step from the source's transform key (ftlab.train.lm.make_mlm_transform) and projects onto the
vocabulary at the chosen slots only (MultiTaskModel's `positions=`); the causal LM is next-token loss on the
packed rows. So L = Σ_t w_t L_t + λ · L_LM, with the task weights as above (with one task and no
multitask.weights, w = 1: the single-task loss), and the LM head is part of δ as every head is (full: all of it;
other methods: their `train_head` rule, `head/.*`). Only the tasks are evaluated. A base checkpoint that
carries an LM head (model.name=minilm-mlm) gives it to the LM source with `multitask.base_head=lm`.

The step. Each source's loss and gradient is its own jitted program (`make_source_step`): it applies δ to θ₀,
runs the backbone and that source's head only (MultiTaskModel.select), and adds w_t·∇L_t into a donated
gradient accumulator. `make_update` then applies the optimizer once to Σ_t w_t ∇L_t (+ the penalty's
gradient), exactly the gradient of L. Separate programs let each source keep its own shapes: with
multitask.width=fixed every batch of a task is padded to its longest training example (one compilation per
task, what accelerators want); with width=dynamic (+ train.bucket) each batch is padded to its own longest
row as `ftlab train` does (a few shapes per task; on CPU about 3x fewer token positions for GLUE, see
docs/multitask.md). Only δ's trainable leaves are differentiated; the state is the loop's (step, train, fixed,
opt_state, rng; donated to the update); step keys are fold_in(rng, step), then one key per source
(fold_in(·, index)) split into dropout and transform keys; a stochastic δ draws one sample per step, shared by
the sources.

Evaluation and selection: every evaluated source's dev split with its task's metrics (loop.evaluate), logged as
'<name>/<metric>' plus 'mean' = the mean of the tasks' main metrics, which selects the best δ and drives early
stopping. Checkpoints (Orbax, exact resume), metrics.jsonl, TensorBoard, δ export (delta/, best_delta/) and
results.json as in ftlab.train.loop; results.json adds per-task metrics, the sampling (n_t, B_t, w_t, epochs
seen) and, given `multitask.single_task` workdirs, the ratio of each task's score to its single-task run's.

Config (`config.multitask`, defaults in DEFAULTS): tasks, sampling, temperature (read only with
sampling=temperature), weights, train_subset (per task; () = task.train_subset for all), width, single_task,
base_head, lm_weight, lm_batch_size. Every other section means what it means for `ftlab train`: task.* (but
task.name) applies to every task (task.eval_subset included), train.batch_size is B, `lm` is the LM source's
text and masking. Not supported here (a ConfigError says so): several devices or processes,
gradient accumulation, embedding regularisers (reg), early exit, prompt-based training, K-shot sets, weight
averaging, and structural deltas (layer removal).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftlab import config as config_lib
from ftlab import tree
from ftlab.checkpoint import train_state as ckpt
from ftlab.train import losses
from ftlab.train import step as step_lib

DEFAULTS: dict[str, Any] = {
    "tasks": (),
    "sampling": "proportional",
    "temperature": 2.0,
    "weights": (),
    "train_subset": (),
    "width": "fixed",
    "single_task": (),
    "base_head": "",
    "lm_weight": 0.0,      # λ of the joint form task loss + λ·LM loss (the `lm` section's text); 0 = no LM source
    "lm_batch_size": 8,    # packed rows of LM text per step (outside train.batch_size)
}
LM_SOURCE = "lm"  # the name (and head name, head/lm/...) of the joint form's language-modelling source
SAMPLING = ("proportional", "temperature", "equal")
WIDTHS = ("fixed", "dynamic")
# Keys a resumed multi-task run may change (the loop's, plus what only the report reads).
RESUME_IGNORED = ("train.log_every", "train.progress", "train.crash_after_checkpoint", "parallel", "model.remat",
                  "sweep", "multitask.single_task")
HEAD_OF_KIND = {"classification": "sequence_classification", "regression": "sequence_classification",
                "tagging": "token_classification"}

Batches = Callable[[int, int], Iterator[dict[str, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Source:
    """One training objective of a multi-task run (see the module docstring).

    name        its head's name (head/<name>/...; letters, digits, '_')
    head        head kind: sequence_classification | token_classification | masked_lm | causal_lm
    num_labels  head width (classes, tags, 1 for regression; the vocabulary size for LM heads)
    loss        loss kind of ftlab.train.losses.compute: classification | regression | tagging | masked_lm |
                causal_lm
    size        n_t, its number of training examples (what the sampling rule weighs)
    batches     batches(batch_size, start) -> infinite iterator of NumPy batches (input_ids [b, T],
                attention_mask, optional token_type_ids, labels, example_mask), from the start-th batch on
    weight      w_t; None = B_t / Σ_s B_s
    batch_size  rows per step outside the sampling rule (auxiliary objectives); None = B_t from the rule
    transform   transform(batch, rng) -> batch, traced inside the jitted loss (e.g. MLM masking)
    task        an ftlab Task: `eval_data` (its encoded dev split) is evaluated with the task's metrics
    eval_data   the encoded evaluation split (ftlab.data.tokenize.Encoded) when `task` is set
    """

    name: str
    head: str
    num_labels: int
    loss: str
    size: int
    batches: Batches
    weight: float | None = None
    batch_size: int | None = None
    transform: Callable[[dict, jax.Array], dict] | None = None
    task: Any = None
    eval_data: Any = None


# ---- sampling --------------------------------------------------------------------------------------------------
def mixing_rates(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> np.ndarray:
    """p_t of each source: n_t/Σn (proportional), n_t^(1/T)/Σ n^(1/T) (temperature), 1/K (equal)."""
    n = np.asarray(sizes, np.float64)
    if n.ndim != 1 or len(n) == 0 or np.any(n <= 0):
        raise ValueError(f"source sizes must be positive, got {list(sizes)}")
    if sampling == "proportional":
        w = n
    elif sampling == "temperature":
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        w = n ** (1.0 / temperature)
    elif sampling == "equal":
        w = np.ones_like(n)
    else:
        raise ValueError(f"sampling {sampling!r}: choose from {SAMPLING}")
    return w / w.sum()


def sub_batch_sizes(sizes: Sequence[int], batch_size: int, sampling: str, temperature: float = 1.0) -> list[int]:
    """B_t = B·p_t rounded by largest remainder (ties to the earlier source), Σ B_t = B, every B_t >= 1."""
    k = len(sizes)
    if batch_size < k:
        raise ValueError(f"batch size {batch_size} is smaller than the {k} sources: each needs a row per step")
    raw = batch_size * mixing_rates(sizes, sampling, temperature)
    out = np.floor(raw).astype(int)
    rest = raw - out
    for i in sorted(range(k), key=lambda i: (-rest[i], i))[: batch_size - int(out.sum())]:
        out[i] += 1
    for i in range(k):  # a source too small to get a row takes one from the largest
        if out[i] == 0:
            out[int(np.argmax(out))] -= 1
            out[i] = 1
    return [int(x) for x in out]


# ---- config ----------------------------------------------------------------------------------------------------
def _per_task(value: Any, n: int, key: str, kind: type, default: Any) -> list:
    values = list(value or ())
    if not values:
        return [default] * n
    if len(values) != n:
        raise config_lib.ConfigError(f"multitask.{key} has {len(values)} entries for {n} tasks; give one per task "
                                     "in the order of multitask.tasks, or () for the default")
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise config_lib.ConfigError(f"multitask.{key}={values!r}: expected {kind.__name__} values") from None


def head_name(task_name: str) -> str:
    """The head (and source) name of a task: its name with every run of other characters than [A-Za-z0-9_]
    replaced by '_' (e.g. 'tfds:glue/sst2' -> 'tfds_glue_sst2')."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", task_name).strip("_") or "task"


def check_config(cfg: config_lib.Config) -> dict[str, Any]:
    """The resolved multitask settings; ConfigError naming the key for anything this trainer cannot honour."""
    from ftlab.tasks import get_task
    from ftlab.train import averaging

    mt = {**DEFAULTS, **dict(cfg.get("multitask", {}))}
    unknown = sorted(set(mt) - set(DEFAULTS))
    if unknown:
        close = config_lib.closest(unknown[0], list(DEFAULTS))
        raise config_lib.ConfigError(f"unknown config key 'multitask.{unknown[0]}'"
                                     + (f"; did you mean 'multitask.{close}'?" if close else ""))
    names = [str(t) for t in (mt["tasks"] or ())]
    if not names:
        raise config_lib.ConfigError("multitask.tasks is empty: name the tasks, e.g. "
                                     "--config.multitask.tasks=sst2,mrpc,stsb,cola")
    if len(set(names)) != len(names):
        raise config_lib.ConfigError(f"multitask.tasks repeats a task: {names}")
    tasks = []
    for t in names:
        try:
            tasks.append(get_task(t, cfg.task.data_dir or None))
        except KeyError as e:
            raise config_lib.ConfigError(f"multitask.tasks: {e.args[0]}") from None
    heads = [head_name(t) for t in names]
    if len(set(heads)) != len(heads):
        raise config_lib.ConfigError(f"multitask.tasks {names} give repeated head names {heads}")
    lm_tasks = [t.name for t in tasks if t.kind not in HEAD_OF_KIND]
    if lm_tasks:
        raise config_lib.ConfigError(f"multitask.tasks {lm_tasks}: a language-modelling objective joins a run as "
                                     "multitask.lm_weight > 0 with the lm section's text, not as a task")
    lm_weight = float(mt["lm_weight"])
    if not (lm_weight >= 0 and math.isfinite(lm_weight)):
        raise config_lib.ConfigError(f"multitask.lm_weight={mt['lm_weight']}: must be finite and >= 0")
    if lm_weight > 0:
        from ftlab.train import lm as lm_lib

        if LM_SOURCE in heads:
            raise config_lib.ConfigError(f"multitask.tasks: a task's head is named {LM_SOURCE!r}, the LM source's name")
        lm_lib.check_config(dict(cfg.get("lm", {})))
        if not cfg.lm.train:
            raise config_lib.ConfigError("multitask.lm_weight > 0 needs LM text: set lm.train (e.g. "
                                         "'imdb/unsup.txt.gz'; ftlab.data.text lists the sources)")
        if int(mt["lm_batch_size"]) < 1:
            raise config_lib.ConfigError(f"multitask.lm_batch_size={mt['lm_batch_size']}: must be >= 1")
    if mt["sampling"] not in SAMPLING:
        raise config_lib.ConfigError(f"multitask.sampling={mt['sampling']!r}: choose from {', '.join(SAMPLING)}")
    temperature = float(mt["temperature"])
    if mt["sampling"] == "temperature" and not (temperature > 0 and math.isfinite(temperature)):
        raise config_lib.ConfigError(f"multitask.temperature={temperature}: must be a positive number")
    if mt["sampling"] != "temperature" and temperature != DEFAULTS["temperature"]:
        raise config_lib.ConfigError(f"multitask.temperature={temperature} is read only with "
                                     f"multitask.sampling=temperature (sampling is {mt['sampling']!r})")
    weights = _per_task(mt["weights"], len(names), "weights", float, None)
    if any(w is not None and not (w >= 0 and math.isfinite(w)) for w in weights):
        raise config_lib.ConfigError(f"multitask.weights={list(mt['weights'])}: weights must be finite and >= 0")
    if mt["weights"] and not any(weights):
        raise config_lib.ConfigError("multitask.weights are all 0: nothing would be trained")
    subsets = _per_task(mt["train_subset"], len(names), "train_subset", int, int(cfg.task.train_subset))
    if any(s < 0 for s in subsets):
        raise config_lib.ConfigError(f"multitask.train_subset={subsets}: must be >= 0 (0 = the whole train set)")
    if mt["width"] not in WIDTHS:
        raise config_lib.ConfigError(f"multitask.width={mt['width']!r}: choose from {', '.join(WIDTHS)}")
    single = _per_task(mt["single_task"], len(names), "single_task", str, "")
    with_lm = heads + ([LM_SOURCE] if lm_weight > 0 else [])
    if mt["base_head"] not in ("", "drop") and head_name(str(mt["base_head"])) not in with_lm:
        raise config_lib.ConfigError(f"multitask.base_head={mt['base_head']!r}: '' (the base has no head), "
                                     f"'drop', or one of the tasks {names}"
                                     + (f" or the LM source {LM_SOURCE!r}" if lm_weight > 0 else ""))
    if cfg.train.batch_size < len(names):
        raise config_lib.ConfigError(f"train.batch_size={cfg.train.batch_size} is smaller than the {len(names)} "
                                     "tasks: every step takes at least one example of each")
    # What the single-task loop does and this trainer does not (yet): refuse rather than ignore.
    refused = []
    if cfg.train.grad_accum != 1:
        refused.append(f"train.grad_accum={cfg.train.grad_accum}")
    if cfg.get("reg", {}).get("method", "none") != "none":
        refused.append(f"reg.method={cfg.reg.method!r}")
    if cfg.get("exit", {}).get("routine", "none") != "none":
        refused.append(f"exit.routine={cfg.exit.routine!r}")
    if cfg.get("prompt") and (cfg.prompt.get("pattern") or cfg.prompt.get("template")):
        refused.append("prompt-based training (prompt.pattern / prompt.template)")
    if cfg.task.get("kshot"):
        refused.append(f"task.kshot={cfg.task.kshot!r}")
    for key in ("soft_labels", "train_extra"):  # one file of pseudo-labelled examples cannot serve every task
        if cfg.task.get(key):
            refused.append(f"task.{key}={cfg.task[key]!r}")
    if cfg.get("pet", {}).get("patterns"):
        refused.append("PET (pet.patterns; scripts/pet.py)")
    refused += averaging.active_keys(cfg)
    if refused:
        raise config_lib.ConfigError("multi-task training does not support " + "; ".join(refused))
    from ftlab import deltas

    if hasattr(deltas.get(cfg.delta.method), "model_config_after"):
        raise config_lib.ConfigError(f"delta.method={cfg.delta.method!r} changes the model's structure; "
                                     "multi-task training does not support it")
    return {"tasks": tasks, "names": names, "heads": heads, "sampling": mt["sampling"], "temperature": temperature,
            "weights": weights, "train_subset": subsets, "width": mt["width"], "single_task": single,
            "base_head": str(mt["base_head"]), "lm_weight": lm_weight, "lm_batch_size": int(mt["lm_batch_size"])}


# ---- sources ---------------------------------------------------------------------------------------------------
def pad_width(batch: dict[str, np.ndarray], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Token axes of `batch` padded to `width` (input_ids pad_id, masks and types 0, token labels -100)."""
    fill = {"input_ids": pad_id, "labels": losses.IGNORE}
    out = dict(batch)
    for key, x in batch.items():
        if x.ndim == 2 and x.shape[1] < width:
            out[key] = np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill.get(key, 0))
    return out


def task_batches(enc, *, seed: int, pad_id: int, pad_to_multiple_of: int, bucket: bool,
                 width: str = "fixed") -> Batches:
    """batches(batch_size, start) over an encoded train split: shuffled epochs 0, 1, ... (`ftlab.data.batching`,
    order a function of (seed, epoch)), the partial last batch of each epoch dropped, from the start-th batch.
    width='fixed': every batch padded to the longest example rounded up to pad_to_multiple_of (one shape)."""
    from ftlab.data.batching import batches, num_batches

    fixed = None
    if width == "fixed":
        longest = int(np.max(enc.lengths))
        m = max(pad_to_multiple_of, 1)
        fixed = max(longest, min(-(-longest // m) * m, enc.max_length))

    def make(batch_size: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        per_epoch = num_batches(len(enc), batch_size, drop_remainder=True)
        if per_epoch == 0:
            raise ValueError(f"{len(enc)} training examples are fewer than one sub-batch of {batch_size}")
        epoch, skip = divmod(int(start), per_epoch)
        while True:
            for i, b in enumerate(batches(enc, batch_size, shuffle=True, seed=seed, epoch=epoch, pad_id=pad_id,
                                          pad_to_multiple_of=pad_to_multiple_of, bucket=bucket,
                                          drop_remainder=True, pad_final=False)):
                if i >= skip:
                    yield b if fixed is None else pad_width(b, fixed, pad_id)
            skip, epoch = 0, epoch + 1

    return make


def task_sources(cfg: config_lib.Config, base, mt: dict[str, Any]) -> list[Source]:
    """One Source per multitask.tasks entry: its train split (multitask.train_subset, subset_seed as for
    `ftlab train`, so a single-task run with the same subset sees the same examples) and its eval split
    (task.eval_subset > 0: that many examples, drawn as `ftlab train` draws them)."""
    from ftlab.train import loop

    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for task, name, subset, weight in zip(mt["tasks"], mt["heads"], mt["train_subset"], mt["weights"]):
        _, train_enc = loop._load_split(cfg, task, tokenizer, "train", subset, base.config)
        _, eval_enc = loop._load_split(cfg, task, tokenizer, cfg.task.eval_split, cfg.task.get("eval_subset", 0),
                                       base.config)
        seed = zlib.crc32(f"{cfg.seed}/{name}".encode())
        out.append(Source(name=name, head=HEAD_OF_KIND[task.kind], num_labels=task.num_labels, loss=task.kind,
                          size=len(train_enc), weight=weight, task=task, eval_data=eval_enc,
                          batches=task_batches(train_enc, seed=seed, pad_id=pad_id,
                                               pad_to_multiple_of=cfg.train.pad_to_multiple_of,
                                               bucket=cfg.train.bucket, width=mt["width"])))
    return out


def lm_source(cfg: config_lib.Config, base, mt: dict[str, Any]) -> Source:
    """The joint form's language-modelling source (module docstring): the `lm` section's packed training text
    (what an LM stage with that section trains on), `multitask.lm_batch_size` rows per step, weight λ =
    `multitask.lm_weight`; a masked LM (with its masking transform) for encoders, a causal LM for decoders."""
    from ftlab.models import family
    from ftlab.tasks import get_task
    from ftlab.train import lm as lm_lib
    from ftlab.train import loop

    masked = family(base.config) == "bert"
    task = get_task("mlm" if masked else "clm")
    _, enc = loop._load_lm_split(cfg, task, base.tokenizer, "train")
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    transform = lm_lib.make_mlm_transform(dict(cfg.lm), base.tokenizer, base.config.vocab_size) if masked else None
    return Source(name=LM_SOURCE, head=task.kind, num_labels=base.config.vocab_size, loss=task.kind, size=len(enc),
                  weight=mt["lm_weight"], batch_size=mt["lm_batch_size"], transform=transform,
                  batches=task_batches(enc, seed=zlib.crc32(f"{cfg.seed}/{LM_SOURCE}".encode()), pad_id=pad_id,
                                       pad_to_multiple_of=cfg.train.pad_to_multiple_of, bucket=False))


def plan(sources: Sequence[Source], cfg: config_lib.Config, mt: dict[str, Any]) -> dict[str, Any]:
    """Sub-batch sizes, loss weights and the run's length: {'batch': {name: B_t}, 'weight': {name: w_t},
    'steps_per_epoch', 'total_steps'}."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names repeat: {names}")
    sampled = [s for s in sources if s.batch_size is None]
    if not sampled:
        raise ValueError("every source has its own batch_size: none is sampled")
    sizes = sub_batch_sizes([s.size for s in sampled], cfg.train.batch_size, mt["sampling"], mt["temperature"])
    batch = {s.name: b for s, b in zip(sampled, sizes)}
    for s in sources:
        if s.batch_size is not None:
            if s.batch_size < 1:
                raise ValueError(f"source {s.name!r}: batch_size={s.batch_size} must be >= 1")
            batch[s.name] = int(s.batch_size)
    total_rows = sum(batch[s.name] for s in sources if s.weight is None)  # of the sources the rule weighs
    weight = {s.name: float(s.weight) if s.weight is not None else batch[s.name] / total_rows for s in sources}
    steps_per_epoch = max(sum(s.size for s in sampled) // cfg.train.batch_size, 1)
    tc = cfg.train
    total = tc.max_steps if tc.max_steps > 0 else int(math.ceil(tc.epochs * steps_per_epoch))
    return {"batch": {s.name: batch[s.name] for s in sources}, "weight": weight,
            "steps_per_epoch": steps_per_epoch, "total_steps": total}


# ---- model and δ -----------------------------------------------------------------------------------------------
def prepare(cfg: config_lib.Config, extra_sources: Callable | None = None) -> dict[str, Any]:
    """Base, sources, the multi-head model and its initial params: {'mt', 'base', 'sources', 'model', 'params',
    'fresh_paths'}. A base checkpoint's own head (head/...) goes where multitask.base_head says."""
    import dataclasses as dc

    from ftlab.checkpoint import load_base
    from ftlab.models import build_multitask_model, init_params, named_head

    mt = check_config(cfg)
    base = load_base(cfg.model.name)
    sources = task_sources(cfg, base, mt) + ([lm_source(cfg, base, mt)] if mt["lm_weight"] > 0 else [])
    sources += list(extra_sources(cfg, base) if extra_sources else [])
    model_config = base.config
    overrides = {k: cfg.model[k] for k in ("dtype", "remat", "attention") if hasattr(model_config, k)}
    if overrides:
        model_config = dc.replace(model_config, **overrides)
    try:
        model = build_multitask_model(model_config, [(s.name, s.head, s.num_labels) for s in sources],
                                      cfg.model.pooling)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    base_params = base.params
    head_leaves = sorted(p for p in tree.flatten(base_params) if p.startswith("head/"))
    if head_leaves:
        if mt["base_head"] == "":
            raise config_lib.ConfigError(
                f"the base {cfg.model.name} has its own head ({head_leaves[:3]}...): set multitask.base_head to "
                "a task (its head starts from it) or to 'drop'")
        flat = {p: x for p, x in tree.flatten(base_params).items() if not p.startswith("head/")}
        if mt["base_head"] != "drop":
            flat.update(tree.flatten(named_head(tree.unflatten({p: x for p, x in tree.flatten(base_params).items()
                                                                if p.startswith("head/")}),
                                                head_name(mt["base_head"]))))
        base_params = tree.unflatten(flat)
    example = jnp.ones((1, 8), jnp.int32)
    params, fresh = init_params(model, jax.random.fold_in(jax.random.key(cfg.seed), 1), base_params, example)
    return {"mt": mt, "base": base, "sources": sources, "model": model, "params": params, "fresh_paths": fresh}


def init_state(cfg: config_lib.Config, params: Any, d: dict[str, Any], total_steps: int):
    """(state, tx, lr_schedule): the train state of ftlab.train.step (same keys and keys' derivation as
    loop.init_training) for δ `d` from loop.init_delta."""
    from ftlab import optim
    from ftlab.deltas.subset import num_layers

    n_layers = num_layers(d["delta_mod"].apply(params, d["delta"])["params"])
    tx, lr_schedule = optim.build(dict(cfg.optim), d["train"], total_steps, n_layers)
    state = {
        "step": jnp.zeros([], jnp.int32),
        "train": d["train"],
        "fixed": d["fixed"],
        "opt_state": tx.init(d["train"]),
        "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), 3)),
    }
    return state, tx, lr_schedule


# ---- steps -----------------------------------------------------------------------------------------------------
def make_source_loss(model, delta_mod: ModuleType, source: Source, index: int,
                     total_steps: int | None = None) -> Callable:
    """loss_fn(train, fixed, base, batch, rng, step) -> (L_t, aux): source `index`'s mean loss on its batch, its
    head only. `rng` is the state's key: the step's key fold_in(rng, step) gives a δ key (shared by all sources)
    and this source's key fold_in(·, index), split into dropout and transform keys."""
    view = model.select(source.name)
    stochastic = getattr(delta_mod, "STOCHASTIC", False)

    def loss_fn(train, fixed, base, batch, rng, step):
        delta = tree.merge(train, fixed) if fixed else train
        step_key, delta_key = jax.random.split(jax.random.fold_in(rng, step))
        variables = step_lib.apply_delta(delta_mod, base, delta, delta_key if stochastic else None, step,
                                         total_steps)
        dropout_key, transform_key = jax.random.split(jax.random.fold_in(step_key, index))
        if source.transform is not None:
            batch = source.transform(batch, transform_key)
        logits = view.apply(variables, batch["input_ids"], deterministic=False, rngs={"dropout": dropout_key},
                            **step_lib.model_inputs(batch))
        return losses.compute(source.loss, logits, batch)

    return loss_fn


def make_source_step(model, delta_mod: ModuleType, source: Source, index: int, weight: float,
                     total_steps: int | None = None, jit: bool = True) -> Callable:
    """step(acc, train, fixed, base, batch, rng, step) -> (acc + w_t·∇L_t, L_t); `acc` (a tree like `train`) is
    donated."""
    value_and_grad = jax.value_and_grad(make_source_loss(model, delta_mod, source, index, total_steps), has_aux=True)

    def source_step(acc, train, fixed, base, batch, rng, step):
        (loss, _), grads = value_and_grad(train, fixed, base, batch, rng, step)
        return jax.tree_util.tree_map(lambda a, g: a + weight * g, acc, grads), loss

    return jax.jit(source_step, donate_argnums=(0,)) if jit else source_step


def make_update(tx: optax.GradientTransformation, delta_mod: ModuleType, weights: Mapping[str, float],
                on_nonfinite: str = "stop", total_steps: int | None = None, jit: bool = True) -> Callable:
    """update(state, acc, source_losses) -> (state, zeroed acc, metrics): one optimizer step on the accumulated
    Σ_t w_t ∇L_t (plus the delta's penalty and its gradient). `state` and `acc` are donated. metrics: loss
    (Σ_t w_t L_t [+ penalty]), 'loss/<name>' (L_t), grad_norm, finite [, penalty]."""
    penalty = step_lib.delta_penalty(delta_mod, total_steps)

    def update(state, acc, source_losses):
        loss = sum(weights[n] * source_losses[n] for n in weights)
        grads = acc
        metrics = {f"loss/{n}": source_losses[n] for n in weights}
        if penalty is not None:  # data-independent: once per step, from δ alone
            fixed = state["fixed"]
            reg, pen = jax.value_and_grad(lambda t: penalty(tree.merge(t, fixed) if fixed else t, state["step"]))(
                state["train"])
            grads = jax.tree_util.tree_map(jnp.add, grads, pen)
            loss = loss + reg
            metrics["penalty"] = reg
        gnorm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["train"])
        new_train = optax.apply_updates(state["train"], updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        if on_nonfinite == "skip":  # keep the previous δ and optimizer state for this step
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            new_train, opt_state = keep(new_train, state["train"]), keep(opt_state, state["opt_state"])
        new_state = {**state, "step": state["step"] + 1, "train": new_train, "opt_state": opt_state}
        zeros = jax.tree_util.tree_map(jnp.zeros_like, acc)
        return new_state, zeros, {"loss": loss, "grad_norm": gnorm, "finite": finite, **metrics}

    return jax.jit(update, donate_argnums=(0, 1)) if jit else update


# ---- the run ---------------------------------------------------------------------------------------------------
def _selection_score(evals: Mapping[str, Mapping[str, float]], sources: Sequence[Source]) -> float:
    return float(np.mean([evals[s.name][s.task.main_metric] for s in sources]))


def _flat_eval(evals: Mapping[str, Mapping[str, float]], score: float) -> dict[str, float]:
    return {"mean": score, **{f"{n}/{k}": v for n, m in evals.items() for k, v in m.items()}}


def single_task_comparison(workdirs: Mapping[str, str], best: Mapping[str, Mapping[str, float]],
                           sources: Sequence[Source]) -> dict[str, Any]:
    """{name: {workdir, metric, single, multi, ratio}} from single-task runs' results.json (their best eval) and
    this run's selected evals; 'min_ratio' over the tasks. A run without results.json yet is marked pending."""
    out: dict[str, Any] = {}
    for s in sources:
        wd = workdirs.get(s.name, "")
        if not wd:
            continue
        path = os.path.join(wd, "results.json")
        if not os.path.isfile(path):  # still running: scripts/multitask_report.py compares once it has finished
            print(f"[ftlab] warning: {path} not found; no single-task comparison for {s.name}", file=sys.stderr)
            out[s.name] = {"workdir": os.path.abspath(wd), "metric": s.task.main_metric, "single": None,
                           "multi": best[s.name][s.task.main_metric], "ratio": None, "pending": True}
            continue
        with open(path) as f:
            r = json.load(f)
        if r.get("task") != s.task.name:
            raise config_lib.ConfigError(f"multitask.single_task for {s.task.name}: {wd} is a run of task "
                                         f"{r.get('task')!r}")
        single = (r.get("best_metrics") or r.get("metrics"))[s.task.main_metric]
        multi = best[s.name][s.task.main_metric]
        out[s.name] = {"workdir": os.path.abspath(wd), "metric": s.task.main_metric, "single": single,
                       "multi": multi, "ratio": multi / single if single else None,
                       "single_train_steps": r.get("train_steps"), "single_train_examples": r.get("train_examples")}
    ratios = [v["ratio"] for v in out.values() if v["ratio"] is not None]
    if ratios:
        out["min_ratio"] = min(ratios)
    return out


def evaluate_workdir(workdir: str, delta_dir: str = "delta", split: str | None = None,
                     extra_sources: Callable | None = None) -> dict[str, dict[str, float]]:
    """Every task's metrics of a finished multi-task run's exported δ (or of the δ folder `delta_dir`, e.g.
    'best_delta') on `split` (default: the run's task.eval_split): {name: metrics, 'mean': mean of the main
    metrics}. `extra_sources` as the run had them (their heads are part of δ)."""
    from ftlab import deltas
    from ftlab.checkpoint import delta_io
    from ftlab.train import loop

    with open(os.path.join(workdir, "config.json")) as f:
        cfg = config_lib.Config(loop.with_defaults(json.load(f)))
    if split is not None:
        cfg.task.eval_split = split
    prep = prepare(cfg, extra_sources)
    method, _, delta = delta_io.load(os.path.join(workdir, delta_dir), prep["params"], prep["base"].hash)
    delta_mod = deltas.get(method)
    train, fixed = tree.split(delta, delta_mod.trainable(delta))
    tok = prep["base"].tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    evaluated = [s for s in prep["sources"] if s.task is not None and s.eval_data is not None]
    out = {s.name: loop.evaluate(step_lib.make_eval_step(prep["model"].select(s.name), delta_mod, s.task.kind),
                                 {"train": train, "fixed": fixed}, prep["params"], s.task, s.eval_data,
                                 cfg.train.eval_batch_size, pad_id, cfg.train.pad_to_multiple_of)
           for s in evaluated}
    return {**out, "mean": _selection_score(out, evaluated)}


def train_multitask(cfg: config_lib.Config, workdir: str,
                    extra_sources: Callable[[config_lib.Config, Any], Sequence[Source]] | None = None) -> dict[str, Any]:
    """Train every source of `cfg` (multitask.tasks, plus `extra_sources(cfg, base)`) in one run; returns (and
    writes to workdir/results.json) the results. Resumes from workdir's latest checkpoint of the same config."""
    from ftlab import parallel
    from ftlab.checkpoint import delta_io
    from ftlab.train import loop

    t_start = time.time()
    tc = cfg.train

    # 1. Workdir, config -------------------------------------------------------------------------------------
    mt = check_config(cfg)  # config errors before the workdir is touched or anything is loaded
    mesh = parallel.make_mesh(cfg.parallel)
    if mesh.size > 1 or jax.process_count() > 1:
        raise config_lib.ConfigError(f"multi-task training runs on one device of one process ({mesh.size} devices, "
                                     f"{jax.process_count()} processes visible); use e.g. CUDA_VISIBLE_DEVICES=0")
    for task, wd in zip(mt["names"], mt["single_task"]):  # a typo should not wait for the end of the run
        if wd and not os.path.isdir(wd):
            raise config_lib.ConfigError(f"multitask.single_task for {task}: {wd} is not a directory")
    loop._check_workdir(workdir)
    fingerprint = config_lib.fingerprint(cfg, ignore=RESUME_IGNORED)
    mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    resume_step = ckpt.latest(mngr)
    cfg_path = os.path.join(workdir, "config.json")
    if resume_step is not None and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = loop.with_defaults(json.load(f))
        if config_lib.fingerprint(old, ignore=RESUME_IGNORED) != fingerprint:
            raise loop.WorkdirError(f"{workdir} holds a checkpoint (step {resume_step}) of a different config; "
                                    f"refusing to resume. Differences: {loop._config_diff(old, cfg.to_dict())}")
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    os.replace(cfg_path + ".tmp", cfg_path)

    # 2. Base, sources, heads, δ -----------------------------------------------------------------------------
    prep = prepare(cfg, extra_sources)
    mt, base, sources, model, params = prep["mt"], prep["base"], prep["sources"], prep["model"], prep["params"]
    d = loop.init_delta(cfg, {**prep, "task": None})
    method, delta_mod, delta_cfg = d["method"], d["delta_mod"], d["delta_cfg"]
    n_train, n_total = tree.count(d["train"]), tree.count(params)
    evaluated = [s for s in sources if s.task is not None and s.eval_data is not None]

    # 3. Sampling plan, optimizer, steps ---------------------------------------------------------------------
    p = plan(sources, cfg, mt)
    total_steps, steps_per_epoch = p["total_steps"], p["steps_per_epoch"]
    eval_every = tc.eval_every or steps_per_epoch
    state, tx, lr_schedule = init_state(cfg, params, d, total_steps)
    source_steps = {s.name: make_source_step(model, delta_mod, s, i, p["weight"][s.name], total_steps)
                    for i, s in enumerate(sources)}
    update = make_update(tx, delta_mod, p["weight"], tc.on_nonfinite, total_steps)
    eval_steps = {s.name: step_lib.make_eval_step(model.select(s.name), delta_mod, s.task.kind) for s in evaluated}
    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # 4. Resume ----------------------------------------------------------------------------------------------
    meta: dict[str, Any] = {"best_score": None, "best_step": None, "bad_evals": 0, "best_metrics": None}
    if resume_step is not None:
        state, meta = ckpt.restore(mngr, resume_step, state)
        print(f"[ftlab] resumed from {workdir}/checkpoints/{resume_step}", file=sys.stderr)
    step = int(state["step"])
    best_delta = None
    if meta.get("best_step") is not None and os.path.isdir(os.path.join(workdir, "best_delta")):
        _, _, best_delta = delta_io.load(os.path.join(workdir, "best_delta"), params, base.hash)
    its = {s.name: s.batches(p["batch"][s.name], step) for s in sources}
    acc = jax.tree_util.tree_map(jnp.zeros_like, state["train"])
    logger = loop._Logger(workdir, resume_step)
    if resume_step is None:
        mix = ", ".join(f"{s.name} {s.size:,} ex -> {p['batch'][s.name]}/step (w {p['weight'][s.name]:.3f})"
                        for s in sources)
        print(f"[ftlab] multi-task ({mt['sampling']}), model {cfg.model.name}, delta {method}: {n_train:,} "
              f"trainable of {n_total:,} parameters; {mix}; {total_steps} steps ({steps_per_epoch}/epoch)",
              file=sys.stderr)

    def run_eval() -> tuple[dict[str, dict], float | None]:
        evals = {s.name: loop.evaluate(eval_steps[s.name], state, params, s.task, s.eval_data,
                                       tc.eval_batch_size, pad_id, tc.pad_to_multiple_of) for s in evaluated}
        return evals, (_selection_score(evals, evaluated) if evaluated else None)

    # 5. The loop --------------------------------------------------------------------------------------------
    progress = loop._progress(total_steps, step, tc.progress)
    stopped_early = False
    window: list = []
    window_rates: list[float] = []
    last_eval: dict | None = None
    t_window = time.perf_counter()
    while step < total_steps and not stopped_early:
        src_losses = {}
        for s in sources:
            acc, src_losses[s.name] = source_steps[s.name](acc, state["train"], state["fixed"], params,
                                                           next(its[s.name]), state["rng"], state["step"])
        state, acc, m = update(state, acc, src_losses)
        window.append(m)
        step += 1
        if step % tc.log_every == 0 or step == total_steps:
            host = jax.device_get(window)
            window = []
            window_rates.append(len(host) / (time.perf_counter() - t_window))
            if not all(bool(x["finite"]) for x in host) and tc.on_nonfinite == "stop":
                raise FloatingPointError(f"non-finite loss or gradient at or before step {step}; "
                                         "lower the learning rate or set train.on_nonfinite=skip")
            values = {k: float(np.mean([x[k] for x in host])) for k in host[0] if k != "finite"}
            values.update(lr=float(lr_schedule(step - 1)), epoch=step / steps_per_epoch)
            logger.log(step, "train", values)
            progress.set_postfix(loss=f"{values['loss']:.4f}")
        progress.update(1)

        if evaluated and (step % eval_every == 0 or step == total_steps):
            evals, score = run_eval()
            last_eval = evals
            logger.log(step, "eval", _flat_eval(evals, score))
            eligible = loop.selectable(delta_mod, delta_cfg, step, total_steps)  # soft movement: from t_f on
            if eligible and (meta["best_score"] is None or score > meta["best_score"]):
                meta.update(best_score=score, best_step=step, bad_evals=0, best_metrics=evals)
                best_delta = jax.device_get(tree.merge(state["train"], state["fixed"]))
                if tc.export_delta == "best":
                    delta_io.save(os.path.join(workdir, "best_delta"), method, delta_cfg, best_delta, base.source,
                                  base.hash, {"step": step})
            elif eligible:
                meta["bad_evals"] += 1
            progress.write(f"[ftlab] step {step}: mean {score:.4f}; " + "; ".join(
                f"{n} " + ", ".join(f"{k}={v:.4f}" for k, v in m_.items()) for n, m_ in evals.items()))
            if tc.early_stopping_patience and meta["bad_evals"] >= tc.early_stopping_patience:
                progress.write(f"[ftlab] early stopping: no improvement of the mean in {meta['bad_evals']} evals")
                stopped_early = True
        if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total_steps or stopped_early:
            ckpt.save(mngr, step, state, {**meta, "fingerprint": fingerprint})
            if tc.crash_after_checkpoint == step:
                os.kill(os.getpid(), signal.SIGKILL)
        if step % tc.log_every == 0:
            t_window = time.perf_counter()
    progress.close()
    logger.close()

    # 6. Results ---------------------------------------------------------------------------------------------
    final_delta = jax.device_get(tree.merge(state["train"], state["fixed"]))
    export = best_delta if (tc.export_delta == "best" and best_delta is not None) else final_delta
    heads = {s.name: {"head": s.head, "num_labels": s.num_labels, "loss": s.loss,
                      "task": s.task.name if s.task is not None else None} for s in sources}
    delta_meta = {}
    if tc.export_delta != "none":
        delta_meta = delta_io.save(os.path.join(workdir, "delta"), method, delta_cfg, export, base.source, base.hash,
                                   {"step": meta["best_step"] if tc.export_delta == "best" else step,
                                    "tasks": [s.task.name for s in evaluated], "heads": heads})
    best = meta["best_metrics"]
    results = {
        "config": cfg.to_dict(),
        "tasks": [s.task.name for s in evaluated],
        "method": method,
        "model": cfg.model.name,
        "base_hash": base.hash,
        "heads": heads,
        "metrics": last_eval,
        "best_metrics": best,
        "best_step": meta["best_step"],
        "main_metric": "mean",
        "main_metrics": {s.name: s.task.main_metric for s in evaluated},
        "best_score": meta["best_score"],
        "sampling": {"rule": mt["sampling"], "temperature": mt["temperature"] if mt["sampling"] == "temperature"
                     else None, "width": mt["width"], "batch_size": p["batch"], "weight": p["weight"],
                     "train_examples": {s.name: s.size for s in sources},
                     "epochs_seen": {s.name: step * p["batch"][s.name] / s.size for s in sources}},
        "trainable_params": n_train,
        "total_params": n_total,
        "trainable_fraction": n_train / n_total,
        "delta_bytes": delta_meta.get("array_bytes", tree.nbytes(delta_mod.to_disk(export))),
        "delta_file_bytes": delta_meta.get("file_bytes"),
        "train_steps": step,
        "steps_per_epoch": steps_per_epoch,
        "steps_per_second": float(np.median(window_rates)) if window_rates else None,
        "peak_rss_mb": loop._peak_rss_mb(),
        "seed": cfg.seed,
        "stopped_early": stopped_early,
        "wall_seconds": time.time() - t_start,
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }
    single = {n: w for n, w in zip(mt["heads"], mt["single_task"]) if w}
    if single and best is not None:
        results["single_task"] = single_task_comparison(single, best, evaluated)
    with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
    return results
