"""PET and iPET end to end: pattern models → ensemble soft labels on unlabeled text → a distilled classifier.

Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification and Natural Language
Inference" (EACL; §3.1–3.3). `run(cfg, workdir)` (entry point: scripts/pet.py) does, for a config whose
`pet.patterns` names P patterns of `ftlab.prompts.patterns` and whose `task.kshot` names the labelled set T:

 1. Pattern models. Per pattern p, an ordinary prompt-based run (`loop.train_and_evaluate` of the config with
    `prompt.pattern=p`; its loss is CE over the label words' scores, ftlab.train.prompting) on T:
    `DIR/g0/<i>-<pattern>/`, with its own eval (the config's task.eval_split, e.g. the K-shot dev split),
    best-δ selection and export.
 2. Scores. Each pattern model's label scores s_p(x) [C] (ftlab.train.prompting.label_scores: what its eval
    takes the argmax of) on
      - the unlabeled pool D: the task's original train split minus the K-shot train and dev examples (the
        K-shot sampler's own selection, `ftlab.tasks.kshot.select`), texts only; `pet.pool_size` N > 0 keeps a
        random subset of N (drawn with `pet.pool_seed`);
      - the evaluation split `pet.eval_split` (default 'test': with task.kshot the task's original evaluation
        set; `pet.eval_subset` > 0 draws that many as task.eval_subset does);
      - T, with the model *before* training (θ₀ with the run's initial δ): its accuracy a_p there is the pattern's
        ensemble weight w_p = a_p (PET's choice; `pet.weights=uniform`: w_p = 1);
    saved in `DIR/g0/scores/<i>-<pattern>.npz` (arrays kshot_init [|T|, C], pool [|D|, C], eval [E, C]).
 3. Soft labels. q(x) = softmax(Σ_p w_p s_p(x) / Σ_p w_p / T) for x in D (`prompting.pet_soft_labels`,
    T = `pet.temperature`, PET: 2), written with the texts to `DIR/soft_labels.jsonl` (ftlab.data.pseudo_labels).
 4. Distillation. An ordinary run of the config with the prompt off (a sequence classifier: a fresh
    classification head, `model.head=new`, any δ) whose train split is that file (`task.soft_labels`) and whose
    loss is KL(q ‖ softmax(z/T))·T² (`prompting.distillation_loss`, the same T: `task.distill_temperature`),
    with the dotted keys of `pet.distill` applied last (e.g. its own steps and learning rate): `DIR/distill/`.
    Its evaluation and δ selection are the run's own (task.eval_split).

iPET (`pet.ipet_generations` G > 0; §3.3, and timoschick/pet's generate_ipet_train_set): G further generations
of pattern models before step 3. Generation g's model of pattern i is a fresh prompt-based run on T plus
pseudo-labelled pool examples (`task.train_extra` = `DIR/g<g>/extra/<i>-<pattern>.jsonl`): a sub-ensemble of
max(1, round(λ·(P−1))) other patterns' generation-(g−1) models, drawn at random (λ = `pet.ipet_fraction`,
PET: 0.25), labels D with the argmax of its weighted mean scores; for each label l, n_l = int(|T_l|·(d^g − 1))
examples (d = `pet.ipet_scale`, PET: 5; so |T ∪ new| = d^g·|T| with T's label distribution) are drawn without
replacement from the pool examples labelled l, each with probability ∝ its sub-ensemble probability
softmax(s̄)_l; when fewer than n_l are labelled l they are repeated (as PET does). With
`pet.ipet_n_most_likely` = m > 0 (PET's option, first iPET generation only) the candidates for label l are
instead the m pool examples of highest softmax(s̄)_l, whatever the sub-ensemble's argmax. Step 3 then uses the
last generation's models. Draws use np.random.default_rng([seed, g, i]).

`DIR/results.json`: per generation, each pattern model's own best eval and its metrics on pet.eval_split, its
weight, and the ensemble's metrics on pet.eval_split (argmax of the weighted mean scores); the pool (size,
and the soft labels' agreement with the pool's gold labels: a diagnostic only, the labels are never trained
on); the distilled classifier's own best eval and its exported δ's metrics on pet.eval_split.

Resume: every step writes its output atomically together with the inputs it was made from (config
fingerprints, hashes of the pool, the scored δ and the written files). Rerunning the command skips finished
steps after checking those inputs; an interrupted run resumes from its checkpoint (the loop's rule); a step
whose inputs changed is refused, naming the file and what differs (use a new --workdir). Progress lines go to
stderr as "[pet] ...".

Config (`config.pet`, DEFAULTS below; every other section configures the pattern models' runs as for
`ftlab train`). Not supported (a ConfigError says so): a config without task.kshot, prompt.pattern /
template / verbalizer set outside pet.patterns, task.soft_labels / task.train_extra set by hand, export_delta
none, regression or tagging tasks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftlab import config as config_lib

DEFAULTS: dict[str, Any] = {
    "patterns": (),          # prompt.pattern of each pattern model, e.g. ("sst2:0", "sst2:1"); () = PET off
    "pool_size": 0,          # unlabeled pool = original train split minus the K-shot examples; >0: a random N of it
    "pool_seed": 0,          # seed of that draw
    "weights": "accuracy",   # ensemble weights: accuracy (K-shot train accuracy before training; PET) | uniform
    "temperature": 2.0,      # T of the soft labels softmax(s̄/T) and of the distillation loss KL·T² (PET: 2)
    "eval_split": "test",    # split every model and the ensemble are scored on (with task.kshot: test = original)
    "eval_subset": 0,        # >0: that many examples of eval_split (drawn as task.eval_subset draws)
    "score_batch_size": 32,  # examples per scoring batch
    "distill": {},           # dotted overrides of the distillation run, e.g. {"train.max_steps": 5000}
    "ipet_generations": 0,   # G: iPET generations after the first (0 = PET)
    "ipet_fraction": 0.25,   # λ: the sub-ensemble labelling for a model holds round(λ·(P−1)) (≥ 1) other models
    "ipet_scale": 5.0,       # d: generation g trains on d^g·|T| examples (T + pseudo-labelled)
    "ipet_n_most_likely": 0,  # >0: generation 1 draws label l's examples from the m most likely for l (PET's option)
}
WEIGHTS = ("accuracy", "uniform")


def _log(msg: str) -> None:
    print(f"[pet] {msg}", file=sys.stderr, flush=True)


def slug(pattern: str) -> str:
    """A pattern spec as a folder name: 'sst2:0' -> 'sst2_0'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", pattern).strip("_") or "pattern"


