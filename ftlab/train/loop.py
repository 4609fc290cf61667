"""The training loop: `train_and_evaluate(config, workdir)`, one function read top to bottom.

Sections: 1 workdir and config  2 base model, task head, delta  3 data  4 optimizer and steps
5 resume  6 the loop (train, log, eval, early stop, checkpoint)  7 results.

The workdir ends up holding: config.json (resolved), metrics.jsonl (one JSON object per logged step or
eval), tb/ (TensorBoard events), checkpoints/ (Orbax, atomic), delta/ (the exported δ), results.json;
with weight averaging (ftlab.train.averaging) also snapshots/ and delta_last_k/.

Several devices (`config.parallel`, see ftlab.parallel): θ₀, δ and the optimizer state are laid out on a
(data, fsdp, tensor) mesh and each batch is split over data × fsdp; with one device the loop runs exactly
the unsharded code path. Several processes (hosts): run the same command on every worker after
`ftlab.parallel.initialize()` (done by `ftlab train` / scripts/train.py); the workdir must be a path all
workers share. Process 0 writes the logs, config.json, results.json and the exported δ; every process takes
part in the (Orbax) checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import config as config_lib
from ftlab import deltas, parallel, tree
from ftlab.checkpoint import delta_io
from ftlab.checkpoint import train_state as ckpt
from ftlab.tasks import metrics as metrics_lib
from ftlab.train import averaging
from ftlab.train import step as step_lib

# Keys that may differ between an interrupted run and its resumption without changing the trajectory.
# Keys a resumed run may change: logging, and how the same computation is laid out or scheduled (the device
# mesh and its rules, so a checkpoint resumes on another device count; rematerialisation; accumulation).
RESUME_IGNORED_KEYS = ("train.log_every", "train.progress", "train.crash_after_checkpoint", "parallel",
                       "model.remat", "train.grad_accum", "sweep", "multitask")


class WorkdirError(RuntimeError):
    """The workdir cannot be used (not writable, full, or holds another config's run)."""


def default_config() -> config_lib.Config:
    """Every key a training config may set, with its default (configs start from this)."""
    from ftlab import optim

    return config_lib.Config(
        seed=42,
        model=config_lib.Config(
            name="minilm",          # short name (minilm, smollm2) or a local HF folder / .gguf path
            dtype="float32",        # compute dtype: float32 | bfloat16 (params stay float32)
            remat="none",           # recompute in the backward pass: none | full | dots | dots_no_batch
            attention="xla",        # xla (explicit) | cudnn (fused flash attention, GPU bf16) | jax
            pooling="default",      # sequence heads: default | pooler | cls | mean | last
            head="keep",            # keep: a head the base checkpoint carries is loaded (it must fit the task);
                                    # new: the base's head is dropped and the task head freshly initialised
                                    # (e.g. after an intermediate task, or an MLM stage's exported folder)
        ),
        task=config_lib.Config(
            name="sst2",            # see ftlab.tasks (glue tasks, conll2003, sst5, ...)
            data_dir="",            # '' = $FTLAB_DATA, else the copy shipped with ftlab (sst2 only)
            max_length=128,         # tokens after truncation
            train_subset=0,         # >0: train on this many examples drawn with subset_seed
            subset_seed=42,
            eval_subset=0,          # >0: evaluate on this many examples of eval_split drawn with subset_seed + 1
            eval_split="dev",
            kshot="",               # "<K>-<seed>" (e.g. "16-42"): LM-BFF K-shot train/dev (ftlab.tasks.kshot);
                                    # eval_split 'test' is then the task's original evaluation set
            kshot_dir="",           # '' = sample the split now (checked against the committed md5 manifest)
            # Counterfactual data augmentation of the train split (ftlab.data.counterfactual; Lu et al. 2018):
            augment="none",         # none | cda (swap gendered words and first names from a word-pair list)
            augment_mode="add",     # add: original + swapped copy (two-sided CDA) | replace: swapped copy only
            augment_pairs="",       # '' = the shipped list (ftlab/assets/cda/gender_pairs.tsv), else a path
            # Pseudo-labelled train data (ftlab.data.pseudo_labels; PET / iPET, ftlab.train.pet):
            soft_labels="",         # a JSONL of texts + soft labels: the train split, trained by distillation
                                    # (KL(soft || softmax(logits/T))·T², prompting.distillation_loss); eval as usual
            distill_temperature=2.0,  # T of that loss (PET: 2, the soft labels' temperature)
            train_extra="",         # a JSONL of texts + hard labels appended to the train split (iPET)
        ),
        # Prompt-based fine-tuning (ftlab.train.prompting): CE over label-word scores of an LM head, no new
        # head. Off while pattern and template are both ''.
        prompt=config_lib.Config(**_prompt_defaults()),
        # Language-model text (ftlab.data.text, ftlab.train.lm): the sources, packing and masking of an LM stage
        # (task.name mlm | clm: domain- or task-adaptive pre-training).
        lm=config_lib.Config(**_lm_defaults()),
        delta=config_lib.Config(method="full"),  # plus the method's own keys (ftlab/deltas/<method>.py)
        optim=config_lib.Config(**{k: v for k, v in optim.DEFAULTS.items()}),
        train=config_lib.Config(
            epochs=1.0,
            max_steps=-1,           # >0 overrides epochs
            batch_size=32,
            grad_accum=1,           # split each batch into this many microbatches (same update, less memory)
            eval_batch_size=128,
            eval_every=0,           # steps between evals; 0 = at the end of every epoch
            log_every=50,
            checkpoint_every=500,   # steps; 0 = only at the end
            keep_checkpoints=2,
            early_stopping_patience=0,  # evals without improvement before stopping; 0 = off
            pad_to_multiple_of=32,  # fewer distinct shapes = fewer compilations (each costs 10-30 s on CPU)
            bucket=False,           # length bucketing of training batches
            on_nonfinite="stop",    # stop | skip (skip the update, keep going)
            export_delta="best",    # best | final | none
            progress=True,
            crash_after_checkpoint=0,  # testing crash safety: SIGKILL this process right after that step's checkpoint
            # Weight averaging (ftlab.train.averaging; snapshot ensembles: optim.schedule=cyclic_cosine):
            ema_decay=0.0,          # EMA of δ: ema ← d·ema + (1−d)·δ after every update; 0 = off, 0.999 typical
            ema_warmup=False,       # decay min(d, (1+n)/(10+n)) at step n (TF's num_updates warmup)
            ema_eval="raw",         # raw | ema: the weights selected as best, early-stopped on and exported
            average_last_k=0,       # >0: at the end, evaluate (and save) the mean δ of the last k eval snapshots
        ),
        # Early exit (ftlab.exits): routine none | weighted (PABEE) | two_stage (DeeBERT) | alternating
        # (BERxiT); anything but none gives the model an exit after every layer.
        exit=config_lib.Config(**_exit_defaults()),
        # Embedding-perturbation regularisers (ftlab.train.regularizers, whose docstring has every formula):
        # method none | r3f | r4f | smart | freelb, plus the keys of the method; a key the method does not
        # read must stay at its default.
        reg=config_lib.Config(
            method="none",          # none | r3f | r4f (R3F + spectrally normalised head) | smart | freelb
            lam=1.0,                # λ (R3F/R4F) / λ_s (SMART): weight of the symmetric KL (regression: squared error)
            noise="normal",         # R3F/R4F noise z: normal N(0, σ²) | uniform U(-σ, σ)
            sigma=1e-5,             # σ: R3F/R4F noise scale, SMART's initial noise std
            steps=None,             # K ascent steps; None = SMART 1, FreeLB 2
            step_size=None,         # ascent step η (SMART) / α (FreeLB); None = 1e-3 / 1e-1
            eps=None,               # projection radius ε (SMART > 0; FreeLB Frobenius, 0 = none); None = 1e-5 / 0
            norm="linf",            # SMART ascent normalisation and projection: linf (paper) | l2
            mu=1.0,                 # SMART proximal weight μ on symKL(f(x; θ), f(x; EMA θ̃)); 0 = off, no EMA state
            beta=0.99,              # SMART EMA rate: θ̃ <- β θ̃ + (1 - β) θ after every update
            init_mag=0.1,           # FreeLB ε0: δ_0 ~ U(-1, 1) ε0 / sqrt(L·D) on the L real tokens
            head_kernels=r"head/(?:classifier|out_proj|score)/kernel",  # R4F: the spectrally normalised kernels
            shared_dropout=False,   # extra forwards reuse the clean forward's dropout mask (False: as the references)
        ),
        # Device mesh (data, fsdp, tensor; one size may be -1 = the devices left over) and extra
        # (regex, PartitionSpec) sharding rules; see ftlab.parallel. Default: pure data parallelism.
        parallel=config_lib.Config(**parallel.DEFAULTS),
        # Seed sweeps (`ftlab sweep`, ftlab.train.sweep): seeds, mode vmap (one program) | sequential,
        # stop_fraction/keep (after that fraction of the steps only the `keep` best seeds go on). A single
        # `ftlab train` run ignores this section.
        sweep=config_lib.Config(**_sweep_defaults()),
        # Staged runs (ftlab.train.stages): a list of {'name', 'dotted.key': value, ...} (overrides of this config)
        # run in order by `ftlab train`, each stage starting from the previous one's merged weights.
        stages=(),
        # Multi-task training (`ftlab multitask`, ftlab.train.multitask, whose docstring has the rules): tasks
        # (one head each on the shared backbone), sampling proportional | temperature | equal (each step's
        # sub-batch sizes), temperature (T, sampling=temperature only), weights (loss weight per task; () =
        # each example weighs the same), train_subset (per task; () = task.train_subset), width fixed | dynamic
        # (padding of each task's batches), single_task (workdirs to compare with), base_head. `ftlab train`
        # refuses a config that names tasks here.
        multitask=config_lib.Config(**_multitask_defaults()),
        # PET / iPET (scripts/pet.py, ftlab.train.pet, whose docstring has the procedure): patterns (one prompt-based
        # run each), the unlabeled pool, ensemble weights, temperature, the distillation run's overrides, iPET
        # generations. `ftlab train` refuses a config that names patterns here.
        pet=config_lib.Config(**_pet_defaults()),
    )


def _prompt_defaults() -> dict[str, Any]:
    from ftlab.train import prompting

    return dict(prompting.DEFAULTS)


def _prompt(cfg: config_lib.Config, task, base_config) -> dict[str, Any] | None:
    """The resolved prompt settings, or None (also for runs saved before prompts existed)."""
    from ftlab.models import family
    from ftlab.train import prompting

    return prompting.resolve(cfg.get("prompt"), task, family(base_config))


def eval_scores(cfg: config_lib.Config, task, base_config):
    """The eval step's `scores` hook for this config: label-word scores of a prompt-based run, else None."""
    if _prompt(cfg, task, base_config) is None:
        return None
    from ftlab.train import prompting

    return prompting.make_scores(task.num_labels)


def _lm_defaults() -> dict[str, Any]:
    from ftlab.train import lm

    return dict(lm.DEFAULTS)


def lm_transform(cfg: config_lib.Config, task, base):
    """The masked-LM step's masking transform for an mlm stage, else None."""
    if task.kind != "masked_lm":
        return None
    from ftlab.train import lm

    return lm.make_mlm_transform(dict(cfg.lm), base.tokenizer, base.config.vocab_size)


def _pet_defaults() -> dict[str, Any]:
    from ftlab.train import pet

    return dict(pet.DEFAULTS)


def distill_temperature(cfg: config_lib.Config, task) -> float | None:
    """T of the distillation loss when the train split is soft-labelled (task.soft_labels), else None.
    ConfigError naming the key for a setting that cannot go with it."""
    if not cfg.task.get("soft_labels", ""):  # runs saved before soft labels existed have no such key
        return None
    t = float(cfg.task.get("distill_temperature", 2.0))
    refused = []
    if task.kind != "classification":
        refused.append(f"task {task.name!r} ({task.kind}; soft labels are class distributions)")
    if cfg.get("prompt") and (cfg.prompt.get("pattern") or cfg.prompt.get("template")):
        refused.append("prompt-based training (the distilled model is an ordinary classifier)")
    if _exit_routine(cfg) != "none":
        refused.append(f"exit.routine={cfg.exit.routine!r}")
    if cfg.task.get("augment", "none") != "none":
        refused.append(f"task.augment={cfg.task.augment!r}")
    if cfg.task.get("train_extra", ""):
        refused.append("task.train_extra (hard labels in a soft-labelled train split)")
    if refused:
        raise config_lib.ConfigError(f"task.soft_labels={cfg.task.soft_labels!r} cannot go with " + "; ".join(refused))
    if not (t > 0 and math.isfinite(t)):
        raise config_lib.ConfigError(f"task.distill_temperature={t}: must be a positive number")
    return t


def _exit_defaults() -> dict[str, Any]:
    from ftlab import exits

    return dict(exits.DEFAULTS)


def _sweep_defaults() -> dict[str, Any]:
    from ftlab.train import sweep

    return dict(sweep.DEFAULTS)


def _multitask_defaults() -> dict[str, Any]:
    from ftlab.train import multitask

    return dict(multitask.DEFAULTS)


def _exit_routine(cfg: config_lib.Config) -> str:
    return cfg.get("exit", {}).get("routine", "none")  # runs saved before early exit existed have no `exit`


# --------------------------------------------------------------------------------------------------------
TASK_HEADS = {"classification": "sequence_classification", "regression": "sequence_classification",
              "tagging": "token_classification", "masked_lm": "masked_lm", "causal_lm": "causal_lm"}


def prepare(cfg: config_lib.Config, head: str | None = None) -> dict[str, Any]:
    """Base model, task, head and initial params: what training, evaluation and export share.

    `head` overrides the head the task implies (e.g. 'causal_lm' for the language-model benchmark)."""
    from ftlab.checkpoint import load_base
    from ftlab.models import build_model, family, init_params
    from ftlab.tasks import get_task

    task = get_task(cfg.task.name)
    base = load_base(cfg.model.name)
    model_config = base.config
    overrides = {k: cfg.model[k] for k in ("dtype", "remat", "attention") if hasattr(model_config, k)}
    if overrides:
        import dataclasses

        model_config = dataclasses.replace(model_config, **overrides)
    if head is None and _exit_routine(cfg) != "none":
        head = "early_exit"
    if head is None and _prompt(cfg, task, base.config) is not None:  # prompt-based: the LM head, no new head
        head = _prompt(cfg, task, base.config)["head"]
    head = head or TASK_HEADS[task.kind]
    if family(base.config) == "t5" and head != "seq2seq_lm":  # an encoder–decoder has its LM head only
        raise config_lib.ConfigError(
            f"model.name={cfg.model.name!r} is a T5 encoder–decoder: ftlab has no {head} head for it (task "
            f"{task.name!r}, {task.kind}); T5 trains text-to-text only: set prompt.pattern (or prompt.template and "
            "prompt.verbalizer) of a classification task for the seq2seq scorer (docs/prompts.md)")
    model = build_model(model_config, head=head, num_labels=task.num_labels, pooling=cfg.model.pooling)
    example = jnp.ones((1, 8), jnp.int32)
    base_params = base.params
    head_rule = cfg.model.get("head", "keep")
    if head_rule not in ("keep", "new"):
        raise config_lib.ConfigError(f"model.head={head_rule!r}: choose keep or new")
    if head_rule == "new":
        base_params = {k: v for k, v in base_params.items() if k != "head"}
    try:
        params, fresh = init_params(model, jax.random.fold_in(jax.random.key(cfg.seed), 1), base_params, example)
    except ValueError as e:
        if "head/" not in str(e):
            raise
        raise ValueError(f"{cfg.model.name}: its head does not fit this task's ({e}); "
                         "set model.head=new to start a fresh head") from None
    return {"task": task, "base": base, "model": model, "params": params, "fresh_paths": list(fresh)}


def _load_lm_split(cfg, task, tokenizer, split: str):
    """An LM stage's split: documents of the `lm` section's sources, packed (ftlab.data.text).

    Evaluation text: the last `lm.heldout` documents of `lm.eval` (or of `lm.train` when eval is '' or the
    same source; they are then excluded from training; heldout 0 = all of lm.eval)."""
    from ftlab.data import text
    from ftlab.train import lm as lm_lib

    lm = lm_lib.check_config(dict(cfg.lm))
    data_dir = cfg.task.data_dir or None
    read = lambda src, n=0: text.read_documents(src, data_dir, lm["field"], n, cfg.task.subset_seed)  # noqa: E731
    same = lm["eval"] in ("", lm["train"])
    if split == "train":
        if same:
            docs = text.split_heldout(read(lm["train"]), lm["heldout"])[0]
            docs = docs[:lm["max_documents"]] if lm["max_documents"] else docs
        else:
            docs = read(lm["train"], lm["max_documents"])
    else:
        docs = read(lm["train"] if same else lm["eval"])
        if same or lm["heldout"]:
            docs = text.split_heldout(docs, lm["heldout"])[1] if same else docs[-lm["heldout"]:]
    objective = "mlm" if task.kind == "masked_lm" else "clm"
    return docs, text.pack(docs, tokenizer, lm["block_size"], objective)


def _load_split(cfg, task, tokenizer, split: str, subset: int = 0, model_config=None):
    from ftlab.tasks import LM_KINDS, resolve_data_dir

    if task.kind in LM_KINDS:
        if split == "train" and cfg.task.get("augment", "none") != "none":  # not silently ignored
            raise config_lib.ConfigError(f"task.augment={cfg.task.augment!r}: counterfactual augmentation applies "
                                         f"to labelled examples; LM text (task {task.name!r}) is not augmented")
        return _load_lm_split(cfg, task, tokenizer, split)

    data_dir = resolve_data_dir(task.name, cfg.task.data_dir or None)
    if split == "train" and distill_temperature(cfg, task) is not None:  # soft-labelled train split (PET)
        from ftlab.data import pseudo_labels

        examples = pseudo_labels.read(cfg.task.soft_labels, task.label_names, task.reads_pairs, "soft")
    elif cfg.task.get("kshot"):
        from ftlab.tasks import kshot

        examples = kshot.read(task, split, data_dir, cfg.task.kshot, cfg.task.get("kshot_dir", ""))
    else:
        examples = task.read(split, data_dir)
    if subset and subset < len(examples):  # eval subsets are drawn with the next seed (disjoint draws of one file)
        seed = cfg.task.subset_seed + (split != "train")
        idx = np.random.default_rng(seed).permutation(len(examples))[:subset]
        examples = [examples[i] for i in sorted(idx)]
    if split == "train" and cfg.task.get("train_extra", ""):  # pseudo-labelled examples (iPET), all of them
        from ftlab.data import pseudo_labels

        examples = examples + pseudo_labels.read(cfg.task.train_extra, task.label_names, task.reads_pairs, "hard")
    if split == "train":  # after the subset is drawn, so a subset's examples are the same with and without
        examples = _augment(cfg, examples)
    return encode_examples(cfg, task, tokenizer, examples, split, model_config)


def encode_examples(cfg, task, tokenizer, examples: list, split: str, model_config=None) -> tuple[list, Any]:
    """(examples, encoded): `examples` of `split` encoded as this config's run encodes them: prompt rows (with
    LM-BFF demonstrations from the train split, which then come back added to the examples; the seq2seq scorer:
    encoder rows + label-word decoder rows, `ftlab.prompts.encode_seq2seq`) for a prompt-based run, else
    `ftlab.data.tokenize.encode`. Another split name than train (e.g. PET's unlabeled pool) is encoded as an
    evaluation split is."""
    from ftlab.data.tokenize import encode

    max_pos = getattr(model_config, "max_position_embeddings", None) if model_config is not None else None
    prompt = _prompt(cfg, task, model_config) if model_config is not None else None
    if prompt is not None:
        from ftlab.prompts import encode_prompts

        if jax.process_count() > 1:  # choice_row indexes one process's rows; offsets per host are not done yet
            raise NotImplementedError("prompt-based training runs in one process (several devices in it: untested)")

        if max_pos is not None and cfg.task.max_length > max_pos:
            raise ValueError(f"max_length={cfg.task.max_length} exceeds the model's {max_pos} positions")
        if prompt["scorer"] == "seq2seq":  # T5: encoder rows + one decoder row per label word (no demonstrations)
            from ftlab.prompts import encode_seq2seq

            return examples, encode_seq2seq(examples, tokenizer, prompt["template"], prompt["verbalizer"],
                                            task.label_names, cfg.task.max_length,
                                            model_config.decoder_start_token_id, model_config.eos_token_id,
                                            prompt["score_suffix"], prompt["slot_text"])
        template, variants = prompt["template"], 1
        if prompt["demos"] != "none":  # LM-BFF demonstrations from the train split (one set per train input)
            from ftlab.train import prompting

            pool = examples if split == "train" else _load_split(
                cfg, task, tokenizer, "train", cfg.task.train_subset)[0]
            variants = 1 if split == "train" else prompt["demo_sets"]
            examples, template = prompting.add_demonstrations(examples, pool, prompt, task.label_names,
                                                              cfg.seed, split == "train", variants)
        return examples, encode_prompts(examples, tokenizer, template, prompt["verbalizer"],
                                        task.label_names, cfg.task.max_length, prompt["scorer"],
                                        prompt["score_suffix"], variants)
    return examples, encode(examples, tokenizer, task, cfg.task.max_length, model_max_positions=max_pos)


def _augment(cfg, examples: list) -> list:
    """The train examples with counterfactual augmentation applied (config task.augment*; off in configs saved
    before it existed)."""
    from ftlab.data import counterfactual

    augment, mode, pairs = counterfactual.check_config(cfg.task)
    if augment == "none":
        return examples
    out, n = counterfactual.augment(examples, mode, counterfactual.load_pairs(pairs))
    if jax.process_index() == 0:
        print(f"[ftlab] counterfactual augmentation ({augment}, {mode}): {n:,} of {len(examples):,} train examples "
              f"hold a listed word -> {len(out):,} train examples", file=sys.stderr)
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-probe-{jax.process_index()}")  # workers may share the workdir
        with open(probe, "w") as f:
            f.write("x")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable: {e.strerror}") from None
    free = shutil.disk_usage(workdir).free
    if free < 512 * 2**20:
        raise WorkdirError(f"workdir {workdir}: only {free / 2**20:.0f} MiB free on its disk; "
                           "checkpoints need more (at least 512 MiB)")


class _Logger:
    """metrics.jsonl + TensorBoard; only process 0 writes."""

    def __init__(self, workdir: str, resume_step: int | None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        if resume_step is None:
            open(self.path, "w").close()
        else:  # drop what was logged after the checkpoint we resume from: it will be logged again
            kept = []
            if os.path.exists(self.path):
                with open(self.path) as f:
                    kept = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tb"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self.tb = None

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self):
        if self.enabled and self.tb is not None:
            self.tb.close()


def selectable(delta_mod, delta_cfg, step: int, total_steps: int) -> bool:
    """Whether an evaluation at `step` may become a run's best δ: a delta whose evaluated form depends on the
    schedule (soft movement's mask) says so through its module's `selectable`; any other delta always may. The
    single-run loop, seed sweeps and multi-task runs all ask this."""
    return not hasattr(delta_mod, "selectable") or delta_mod.selectable(delta_cfg, step, total_steps)


def evaluate(eval_step, state: dict, base, task, enc, batch_size: int, pad_id: int, pad_multiple: int,
             mesh=None) -> dict:
    """Metrics of the current δ on an encoded split (padded final batch; padding rows masked out).

    `mesh`: the eval step is sharded (`make_eval_step(..., shardings=...)`) and each batch is split over
    the mesh. Every process then collates the whole batch and puts only its own rows on its devices: the
    step's outputs are the global rows in order, which is the order of this whole batch's example mask and
    labels on every process (a per-process slice would not line up with them)."""
    from ftlab.data.batching import batches

    preds: list = []
    loss_sum = weight = 0.0
    for batch in batches(enc, batch_size, shuffle=False, seed=0, epoch=0, pad_id=pad_id,
                         pad_to_multiple_of=pad_multiple, drop_remainder=False, pad_final=True):
        feed = batch if mesh is None else parallel.global_batch(batch, mesh, whole=True)
        out = jax.device_get(eval_step(state["train"], state["fixed"], base, feed))
        loss_sum += float(out["loss_sum"])
        weight += float(out["weight"])
        preds.extend(kept_predictions(task, out["pred"], batch))
    return split_metrics(task, enc, preds, loss_sum, weight)


def kept_predictions(task, pred: np.ndarray, batch: dict) -> list:
    """The predictions of a batch's real rows (padding rows dropped; tagging: the labelled tokens only)."""
    keep = batch["example_mask"] > 0
    if task.kind in ("masked_lm", "causal_lm"):  # LM metrics come from the loss alone
        return []
    if task.kind == "tagging":
        return [p[lab != -100].tolist() for p, lab in zip(pred[keep], batch["labels"][keep])]
    return pred[keep].tolist()


def split_metrics(task, enc, preds: list, loss_sum: float, weight: float) -> dict:
    """The task's metrics of `preds` (one per example of `enc`, in order) plus the mean eval loss."""
    from ftlab.tasks import metrics as metrics_lib

    if task.kind in ("masked_lm", "causal_lm"):
        from ftlab.train import lm

        return lm.lm_metrics(loss_sum, weight)
    if task.kind == "tagging":
        refs = [np.asarray(lab)[np.asarray(lab) != -100].tolist() for lab in enc.labels]
    else:
        refs = [lab.item() if hasattr(lab, "item") else lab for lab in enc.labels]
    result = metrics_lib.compute(task, preds, refs)
    result["loss"] = loss_sum / max(weight, 1.0)
    return result


def init_delta(cfg: config_lib.Config, prep: dict[str, Any]) -> dict[str, Any]:
    """The config's δ on prep's θ₀: {'method', 'delta_mod', 'delta_cfg', 'delta', 'train', 'fixed' (δ split
    into trainable and fixed leaves), 'model' (prep's model, or the one a structural δ turns it into), 'task'}."""
    params, base, model = prep["params"], prep["base"], prep["model"]
    delta_cfg = dict(cfg.delta)
    method = delta_cfg.pop("method")
    delta_mod = deltas.get(method)
    delta_cfg = deltas.check_config(delta_mod, delta_cfg)
    if hasattr(delta_mod, "config_from_model"):  # keys the model's config fills in (structured pruning's heads)
        delta_cfg = delta_mod.config_from_model(delta_cfg, model.config)
    rng = jax.random.key(cfg.seed)
    if delta_cfg.get("init_from"):  # staged methods start from a saved δ: it must belong to this base
        with open(os.path.join(delta_cfg["init_from"], "delta.json")) as f:
            stage_hash = json.load(f).get("base_hash")
        if stage_hash != base.hash:
            raise delta_io.DeltaError(f"{delta_cfg['init_from']}: δ trained on base hash {stage_hash}, "
                                      f"this run's base has hash {base.hash}")
    delta = delta_mod.init(jax.random.fold_in(rng, 2), params, delta_cfg)
    if hasattr(delta_mod, "model_config_after"):  # structural deltas (layer removal) change the model
        from ftlab.models import build_model

        m = model
        model = build_model(delta_mod.model_config_after(m.config, delta_cfg), head=m.head,
                            num_labels=m.num_labels, pooling=m.pooling)
    missing_fresh = [p for p in prep["fresh_paths"] if p not in tree.flatten(delta)]
    if missing_fresh and method != "full":
        raise ValueError(f"freshly initialised parameters {missing_fresh[:5]} are not part of δ "
                         f"(method {method}): they would be lost when δ is saved alone")
    train_params, fixed_params = tree.split(delta, delta_mod.trainable(delta))
    return {"method": method, "delta_mod": delta_mod, "delta_cfg": delta_cfg, "delta": delta,
            "train": train_params, "fixed": fixed_params, "model": model, "task": prep["task"]}


def init_training(cfg: config_lib.Config, params: Any, d: dict[str, Any], total_steps: int,
                  kind: str, mesh=None, jit: bool = True, transform=None) -> dict[str, Any]:
    """Optimizer, initial (donated) train state and jitted steps for δ `d` (from `init_delta`) on θ₀ `params`:
    {'state', 'train_step', 'eval_step', 'lr_schedule', 'shardings'}. `kind`: the loss (a task kind, or
    'causal_lm'). `mesh` with more than one device: the state comes back laid out on it, the steps are jitted
    with `shardings` ({'state', 'base', 'batch'} from `parallel.train_shardings`; θ₀ is the caller's to lay
    out with `shardings['base']`); otherwise `shardings` is None and everything is as on one device.
    `jit=False`: the steps are the plain functions (a seed sweep vmaps them, ftlab.train.sweep).
    `transform`: the batch rewrite of both steps (an mlm stage's masking, `lm_transform`)."""
    from ftlab import optim
    from ftlab.deltas.subset import num_layers
    from ftlab.models import family

    delta_mod, delta, train_params, fixed_params = d["delta_mod"], d["delta"], d["train"], d["fixed"]
    rng = jax.random.key(cfg.seed)
    averaging.check_config(cfg.train)
    ema_decay, ema_warmup = cfg.train.get("ema_decay", 0.0), cfg.train.get("ema_warmup", False)
    two_stacks = family(d["model"].config) == "t5"  # encoder and decoder: no single layer count
    if two_stacks and cfg.optim.get("llrd", 1.0) != 1.0:
        raise config_lib.ConfigError(f"optim.llrd={cfg.optim.llrd}: layer-wise lr decay needs one layer stack; a T5 "
                                     "model has an encoder and a decoder")
    n_layers = None if two_stacks else num_layers(delta_mod.apply(params, delta)["params"])
    tx, lr_schedule = optim.build(dict(cfg.optim), train_params, total_steps, n_layers)
    loss = None  # the task's own loss
    if _exit_routine(cfg) != "none":
        from ftlab import exits

        loss = exits.make_loss(cfg.exit, kind, total_steps)
        tx = exits.freeze_in_stage2(tx, train_params, cfg.exit, total_steps)
    scores = None
    prompt = _prompt(cfg, d["task"], d["model"].config) if "task" in d else None
    if prompt is not None:  # prompt-based: CE over the label words' scores; eval predicts their argmax
        from ftlab.train import prompting

        loss = prompting.make_loss(d["task"].num_labels)
        scores = prompting.make_scores(d["task"].num_labels)
    temperature = distill_temperature(cfg, d["task"]) if d.get("task") is not None else None
    if temperature is not None:  # soft-labelled train split (PET's final classifier): KL to the soft labels · T²
        from ftlab.train import prompting

        loss = lambda logits, batch, step: prompting.distillation_loss(logits, batch, temperature)  # noqa: E731
    state = {
        "step": jnp.zeros([], jnp.int32),
        "train": train_params,
        "fixed": fixed_params,
        "opt_state": tx.init(train_params),
        "rng": jax.random.key_data(jax.random.fold_in(rng, 3)),  # raw uint32 key data: Orbax saves it
    }
    if ema_decay:  # the EMA of δ's trainable leaves rides in the donated state (so Orbax checkpoints it)
        state["ema"] = averaging.init_ema(train_params)
    if cfg.train.grad_accum < 1 or cfg.train.batch_size % cfg.train.grad_accum:
        raise config_lib.ConfigError(
            f"train.grad_accum={cfg.train.grad_accum} must be >= 1 and divide train.batch_size={cfg.train.batch_size}")
    reg = cfg.get("reg")  # runs saved before the regularisers existed have no `reg`
    if reg is not None and two_stacks and reg.get("method", "none") != "none":  # T5 reads no input-noise site
        raise config_lib.ConfigError(f"reg.method={reg.method!r}: the embedding-perturbation regularisers are not "
                                     "implemented for T5 (its model has no input-noise site)")
    if reg is not None:
        from ftlab.train import regularizers

        reg = regularizers.check_training(reg, cfg.train.grad_accum, _exit_routine(cfg))
        state.update({"reg": s} if (s := regularizers.init_state(reg, train_params)) else {})  # SMART's EMA
    sh = None
    if mesh is not None and mesh.size > 1:
        sh = parallel.train_shardings(mesh, state, params, cfg.parallel.rules)
        if "ema" in state:  # laid out as the leaves it averages
            sh["state"]["ema"] = sh["state"]["train"]
        state = parallel.shard(state, sh["state"])
    train_step = step_lib.make_train_step(d["model"], delta_mod, tx, kind, cfg.train.on_nonfinite, shardings=sh,
                                          accum_steps=cfg.train.grad_accum, total_steps=total_steps,
                                          loss=loss, ema_decay=ema_decay, ema_warmup=ema_warmup, reg=reg,
                                          jit=jit, transform=transform)
    eval_step = step_lib.make_eval_step(d["model"], delta_mod, kind, shardings=sh, jit=jit, scores=scores,
                                        transform=transform)
    return {"state": state, "train_step": train_step, "eval_step": eval_step, "lr_schedule": lr_schedule,
            "shardings": sh}


# --------------------------------------------------------------------------------------------------------
def train_and_evaluate(cfg: config_lib.Config, workdir: str) -> dict[str, Any]:
    t_start = time.time()
    tc = cfg.train

    # 1. Workdir, config and device mesh -------------------------------------------------------------------
    mesh = parallel.make_mesh(cfg.parallel)  # all devices of all processes; with one device: unsharded steps
    _check_batch_sizes(tc, mesh)
    _check_workdir(workdir)
    fingerprint = config_lib.fingerprint(cfg, ignore=RESUME_IGNORED_KEYS)
    mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    resume_step = ckpt.latest(mngr)
    cfg_path = os.path.join(workdir, "config.json")
    if resume_step is not None and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = with_defaults(json.load(f))
        if config_lib.fingerprint(old, ignore=RESUME_IGNORED_KEYS) != fingerprint:
            diff = _config_diff(old, cfg.to_dict())
            raise WorkdirError(
                f"{workdir} holds a checkpoint (step {resume_step}) of a different config; refusing to resume. "
                f"Differences: {diff}. Use a new --workdir or delete {os.path.join(workdir, 'checkpoints')}.")
    if jax.process_index() == 0:
        with open(cfg_path + ".tmp", "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
        os.replace(cfg_path + ".tmp", cfg_path)

    # 2. Base model, task head, delta ---------------------------------------------------------------------
    prep = prepare(cfg)
    task, base, params = prep["task"], prep["base"], prep["params"]
    d = init_delta(cfg, prep)
    method, delta_mod, delta_cfg, train_params = d["method"], d["delta_mod"], d["delta_cfg"], d["train"]
    n_train = tree.count(train_params)
    n_total = tree.count(params)

    # 3. Data -----------------------------------------------------------------------------------------------
    from ftlab.data.batching import batches, num_batches

    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _, train_enc = _load_split(cfg, task, tokenizer, "train", cfg.task.train_subset, base.config)
    _, eval_enc = _load_split(cfg, task, tokenizer, cfg.task.eval_split, cfg.task.get("eval_subset", 0),
                              base.config)
    steps_per_epoch = num_batches(len(train_enc), tc.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"train set has {len(train_enc)} examples, fewer than one batch of {tc.batch_size}")
    total_steps = tc.max_steps if tc.max_steps > 0 else int(math.ceil(tc.epochs * steps_per_epoch))
    eval_every = tc.eval_every or steps_per_epoch

    # 4. Optimizer and steps (on the mesh: state, θ₀ and each batch laid out by `sh`) ------------------------
    t = init_training(cfg, params, d, total_steps, task.kind, mesh, transform=lm_transform(cfg, task, base))
    state, train_step, eval_step, lr_schedule = t["state"], t["train_step"], t["eval_step"], t["lr_schedule"]
    sh = t["shardings"]
    base_params = params  # θ₀ (with the fresh head's initial values); never donated, never updated
    if sh is not None:
        base_params = parallel.shard(params, sh["base"])
        if jax.process_index() == 0:
            print("[ftlab] " + parallel.describe(params, mesh, cfg.parallel.rules, d["delta"]), file=sys.stderr)
    # This process's slice of a train batch -> the global batch (split over data × fsdp).
    feed = (lambda b: parallel.global_batch(b, mesh)) if sh is not None else (lambda b: b)

    # 5. Resume ---------------------------------------------------------------------------------------------
    meta = {"best_score": None, "best_step": None, "bad_evals": 0, "best_metrics": None}
    if resume_step is not None:
        state, meta = ckpt.restore(mngr, resume_step, state)
        print(f"[ftlab] resumed from {workdir}/checkpoints/{resume_step}", file=sys.stderr)
    start_step = int(state["step"])
    ema_eval = tc.get("ema_eval", "raw")  # the weights that are selected, early-stopped on and exported
    avg_k = tc.get("average_last_k", 0)
    cycle_ends = (set(averaging.cycle_end_steps(total_steps, cfg.optim.cycles))
                  if averaging.snapshot_ensemble_on(cfg.optim) else set())
    if jax.process_index() == 0:  # snapshots after the resumed checkpoint are redone (identically)
        for kind in ("last_k", "cycles"):
            averaging.discard_snapshots(averaging.snapshot_dir(workdir, kind), resume_step)
    best_delta = None
    if meta.get("best_step") is not None and os.path.isdir(os.path.join(workdir, "best_delta")):
        _, _, best_delta = delta_io.load(os.path.join(workdir, "best_delta"), params, base.hash)

    logger = _Logger(workdir, resume_step)
    if jax.process_index() == 0 and resume_step is None:
        print(f"[ftlab] task {task.name} ({task.kind}), model {cfg.model.name}, delta {method}: "
              f"{n_train:,} trainable of {n_total:,} parameters ({100 * n_train / n_total:.3f}%); "
              f"{len(train_enc):,} train / {len(eval_enc):,} {cfg.task.eval_split} examples; "
              f"{total_steps} steps", file=sys.stderr)

    # 6. The loop -------------------------------------------------------------------------------------------
    progress = _progress(total_steps, start_step, tc.progress)
    step = start_step
    stopped_early = False
    window_rates: list[float] = []  # steps/s per log window (the host syncs at each log step)
    t_window = time.perf_counter()
    last_eval: dict | None = None
    evals: dict[str, dict] = {}  # the latest eval of δ ('raw') and of its EMA ('ema')
    window: list = []
    epoch = step // steps_per_epoch
    while step < total_steps and not stopped_early:
        it = batches(train_enc, tc.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, pad_id=pad_id,
                     pad_to_multiple_of=tc.pad_to_multiple_of, bucket=tc.bucket, drop_remainder=True,
                     pad_final=False, process_index=jax.process_index(), process_count=jax.process_count())
        for i, batch in enumerate(it):
            if epoch * steps_per_epoch + i < step:  # resuming inside this epoch: skip what was trained
                continue
            if step >= total_steps:
                break
            state, m = train_step(state, base_params, feed(batch))
            window.append(m)
            step += 1
            if step in cycle_ends and jax.process_index() == 0:  # snapshot ensemble member (cycle's end)
                averaging.save_snapshot(averaging.snapshot_dir(workdir, "cycles"), step,
                                        parallel.to_host(state["train"]))
            if step % tc.log_every == 0 or step == total_steps:
                host = jax.device_get(window)  # waits for the window's steps: dispatch is asynchronous
                window = []
                window_rates.append(len(host) / (time.perf_counter() - t_window))
                if not all(bool(x["finite"]) for x in host) and tc.on_nonfinite == "stop":
                    raise FloatingPointError(f"non-finite loss or gradient at or before step {step}; "
                                             "lower the learning rate or set train.on_nonfinite=skip")
                values = {"loss": float(np.mean([x["loss"] for x in host])),
                          "grad_norm": float(np.mean([x["grad_norm"] for x in host])),
                          "lr": float(lr_schedule(step - 1)), "epoch": step / steps_per_epoch}
                for k in ("penalty", "reg"):  # a delta's penalty, a regulariser's divergence
                    if k in host[0]:
                        values[k] = float(np.mean([x[k] for x in host]))
                logger.log(step, "train", values)
                progress.set_postfix(loss=f"{values['loss']:.4f}")
            progress.update(1)

            if step % eval_every == 0 or step == total_steps:
                evals = {"raw": evaluate(eval_step, state, base_params, task, eval_enc, tc.eval_batch_size, pad_id,
                                         tc.pad_to_multiple_of, mesh if sh is not None else None)}
                logger.log(step, "eval", evals["raw"])
                if "ema" in state:  # the EMA of δ, evaluated and logged beside it
                    evals["ema"] = evaluate(eval_step, averaging.eval_state(state, "ema"), base_params, task,
                                            eval_enc, tc.eval_batch_size, pad_id, tc.pad_to_multiple_of,
                                            mesh if sh is not None else None)
                    logger.log(step, "eval_ema", evals["ema"])
                    for w in evals:
                        meta[f"{w}_best"] = averaging.update_best(meta.get(f"{w}_best"), step, evals[w],
                                                                  task.main_metric)
                if avg_k and jax.process_index() == 0:
                    averaging.save_snapshot(averaging.snapshot_dir(workdir, "last_k"), step,
                                            parallel.to_host(state["train"]), keep=avg_k)
                last_eval = evals[ema_eval]
                score = last_eval[task.main_metric]
                # a δ whose evaluated form depends on the schedule (soft movement's mask) may be selected only
                # once that form is final; earlier evals are logged and neither improve nor count as bad evals
                eligible = selectable(delta_mod, delta_cfg, step, total_steps)
                if eligible and metrics_lib.improved(task.main_metric, score, meta["best_score"]):
                    meta.update(best_score=score, best_step=step, bad_evals=0, best_metrics=last_eval)
                    best_delta = parallel.to_host(tree.merge(averaging.eval_state(state, ema_eval)["train"],
                                                             state["fixed"]))  # all processes
                    if tc.export_delta == "best" and jax.process_index() == 0:
                        delta_io.save(os.path.join(workdir, "best_delta"), method, delta_cfg, best_delta,
                                      base.source, base.hash, {"step": step})
                elif eligible:
                    meta["bad_evals"] += 1
                if jax.process_index() == 0:
                    progress.write(f"[ftlab] step {step}: {cfg.task.eval_split} "
                                   + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
                if tc.early_stopping_patience and meta["bad_evals"] >= tc.early_stopping_patience:
                    if jax.process_index() == 0:
                        progress.write(f"[ftlab] early stopping: no improvement of {task.main_metric} in "
                                       f"{meta['bad_evals']} evals")
                    stopped_early = True
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total_steps or stopped_early:
                # every process takes part: each writes the shards it holds
                ckpt.save(mngr, step, state, {**meta, "fingerprint": fingerprint})
                if tc.crash_after_checkpoint == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            if stopped_early:
                break
            if step % tc.log_every == 0:  # restart the throughput window after logging, eval and checkpoint
                t_window = time.perf_counter()
        epoch += 1
    progress.close()
    logger.close()

    # 7. Results --------------------------------------------------------------------------------------------
    final_delta = parallel.to_host(tree.merge(averaging.eval_state(state, ema_eval)["train"],
                                              state["fixed"]))  # gathered on every process
    export = best_delta if (tc.export_delta == "best" and best_delta is not None) else final_delta
    delta_meta = {}
    if tc.export_delta != "none" and jax.process_index() == 0:
        delta_meta = delta_io.save(os.path.join(workdir, "delta"), method, delta_cfg, export, base.source,
                                   base.hash, {"step": meta["best_step"] if tc.export_delta == "best" else step,
                                               "task": task.name})
    results = {
        "config": cfg.to_dict(),
        "task": task.name,
        "method": method,
        "model": cfg.model.name,
        "base_hash": base.hash,
        "metrics": last_eval,
        "best_metrics": meta["best_metrics"],
        "best_step": meta["best_step"],
        "main_metric": task.main_metric,
        "trainable_params": n_train,
        "total_params": n_total,
        "trainable_fraction": n_train / n_total,
        "delta_bytes": delta_meta.get("array_bytes", tree.nbytes(delta_mod.to_disk(export))),
        "delta_file_bytes": delta_meta.get("file_bytes"),
        "train_steps": step,
        "train_examples": len(train_enc),
        # Median over log windows: robust to the compilations that each new padded shape triggers and
        # excludes eval and checkpoint time.
        "steps_per_second": float(np.median(window_rates)) if window_rates else None,
        "peak_rss_mb": _peak_rss_mb(),
        "seed": cfg.seed,
        "stopped_early": stopped_early,
        "wall_seconds": time.time() - t_start,
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }
    if "ema" in state or avg_k or cycle_ends:
        results["averaging"] = _averaging_results(cfg, workdir, state, meta, evals, d, task, sh, base_params,
                                                  eval_enc, pad_id, eval_step, mesh, base)
    if hasattr(delta_mod, "stats"):  # a method's own summary of the exported δ (e.g. pruning's density)
        results["delta_stats"] = delta_mod.stats(params, export)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
            json.dump(results, f, indent=2, default=float)
        os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
    return results


def _averaging_results(cfg, workdir, state, meta, evals, d, task, sh, base_params, eval_enc, pad_id, eval_step,
                       mesh, base) -> dict[str, Any]:
    """results.json's 'averaging': the EMA's and δ's best/final evals, the last-k average's metrics (and
    its δ in delta_last_k/), the snapshot ensemble's and its members' metrics (ftlab.train.averaging)."""
    tc = cfg.train
    ev = lambda step_fn, train: evaluate(step_fn, {"train": train, "fixed": state["fixed"]},  # noqa: E731
                                         base_params, task, eval_enc, tc.eval_batch_size, pad_id,
                                         tc.pad_to_multiple_of, mesh if sh is not None else None)
    # snapshots go to the devices once (laid out as δ's trainable leaves), not once per eval batch
    put = lambda t: jax.device_put(t, sh["state"]["train"]) if sh is not None else jax.device_put(t)  # noqa: E731
    out: dict[str, Any] = {}
    if "ema" in state:
        out["ema"] = {"decay": tc.ema_decay, "warmup": tc.ema_warmup, "selected": tc.ema_eval,
                      "raw_metrics": evals.get("raw"), "ema_metrics": evals.get("ema"),
                      "raw_best": meta.get("raw_best"), "ema_best": meta.get("ema_best")}
    if tc.get("average_last_k", 0):
        snaps = averaging.list_snapshots(averaging.snapshot_dir(workdir, "last_k"))[-tc.average_last_k:]
        mean = averaging.mean_tree([averaging.load_snapshot(p) for _, p in snaps])
        out["last_k"] = {"k": tc.average_last_k, "steps": [s for s, _ in snaps],
                         "metrics": ev(eval_step, put(mean))}
        if jax.process_index() == 0:
            delta_io.save(os.path.join(workdir, "delta_last_k"), d["method"], d["delta_cfg"],
                          tree.merge(mean, parallel.to_host(state["fixed"])), base.source, base.hash,
                          {"steps": out["last_k"]["steps"], "task": task.name, "averaged": "last_k"})
    if averaging.snapshot_ensemble_on(cfg.optim):
        snaps = averaging.list_snapshots(averaging.snapshot_dir(workdir, "cycles"))
        members = [put(averaging.load_snapshot(p)) for _, p in snaps]
        hook = None
        if _prompt(cfg, task, d["model"].config) is not None:  # label-word scores first, as the eval step does
            from ftlab.train import prompting

            hook = prompting.make_scores(task.num_labels)
        score_step = step_lib.make_eval_step(d["model"], d["delta_mod"], task.kind, shardings=sh, scores=hook,
                                             with_scores=True)
        out["snapshot_ensemble"] = {
            "cycles": cfg.optim.cycles, "steps": [s for s, _ in snaps],
            "snapshot_metrics": [ev(eval_step, m) for m in members],
            "metrics": ev(averaging.make_ensemble_eval_step(score_step, members, task.kind), None)}
    return out


def with_defaults(old: dict) -> dict:
    """A saved config.json with the keys ftlab gained since it was written set to their defaults (off), so a
    run started before a new feature existed still resumes."""
    def fill(node: dict, defaults: dict) -> dict:
        out = dict(node)
        for k, v in defaults.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, dict) and isinstance(out[k], dict) and k != "delta":
                out[k] = fill(out[k], v)
        return out

    return fill(old, default_config().to_dict())


def _check_batch_sizes(tc: config_lib.Config, mesh) -> None:
    """Each batch is split evenly over the mesh's data × fsdp devices: its size must be a multiple."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        if tc[key] % n:
            raise ValueError(
                f"train.{key}={tc[key]} is not a multiple of data × fsdp = {mesh.shape['data']} × "
                f"{mesh.shape['fsdp']} = {n} (mesh {dict(mesh.shape)} on {mesh.size} devices): every batch is "
                f"split evenly over those devices. Use a multiple of {n} (e.g. {-(-tc[key] // n) * n}) or "
                f"change config.parallel")


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, key)
        elif a != b and key not in RESUME_IGNORED_KEYS:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled or jax.process_index() != 0,
                dynamic_ncols=True, unit="step", mininterval=1.0 if sys.stderr.isatty() else 30.0,
                file=sys.stderr)


def apply_variant(cfg: config_lib.Config, variant: str | None, variants: dict[str, dict[str, Any]]) -> config_lib.Config:
    """Apply a config file's named variant: {'variant': {'dotted.key': value}}; 'runlocal' is always there.

    `runlocal` (every config has it) trains a few steps on a small subset so that the whole pipeline of
    that experiment runs in well under a minute on a CPU.
    """
    variants = {"runlocal": {"task.train_subset": 256, "train.max_steps": 8, "train.eval_every": 8,
                             "train.log_every": 4, "train.checkpoint_every": 4, "train.batch_size": 16},
                **variants}
    if variant is None:
        return cfg
    if variant not in variants:
        raise config_lib.ConfigError(f"unknown variant {variant!r} (available: {', '.join(sorted(variants))})")
    for dotted, value in variants[variant].items():
        parent, _, leaf = dotted.rpartition(".")
        node = cfg.get_path(parent) if parent else cfg
        if leaf not in node and not parent.startswith("delta"):
            raise config_lib.ConfigError(f"variant {variant!r} sets unknown key {dotted!r}")
        node[leaf] = value
    return cfg