# ---- config --------------------------------------------------------------------------------------------------
def _derived(cfg: config_lib.Config) -> config_lib.Config:
    """A copy of `cfg` with the pet section at its defaults (what every run of the procedure starts from)."""
    d = json.loads(json.dumps(cfg.to_dict()))
    d["pet"] = json.loads(json.dumps(config_lib.Config(DEFAULTS).to_dict()))
    return config_lib.Config(d)


def pattern_config(cfg: config_lib.Config, pattern: str, train_extra: str = "") -> config_lib.Config:
    """The config of one pattern model's run: `cfg` with prompt.pattern=pattern (and iPET's extra examples)."""
    sc = _derived(cfg)
    sc.prompt.pattern = pattern
    sc.task.train_extra = train_extra
    return sc


def distill_config(cfg: config_lib.Config, soft_labels: str) -> config_lib.Config:
    """The config of the distillation run: `cfg` without the prompt, a fresh classification head, the train
    split from `soft_labels`, T = pet.temperature, then pet.distill's dotted overrides."""
    sc = _derived(cfg)
    sc.prompt.pattern = ""
    sc.prompt.template = ""
    sc.prompt.verbalizer = ""
    sc.task.soft_labels = soft_labels
    sc.task.distill_temperature = float(cfg.pet.temperature)
    sc.model.head = "new"
    overrides = dict(cfg.pet.get("distill") or {})
    for key in overrides:
        if key.split(".")[0] in ("pet", "stages", "multitask"):
            raise config_lib.ConfigError(f"pet.distill sets {key!r}: the distillation run is one ordinary run")
    try:
        return config_lib.apply_overrides(sc, [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                                               for k, v in overrides.items()])
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"pet.distill: {e}") from None


def check_config(cfg: config_lib.Config) -> dict[str, Any]:
    """The resolved pet settings; ConfigError naming the key for anything this procedure cannot honour. Every
    run's config is built here once, so a bad key fails before anything trains."""
    from ftlab.prompts import get_pattern
    from ftlab.tasks import get_task

    pet = {**DEFAULTS, **dict(cfg.get("pet", {}))}
    unknown = sorted(set(pet) - set(DEFAULTS))
    if unknown:
        close = config_lib.closest(unknown[0], list(DEFAULTS))
        raise config_lib.ConfigError(f"unknown config key 'pet.{unknown[0]}'"
                                     + (f"; did you mean 'pet.{close}'?" if close else ""))
    patterns = [str(p) for p in (pet["patterns"] or ())]
    if not patterns:
        raise config_lib.ConfigError("pet.patterns is empty: name the patterns, e.g. ('sst2:0', 'sst2:1')")
    if len(set(patterns)) != len(patterns):
        raise config_lib.ConfigError(f"pet.patterns repeats a pattern: {patterns}")
    try:
        task = get_task(cfg.task.name, cfg.task.data_dir or None)
    except KeyError as e:
        raise config_lib.ConfigError(f"task.name: {e.args[0]}") from None
    if task.kind != "classification":
        raise config_lib.ConfigError(f"PET needs a classification task; {task.name!r} is {task.kind}")
    for p in patterns:
        try:
            get_pattern(p, task.name)
        except KeyError as e:
            raise config_lib.ConfigError(f"pet.patterns: {e.args[0]}") from None
    if not cfg.task.get("kshot"):
        raise config_lib.ConfigError("PET needs task.kshot (the labelled set T, e.g. '16-42'); the unlabeled pool is "
                                     "the rest of the task's train split")
    refused = [f"prompt.{k}={cfg.prompt[k]!r}" for k in ("pattern", "template", "verbalizer") if cfg.prompt.get(k)]
    refused += [f"task.{k}={cfg.task[k]!r}" for k in ("soft_labels", "train_extra") if cfg.task.get(k)]
    if refused:
        raise config_lib.ConfigError("PET sets these itself (the patterns come from pet.patterns): "
                                     + "; ".join(refused))
    if cfg.train.export_delta == "none":
        raise config_lib.ConfigError("train.export_delta=none: PET scores each pattern model's exported δ")
    if pet["weights"] not in WEIGHTS:
        raise config_lib.ConfigError(f"pet.weights={pet['weights']!r}: choose from {', '.join(WEIGHTS)}")
    temperature = float(pet["temperature"])
    if not (temperature > 0 and math.isfinite(temperature)):
        raise config_lib.ConfigError(f"pet.temperature={temperature}: must be a positive number")
    for key in ("pool_size", "eval_subset", "ipet_generations", "ipet_n_most_likely"):
        if int(pet[key]) < 0:
            raise config_lib.ConfigError(f"pet.{key}={pet[key]}: must be >= 0")
    if int(pet["score_batch_size"]) < 1:
        raise config_lib.ConfigError(f"pet.score_batch_size={pet['score_batch_size']}: must be >= 1")
    if not isinstance(pet["distill"], Mapping):
        raise config_lib.ConfigError(f"pet.distill must be a dict of dotted keys, got {pet['distill']!r}")
    generations = int(pet["ipet_generations"])
    if generations:
        if len(patterns) < 2:
            raise config_lib.ConfigError("iPET (pet.ipet_generations > 0) labels each model's data with the other "
                                         "patterns' models: it needs at least 2 patterns")
        if not 0 < float(pet["ipet_fraction"]) <= 1:
            raise config_lib.ConfigError(f"pet.ipet_fraction={pet['ipet_fraction']}: must be in (0, 1]")
        if not float(pet["ipet_scale"]) > 1:
            raise config_lib.ConfigError(f"pet.ipet_scale={pet['ipet_scale']}: must be > 1")
    from ftlab.train import prompting

    fam = _family(cfg.model.name)
    if fam is not None:  # a known short name: the scorer must fit the model before anything trains
        for pat in patterns:
            try:
                prompting.resolve(pattern_config(cfg, pat).prompt, task, fam)
            except ValueError as e:
                raise config_lib.ConfigError(f"pet.patterns {pat!r}: {e}") from None
    distill = distill_config(cfg, "soft_labels.jsonl")
    return {"task": task, "patterns": patterns, "weights": pet["weights"], "temperature": temperature,
            "pool_size": int(pet["pool_size"]), "pool_seed": int(pet["pool_seed"]),
            "eval_split": str(pet["eval_split"]), "eval_subset": int(pet["eval_subset"]),
            "score_batch_size": int(pet["score_batch_size"]), "generations": generations,
            "ipet_fraction": float(pet["ipet_fraction"]), "ipet_scale": float(pet["ipet_scale"]),
            "ipet_n_most_likely": int(pet["ipet_n_most_likely"]),
            "distill_keys": sorted(dict(pet["distill"])), "distill_method": distill.delta.method}


def _family(model_name: str) -> str | None:
    """The model family of a short model name without loading it (None for paths: known once loaded)."""
    return {"minilm": "bert", "minilm-mlm": "bert", "smollm2": "llama"}.get(str(model_name))


# ---- data ----------------------------------------------------------------------------------------------------
def unlabeled_pool(cfg: config_lib.Config, task, size: int = 0, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """(pool, gold): the task's original train examples that are neither K-shot train nor K-shot dev examples of
    task.kshot, in file order, as unlabeled examples {'text_a', 'text_b', 'label': None, 'source'}; `size` > 0
    keeps a random subset of that many (`np.random.default_rng(seed)`, file order kept). `gold` [N]: their true
    labels, for reporting only."""
    from ftlab.data.errors import DataError
    from ftlab.tasks import kshot, resolve_data_dir

    data_dir = resolve_data_dir(task.name, cfg.task.data_dir or None)
    examples = task.read("train", data_dir)
    k, kseed = kshot.parse_spec(cfg.task.kshot)
    train_idx, dev_idx = kshot.select([e["label"] for e in examples], task.num_labels, k, kseed)
    # the K-shot train split the pattern models see must be exactly these examples (kshot_dir files included)
    seen = kshot.read(task, "train", data_dir, cfg.task.kshot, cfg.task.get("kshot_dir", ""))
    if [(e["text_a"], e.get("text_b")) for e in seen] != [(examples[i]["text_a"], examples[i].get("text_b"))
                                                          for i in train_idx]:
        raise DataError(f"task.kshot={cfg.task.kshot!r}: the K-shot train split read for training differs from the "
                        f"selection of the original train set ({task.path('train', data_dir)}); the pool "
                        "would not be disjoint from it")
    used = set(train_idx) | set(dev_idx)
    keep = [i for i in range(len(examples)) if i not in used]
    if size:
        if size > len(keep):
            raise config_lib.ConfigError(f"pet.pool_size={size}: only {len(keep)} unlabeled examples remain")
        keep = [keep[j] for j in sorted(np.random.default_rng(seed).permutation(len(keep))[:size])]
    pool = [{"text_a": examples[i]["text_a"], "text_b": examples[i].get("text_b"), "label": None,
             "source": examples[i]["source"]} for i in keep]
    return pool, np.asarray([examples[i]["label"] for i in keep], np.int64)


def texts_md5(examples: Sequence[Mapping[str, Any]]) -> str:
    """md5 of the examples' texts (what a pool or split's identity is checked by)."""
    h = hashlib.md5()
    for e in examples:
        h.update(json.dumps([e["text_a"], e.get("text_b")], ensure_ascii=False).encode())
    return h.hexdigest()


def file_md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- scoring and the ensemble ---------------------------------------------------------------------------------
def score_examples(cfg: config_lib.Config, run_dir: str | None, sets: Mapping[str, Sequence[dict]],
                   batch_size: int = 32) -> dict[str, np.ndarray]:
    """Label scores {name: [N, C] float32} of a prompt-based run's model on each list of examples in `sets`,
    computed as its evaluation computes them (`prompting.label_scores` on the run's prompt encoding).
    `run_dir`: a finished run whose exported δ (run_dir/delta) is applied; None: the initial δ of `cfg`
    (the model before training)."""
    from ftlab import deltas
    from ftlab.checkpoint import delta_io
    from ftlab.data.batching import batches
    from ftlab.train import loop, prompting

    prep = loop.prepare(cfg)
    task, base = prep["task"], prep["base"]
    d = loop.init_delta(cfg, prep)
    if loop._prompt(cfg, task, base.config) is None:
        raise config_lib.ConfigError(f"{run_dir or 'config'}: not a prompt-based run (prompt.pattern / template)")
    delta_mod, delta = d["delta_mod"], d["delta"]
    if run_dir is not None:
        method, _, delta = delta_io.load(os.path.join(run_dir, "delta"), prep["params"], base.hash)
        delta_mod = deltas.get(method)
    variables = delta_mod.apply(prep["params"], delta)
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = {}
    for name, examples in sets.items():
        _, enc = loop.encode_examples(cfg, task, tok, list(examples), name, base.config)
        rows = []
        for b in batches(enc, batch_size, shuffle=False, seed=0, epoch=0, pad_id=pad_id,
                         pad_to_multiple_of=cfg.train.pad_to_multiple_of, drop_remainder=False, pad_final=True):
            z = prompting.score_batch(d["model"], variables, b, task.num_labels)
            rows.append(z[b["example_mask"] > 0])
        out[name] = np.concatenate(rows).astype(np.float32)
        if len(out[name]) != len(examples):
            raise AssertionError(f"{name}: {len(out[name])} scores for {len(examples)} examples")
    return out


def accuracy(scores: np.ndarray, labels: Sequence[int]) -> float:
    """Share of rows whose argmax is the label."""
    return float(np.mean(np.argmax(scores, -1) == np.asarray(labels)))


def ensemble_scores(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ_p w_p s_p / Σ_p w_p: the ensemble's scores [N, C] (PET's 'wmean'; equal weights = 'mean')."""
    w = np.asarray(weights, np.float64)
    if w.shape != (len(scores),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(scores)} non-negative numbers, not all 0; got {list(weights)}")
    return np.tensordot(w / w.sum(), np.stack([np.asarray(s, np.float64) for s in scores]), axes=1)


def ipet_selection(scores: Sequence[np.ndarray], weights: Sequence[float], train_labels: Sequence[int],
                   num_labels: int, generation: int, scale: float, rng: np.random.Generator,
                   n_most_likely: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, labels) of one iPET training set's new examples (module docstring) from the pool scores
    [N, C] of the labelling sub-ensemble and their weights: n_l = int(|T_l|·(scale^generation − 1)) examples per
    label l, drawn without replacement among the candidates with probability ∝ softmax(s̄)_l (the candidates
    repeated when fewer than n_l). Candidates: the pool examples the sub-ensemble labels l, or with
    `n_most_likely` = m > 0 the m examples of highest softmax(s̄)_l (ties: lower index first)."""
    merged = ensemble_scores(scores, weights)
    p = np.exp(merged - merged.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pred = np.argmax(merged, -1)
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=num_labels)
    idx, labels = [], []
    for label in range(num_labels):
        n = int(counts[label] * (scale ** generation - 1))
        if n == 0:
            continue
        if n_most_likely > 0:
            cand = np.sort(np.argsort(-p[:, label], kind="stable")[:n_most_likely])
        else:
            cand = np.flatnonzero(pred == label)
        if not len(cand):
            raise ValueError(f"iPET generation {generation}: no pool example is labelled {label} by the "
                             f"sub-ensemble, but {n} are needed (a larger pool may help; pet.ipet_n_most_likely > 0 "
                             "draws generation 1's examples from the most likely ones instead)")
        cand = np.tile(cand, -(-n // len(cand)))  # PET repeats the candidates when there are too few
        prob = p[cand, label] / p[cand, label].sum()
        pick = rng.choice(len(cand), size=n, replace=False, p=prob)
        idx.append(cand[pick])
        labels.append(np.full(n, label, np.int64))
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(idx), np.concatenate(labels)


# ---- steps with their records ---------------------------------------------------------------------------------
class StepError(RuntimeError):
    """A workdir step made from other inputs than this run's (the procedure refuses to mix them)."""


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=float))


def _record(path: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The saved record {'inputs', 'outputs'} of a finished step made from `inputs`; None when the step has not
    finished; StepError when it was made from other inputs."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    want = _jsonable(inputs)
    if rec.get("inputs") != want:
        diff = sorted(k for k in set(want) | set(rec.get("inputs", {}))
                      if want.get(k) != rec.get("inputs", {}).get(k))
        raise StepError(f"{path}: this step was made from other inputs (differences in {diff}); refusing to mix "
                        "them. Use a new --workdir, or delete this file and what depends on it")
    return rec


def _save_record(path: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    rec = {"inputs": _jsonable(inputs), "outputs": _jsonable(outputs)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=2)
    os.replace(path + ".tmp", path)
    return rec


def run_fingerprint(cfg: config_lib.Config) -> str:
    from ftlab.train.loop import RESUME_IGNORED_KEYS

    return config_lib.fingerprint(cfg, ignore=RESUME_IGNORED_KEYS)


def train_run(cfg: config_lib.Config, workdir: str, label: str, log=None) -> dict[str, Any]:
    """An ordinary run in `workdir`: skipped when it has finished (results.json) with the same config, else
    trained (or resumed from its checkpoint) by `loop.train_and_evaluate`. Returns its results. `log`: the
    progress printer (default: "[pet] ..." on stderr)."""
    say = log or _log
    from ftlab.train import loop

    res_path = os.path.join(workdir, "results.json")
    if os.path.isfile(res_path):
        with open(os.path.join(workdir, "config.json")) as f:
            old = loop.with_defaults(json.load(f))
        if config_lib.fingerprint(old, ignore=loop.RESUME_IGNORED_KEYS) != run_fingerprint(cfg):
            raise StepError(f"{workdir} holds a finished run of a different config "
                            f"(differences: {loop._config_diff(old, cfg.to_dict())}); use a new --workdir")
        say(f"{label}: done, skipped ({res_path})")
        with open(res_path) as f:
            return json.load(f)
    say(f"{label}: training -> {workdir}")
    return loop.train_and_evaluate(cfg, workdir)


def _scores_step(cfg: config_lib.Config, run_dir: str, path: str, sets: dict[str, list], extra_inputs: dict,
                 batch_size: int, init_sets: dict[str, list] | None, label: str) -> dict[str, np.ndarray]:
    """Scores of the run in `run_dir` on `sets` (and of the untrained model on `init_sets`, stored as
    '<name>_init'), cached in `path` (.npz) with a record (.json) of what they were computed from."""
    inputs = {"run": run_fingerprint(cfg), "delta_md5": file_md5(os.path.join(run_dir, "delta", "delta.safetensors")),
              "sets": {n: texts_md5(v) for n, v in sets.items()},
              "init_sets": {n: texts_md5(v) for n, v in (init_sets or {}).items()}, **extra_inputs}
    rec = _record(path + ".json", inputs)
    if rec is not None and os.path.isfile(path + ".npz"):
        _log(f"{label}: scores done, skipped ({path}.npz)")
        with np.load(path + ".npz") as z:
            return {k: z[k] for k in z.files}
    _log(f"{label}: scoring " + ", ".join(f"{n} ({len(v)})" for n, v in sets.items())
         + "".join(f", {n} before training ({len(v)})" for n, v in (init_sets or {}).items()))
    arrays = score_examples(cfg, run_dir, sets, batch_size)
    if init_sets:
        arrays.update({f"{n}_init": v for n, v in score_examples(cfg, None, init_sets, batch_size).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp.npz", "wb") as f:
        np.savez(f, **arrays)
    os.replace(path + ".tmp.npz", path + ".npz")
    _save_record(path + ".json", inputs, {k: list(v.shape) for k, v in arrays.items()})
    return arrays


def evaluate_run(cfg: config_lib.Config, run_dir: str, split: str, subset: int) -> dict[str, float]:
    """Metrics of a finished run's exported δ on `split` (`subset` > 0: drawn as task.eval_subset draws),
    as `ftlab eval` computes them."""
    from ftlab import deltas, tree
    from ftlab.checkpoint import delta_io
    from ftlab.train import loop
    from ftlab.train import step as step_lib

    prep = loop.prepare(cfg)
    task, base = prep["task"], prep["base"]
    method, _, delta = delta_io.load(os.path.join(run_dir, "delta"), prep["params"], base.hash)
    delta_mod = deltas.get(method)
    _, enc = loop._load_split(cfg, task, base.tokenizer, split, subset, base.config)
    train, fixed = tree.split(delta, delta_mod.trainable(delta))
    eval_step = step_lib.make_eval_step(prep["model"], delta_mod, task.kind,
                                        scores=loop.eval_scores(cfg, task, base.config))
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    return loop.evaluate(eval_step, {"train": train, "fixed": fixed}, prep["params"], task, enc,
                         cfg.train.eval_batch_size, pad, cfg.train.pad_to_multiple_of)


def _metrics(task, scores: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    from ftlab.tasks import metrics as metrics_lib

    return metrics_lib.compute(task, np.argmax(scores, -1).tolist(), list(labels))


# ---- the procedure --------------------------------------------------------------------------------------------
def run(cfg: config_lib.Config, workdir: str) -> dict[str, Any]:
    """PET (and iPET) for `cfg` in `workdir` (module docstring); returns and writes DIR/results.json."""
    from ftlab.checkpoint import load_base
    from ftlab.data import pseudo_labels
    from ftlab.tasks import kshot, resolve_data_dir
    from ftlab.train import loop, prompting

    p = check_config(cfg)
    task, patterns = p["task"], p["patterns"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json.tmp"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    os.replace(os.path.join(workdir, "config.json.tmp"), os.path.join(workdir, "config.json"))

    # The data every step reads: T (labelled), the pool D (texts only), the evaluation split.
    data_dir = resolve_data_dir(task.name, cfg.task.data_dir or None)
    kshot_train = kshot.read(task, "train", data_dir, cfg.task.kshot, cfg.task.get("kshot_dir", ""))
    pool, gold = unlabeled_pool(cfg, task, p["pool_size"], p["pool_seed"])
    tokenizer = load_base(cfg.model.name).tokenizer
    eval_examples = loop._load_split(cfg, task, tokenizer, p["eval_split"], p["eval_subset"])[0]
    eval_labels = [e["label"] for e in eval_examples]
    if any(lab is None for lab in eval_labels):
        raise config_lib.ConfigError(f"pet.eval_split={p['eval_split']!r} has examples without labels")
    _log(f"{task.name} K={cfg.task.kshot}: {len(patterns)} patterns, {len(kshot_train)} labelled, {len(pool):,} "
         f"unlabeled, {len(eval_examples):,} {p['eval_split']} examples; iPET generations: {p['generations']}")

    generations: list[dict[str, Any]] = []
    init_scores: dict[int, np.ndarray] = {}
    for g in range(p["generations"] + 1):
        gdir = os.path.join(workdir, f"g{g}")
        models = []
        for i, pattern in enumerate(patterns):
            name = f"{i}-{slug(pattern)}"
            label = f"generation {g}, pattern {i + 1}/{len(patterns)} ({pattern})"
            extra = ""
            if g > 0:
                extra = _ipet_extra(cfg, p, generations[-1], init_scores, pool, kshot_train, g, i,
                                    os.path.join(gdir, "extra", name), label)
            sc = pattern_config(cfg, pattern, extra)
            run_dir = os.path.join(gdir, name)
            res = train_run(sc, run_dir, label)
            scores = _scores_step(sc, run_dir, os.path.join(gdir, "scores", name),
                                  {"pool": pool, "eval": eval_examples},
                                  {"eval_split": p["eval_split"], "eval_subset": p["eval_subset"]},
                                  p["score_batch_size"], {"kshot": kshot_train} if g == 0 else None, label)
            if g == 0:
                init_scores[i] = scores["kshot_init"]
            models.append({"pattern": pattern, "workdir": run_dir, "train_examples": res["train_examples"],
                           "best_metrics": res["best_metrics"], "best_step": res["best_step"],
                           "kshot_accuracy_before_training": accuracy(init_scores[i],
                                                                      [e["label"] for e in kshot_train]),
                           "eval": _metrics(task, scores["eval"], eval_labels),
                           "_pool": scores["pool"], "_eval": scores["eval"]})
        weights = [m["kshot_accuracy_before_training"] if p["weights"] == "accuracy" else 1.0 for m in models]
        if not sum(weights):
            raise ValueError(f"generation {g}: every pattern model scores 0 on the K-shot train set before training; "
                             "use pet.weights=uniform")
        for m, w in zip(models, weights):
            m["weight"] = w
        ens = _metrics(task, ensemble_scores([m["_eval"] for m in models], weights), eval_labels)
        _log(f"generation {g}: ensemble {p['eval_split']} {task.main_metric}={ens[task.main_metric]:.4f}; "
             + ", ".join(f"{m['pattern']} {m['eval'][task.main_metric]:.4f}" for m in models))
        generations.append({"generation": g, "models": models, "ensemble": {"eval": ens, "weights": weights}})

    # Soft labels of the pool from the last generation's ensemble.
    last = generations[-1]
    soft_path = os.path.join(workdir, "soft_labels.jsonl")
    inputs = {"scores": [texts_md5(pool)] + [hashlib.md5(m["_pool"].tobytes()).hexdigest() for m in last["models"]],
              "weights": last["ensemble"]["weights"], "temperature": p["temperature"]}
    rec = _record(soft_path + ".json", inputs)
    if rec is None or not os.path.isfile(soft_path) or file_md5(soft_path) != rec["outputs"]["md5"]:
        if rec is not None:
            raise StepError(f"{soft_path} is missing or differs from its record {soft_path}.json; delete the record "
                            "to write it again")
        soft = prompting.pet_soft_labels([m["_pool"] for m in last["models"]], last["ensemble"]["weights"],
                                         p["temperature"])
        pseudo_labels.write(soft_path, pool, task.label_names, soft=soft)
        agree = float(np.mean(np.argmax(soft, -1) == gold))
        rec = _save_record(soft_path + ".json", inputs, {"md5": file_md5(soft_path), "examples": len(pool),
                                                         "agreement_with_gold": agree})
        _log(f"soft labels: {len(pool):,} examples -> {soft_path} (argmax agrees with the pool's gold labels on "
             f"{100 * agree:.1f}%, a diagnostic)")
    else:
        _log(f"soft labels: done, skipped ({soft_path})")

    # Distillation into a sequence classifier, then its exported δ on the evaluation split.
    dc = distill_config(cfg, soft_path)
    distill_dir = os.path.join(workdir, "distill")
    dres = train_run(dc, distill_dir, "distillation")
    ev_path = os.path.join(workdir, "distill_eval.json")
    ev_inputs = {"run": run_fingerprint(dc), "delta_md5": file_md5(os.path.join(distill_dir, "delta",
                                                                                "delta.safetensors")),
                 "split": p["eval_split"], "subset": p["eval_subset"], "examples": texts_md5(eval_examples)}
    ev = _record(ev_path, ev_inputs)
    if ev is None:
        _log(f"distillation: evaluating the exported δ on {p['eval_split']}")
        ev = _save_record(ev_path, ev_inputs, evaluate_run(dc, distill_dir, p["eval_split"], p["eval_subset"]))
    else:
        _log(f"distillation: evaluation done, skipped ({ev_path})")

    results = {
        "task": task.name, "kshot": cfg.task.kshot, "model": cfg.model.name, "main_metric": task.main_metric,
        "eval_split": p["eval_split"], "eval_examples": len(eval_examples), "weights_rule": p["weights"],
        "temperature": p["temperature"],
        "generations": [{**g_, "models": [{k: v for k, v in m.items() if not k.startswith("_")} for m in g_["models"]]}
                        for g_ in generations],
        "patterns": [{k: v for k, v in m.items() if not k.startswith("_")} for m in last["models"]],
        "ensemble": last["ensemble"],
        "pool": {"examples": len(pool), "size_rule": p["pool_size"], "seed": p["pool_seed"],
                 "soft_labels": soft_path, "agreement_with_gold": rec["outputs"]["agreement_with_gold"]},
        "distilled": {"workdir": distill_dir, "method": dres["method"], "train_examples": dres["train_examples"],
                      "best_metrics": dres["best_metrics"], "best_step": dres["best_step"],
                      "eval": ev["outputs"]},
    }
    with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
    _log(f"done: ensemble {results['ensemble']['eval'][task.main_metric]:.4f}, distilled "
         f"{results['distilled']['eval'][task.main_metric]:.4f} ({task.main_metric} on {p['eval_split']}) -> "
         f"{os.path.join(workdir, 'results.json')}")
    return results


def _ipet_extra(cfg, p: dict, prev: dict, init_scores: dict, pool: list, kshot_train: list, g: int, i: int,
                path: str, label: str) -> str:
    """The JSONL of generation g's pseudo-labelled examples for pattern i (module docstring), written once."""
    from ftlab.data import pseudo_labels

    task = p["task"]
    others = [j for j in range(len(p["patterns"])) if j != i]
    k = max(1, round(p["ipet_fraction"] * len(others)))
    rng = np.random.default_rng([int(cfg.seed), g, i])
    chosen = sorted(rng.choice(others, size=k, replace=False).tolist())
    weights = [prev["models"][j]["weight"] for j in chosen]
    inputs = {"generation": g, "pattern": p["patterns"][i], "labellers": [prev["models"][j]["pattern"] for j in chosen],
              "scores": [hashlib.md5(prev["models"][j]["_pool"].tobytes()).hexdigest() for j in chosen],
              "weights": weights, "pool": texts_md5(pool), "scale": p["ipet_scale"], "seed": int(cfg.seed),
              "n_most_likely": p["ipet_n_most_likely"] if g == 1 else 0}
    rec = _record(path + ".json", inputs)
    if rec is not None and os.path.isfile(path + ".jsonl") and file_md5(path + ".jsonl") == rec["outputs"]["md5"]:
        _log(f"{label}: pseudo-labelled examples done, skipped ({path}.jsonl)")
        return path + ".jsonl"
    if rec is not None:
        raise StepError(f"{path}.jsonl is missing or differs from its record {path}.json")
    idx, labels = ipet_selection([prev["models"][j]["_pool"] for j in chosen], weights,
                                 [e["label"] for e in kshot_train], task.num_labels, g, p["ipet_scale"], rng,
                                 inputs["n_most_likely"])
    if not len(idx):
        raise config_lib.ConfigError(f"pet.ipet_scale={p['ipet_scale']}: generation {g} adds no example "
                                     f"(int(|T_l|·(d^g − 1)) = 0 for every label)")
    pseudo_labels.write(path + ".jsonl", [pool[j] for j in idx], task.label_names, labels=labels)
    _save_record(path + ".json", inputs, {"md5": file_md5(path + ".jsonl"), "examples": len(idx),
                                          "per_label": np.bincount(labels, minlength=task.num_labels).tolist()})
    _log(f"{label}: {len(idx)} pseudo-labelled examples from {inputs['labellers']} -> {path}.jsonl")
    return path + ".jsonl"
