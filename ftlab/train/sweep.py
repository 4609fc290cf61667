"""Seed sweeps: N seeds of one run trained together in one jitted program, early stopping of bad seeds, and
expected validation performance.

Fine-tuning on small data is unstable across random seeds (Dodge et al. 2020, "Fine-Tuning Pretrained
Language Models: Weight Initializations, Data Orders, and Early Stopping"); measuring that needs many runs
of the same config. `train_seeds(cfg, workdir)` trains `cfg.sweep.seeds` in one of two modes:

  vmap        one program: the un-jitted train step of ftlab.train.step is `jax.vmap`ped over a leading seed
              axis of the train state (δ, optimizer state, step, rng) and of the batch, jitted once with the
              state donated. θ₀ is shared; only the freshly initialised leaves (the task head) differ per seed
              and carry the seed axis. Seed s starts exactly as `train_and_evaluate` with `seed=s` would:
              head init fold_in(key(s), 1), δ init fold_in(key(s), 2), step keys from fold_in(key(s), 3), and
              the data order of `batches(seed=s)`. The seeds' batches at a step are padded to one common width.
              Padding is masked, but dropout masks are drawn over the padded shape: when every batch has the
              same width (`train.pad_to_multiple_of` >= `task.max_length`) seed s equals its separate run up to
              float rounding (tests check this); otherwise it draws other, equally distributed, dropout masks.
  sequential  one ordinary `train_and_evaluate` run per seed under workdir/seeds/<seed>/ (for what does not
              fit N-fold in memory); each resumes on its own.

Early stopping of the least promising seeds (Dodge et al. 2020, "start many, stop early"): with
`sweep.stop_fraction` = f > 0 and `sweep.keep` = k, all seeds are evaluated after a fraction f of the steps and
only the k best so far (by the task's main metric) go on; the program then runs with k rows (one
recompilation). `stop_table` replays the same rule on the logged curves of a full sweep for any (f, k) —
exact, since seeds never interact — and reports the best final score reached and the compute it cost.

Expected validation performance (Dodge et al. 2019, "Show Your Work"): `expected_max(scores)[n-1]` is the
expected best dev score of n runs drawn (with replacement) from the observed ones,
    E[max of n] = Σ_i v_(i) · ((i/N)^n − ((i−1)/N)^n),   v_(1) ≤ … ≤ v_(N) the sorted scores.

Config keys (`config.sweep`): seeds (tuple of ints; `ftlab sweep --seeds 10` means 10 seeds from cfg.seed
on), mode (vmap | sequential), stop_fraction (0 = off), keep (seeds kept after stop_fraction).

workdir: config.json, metrics.jsonl (train rows carry per-seed lists, eval rows one per seed with "seed"),
checkpoints/ (the stacked state; a killed sweep resumes exactly), seeds/<seed>/results.json (as a single run's,
so `ftlab plot --kind seeds` reads them), sweep.json (per-seed curves, best and final scores, the expected-max
curve, the compute used, training throughput).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftlab import config as config_lib
from ftlab import tree
from ftlab.checkpoint import train_state as ckpt
from ftlab.tasks import metrics as metrics_lib

DEFAULTS = {"seeds": (), "mode": "vmap", "stop_fraction": 0.0, "keep": 0}
MODES = ("vmap", "sequential")


# ---- expected validation performance and bad-seed stopping (pure numpy) ------------------------------------
def expected_max(scores: Any, n_max: int | None = None) -> np.ndarray:
    """[n_max] expected best score of n = 1..n_max runs drawn with replacement from `scores` (Dodge et al. 2019)."""
    v = np.sort(np.asarray(scores, np.float64))
    n_obs = len(v)
    if n_obs == 0:
        raise ValueError("expected_max needs at least one score")
    n_max = n_max or n_obs
    i = np.arange(1, n_obs + 1, dtype=np.float64)
    out = []
    for n in range(1, n_max + 1):
        w = (i / n_obs) ** n - ((i - 1) / n_obs) ** n
        out.append(float(np.sum(w * v)))
    return np.asarray(out)


def score_at(curve: list[list[float]], step: int) -> float:
    """Best score among the evals of `curve` ([[step, score], ...]) at or before `step` (-inf if none)."""
    seen = [s for t, s in curve if t <= step]
    return max(seen) if seen else -math.inf


def stop_table(curves: dict[Any, list[list[float]]], total_steps: int,
               fractions=(0.1, 0.2, 0.3, 0.5), keeps=(1, 2, 3, 5)) -> list[dict[str, float]]:
    """Dodge et al. 2020's early stopping replayed on full curves: for each (fraction f, keep k), the seeds
    with the best score by step ⌈f·T⌉ go on; returns the best final (best-eval) score among them and the
    compute used, (N·f + k·(1−f)) / N of training all N seeds to the end."""
    n = len(curves)
    full_best = max(score_at(c, total_steps) for c in curves.values())
    rows = []
    for f in fractions:
        t = int(math.ceil(f * total_steps))
        if all(score_at(c, t) == -math.inf for c in curves.values()):
            continue  # no eval by then: nothing to rank the seeds by
        ranked = sorted(curves, key=lambda s: score_at(curves[s], t), reverse=True)
        for k in keeps:
            if k >= n:
                continue
            kept = ranked[:k]
            best = max(score_at(curves[s], total_steps) for s in kept)
            rows.append({"fraction": f, "keep": k, "kept_seeds": kept, "best": best, "best_all": full_best,
                         "compute": (n * f + k * (1 - f)) / n})
    return rows


def majority_score(task, labels: list) -> float:
    """The task's main metric for always predicting the majority training label (a 'failed run' scores at or
    below it; Mosbach et al. 2021). Regression: predicting a constant has no correlation: 0."""
    from ftlab.tasks import metrics as metrics_lib

    if task.kind == "regression":
        return 0.0
    if task.kind == "tagging":
        raise ValueError("majority_score is defined for sequence-level tasks")
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    majority = values[np.argmax(counts)].item()
    preds = [majority] * len(labels)
    return float(metrics_lib.compute(task, preds, list(labels))[task.main_metric])


# ---- the vmapped sweep ----------------------------------------------------------------------------------------
def _seed_list(cfg: config_lib.Config) -> list[int]:
    sw = cfg.get("sweep", DEFAULTS)
    seeds = [int(s) for s in sw.get("seeds", ())]
    if not seeds:
        raise config_lib.ConfigError("sweep.seeds is empty: give the seeds, e.g. --config.sweep.seeds='(13, 21, 42)'")
    if len(set(seeds)) != len(seeds):
        raise config_lib.ConfigError(f"sweep.seeds has repeated seeds: {seeds}")
    mode = sw.get("mode", "vmap")
    if mode not in MODES:
        raise config_lib.ConfigError(f"sweep.mode={mode!r}: expected one of {MODES}")
    f, k = float(sw.get("stop_fraction", 0.0)), int(sw.get("keep", 0))
    if not 0.0 <= f < 1.0:
        raise config_lib.ConfigError(f"sweep.stop_fraction={f}: expected 0 (off) or a fraction in (0, 1)")
    if f > 0 and not 0 < k < len(seeds):
        raise config_lib.ConfigError(f"sweep.keep={k}: with sweep.stop_fraction={f} keep between 1 and "
                                     f"{len(seeds) - 1} of the {len(seeds)} seeds")
    if f > 0 and mode != "vmap":
        raise config_lib.ConfigError("sweep.stop_fraction needs sweep.mode=vmap (sequential runs cannot pause)")
    if cfg.train.early_stopping_patience and mode == "vmap":
        raise config_lib.ConfigError("train.early_stopping_patience is per run; in a vmap sweep use "
                                     "sweep.stop_fraction/sweep.keep (or sweep.mode=sequential)")
    return seeds


def with_seed(cfg: config_lib.Config, seed: int) -> config_lib.Config:
    c = config_lib.Config(json.loads(json.dumps(cfg.to_dict())))
    c.seed = seed
    return c


def _stack(trees: list) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _take(stacked: Any, rows: list[int]) -> Any:
    idx = jnp.asarray(rows, jnp.int32)
    return jax.tree_util.tree_map(lambda x: x[idx], stacked)


def stack_batches(batches: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """[N, B, ...] from N same-size batches, token axes padded to the widest (pad id, mask 0, label -100)."""
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": -100}
    out = {}
    for key in batches[0]:
        xs = [b[key] for b in batches]
        if xs[0].ndim == 2:
            width = max(x.shape[1] for x in xs)
            xs = [np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill.get(key, 0)) for x in xs]
        out[key] = np.stack(xs)
    return out


def train_seeds(cfg: config_lib.Config, workdir: str) -> dict[str, Any]:
    """Train every seed of `cfg.sweep.seeds`; returns (and writes to workdir/sweep.json) the summary."""
    seeds = _seed_list(cfg)
    if cfg.sweep.get("mode", "vmap") == "sequential":
        return _sequential(cfg, workdir, seeds)
    return _vmapped(cfg, workdir, seeds)


def _sequential(cfg: config_lib.Config, workdir: str, seeds: list[int]) -> dict[str, Any]:
    from ftlab.train.loop import train_and_evaluate

    t0 = time.time()
    per_seed, results, train_time = {}, {}, 0.0
    for s in seeds:
        wd = os.path.join(workdir, "seeds", str(s))
        r = train_and_evaluate(with_seed(cfg, s), wd)
        results[s] = r
        curve = [[m["step"], m[r["main_metric"]]] for m in _read_jsonl(os.path.join(wd, "metrics.jsonl"))
                 if m["kind"] == "eval"]
        per_seed[s] = _seed_summary(r["best_metrics"], r["best_step"], r["metrics"], r["main_metric"], curve,
                                    r["train_steps"])
        if r["steps_per_second"]:
            train_time += r["train_steps"] / r["steps_per_second"]
    r0 = results[seeds[0]]
    return _write_summary(cfg, workdir, seeds, per_seed, r0["main_metric"], r0["train_steps"],
                          r0["train_examples"], cfg.train.batch_size * sum(r["train_steps"] for r in results.values()),
                          train_time, time.time() - t0, "sequential", majority=None)


def _rank_score(meta: dict[str, Any], seed: str, metric: str) -> float:
    """Higher ranks better: the seed's best selectable score so far, else its latest (perplexity negated)."""
    b = meta["best"][seed]
    score = b["score"] if b["score"] is not None else meta["curves"][seed][-1][1]
    return -score if metric in metrics_lib.LOWER_IS_BETTER else score


def _seed_summary(best_metrics, best_step, final_metrics, main, curve, steps_run) -> dict[str, Any]:
    return {"best_score": best_metrics[main] if best_metrics else None, "best_step": best_step,
            "final_score": final_metrics[main] if final_metrics else None, "best_metrics": best_metrics,
            "final_metrics": final_metrics, "curve": curve, "steps_run": steps_run}


def _write_summary(cfg, workdir, seeds, per_seed, main, total_steps, n_train, examples_trained, train_seconds,
                   wall, mode, majority) -> dict[str, Any]:
    best = [per_seed[s]["best_score"] for s in seeds if per_seed[s]["best_score"] is not None]
    summary = {
        "mode": mode, "seeds": seeds, "task": cfg.task.name, "method": cfg.delta.method, "model": cfg.model.name,
        "main_metric": main, "total_steps": total_steps, "train_examples": n_train,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "best_scores": best,
        "mean": float(np.mean(best)) if best else None, "std": float(np.std(best)) if best else None,
        "expected_max": expected_max(best).tolist() if best else [],
        "majority_score": majority,
        "compute_fraction": sum(per_seed[s]["steps_run"] for s in seeds) / (len(seeds) * total_steps),
        "train_examples_per_second": examples_trained / train_seconds if train_seconds else None,
        "train_seconds": train_seconds, "wall_seconds": wall,
        "config": cfg.to_dict(), "jax_version": jax.__version__, "device": jax.devices()[0].device_kind,
    }
    if jax.process_index() == 0:
        _atomic_json(os.path.join(workdir, "sweep.json"), summary)
    return summary


def _atomic_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(path + ".tmp", path)


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _read_meta(mngr, step: int) -> dict:
    import orbax.checkpoint as ocp

    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _vmapped(cfg: config_lib.Config, workdir: str, seeds: list[int]) -> dict[str, Any]:
    from ftlab import parallel
    from ftlab.checkpoint import delta_io
    from ftlab.data.batching import batches, num_batches
    from ftlab.models import init_params
    from ftlab.train import loop

    t_start = time.time()
    tc = cfg.train
    mesh = parallel.make_mesh(cfg.parallel)
    if mesh.size > 1:
        raise config_lib.ConfigError(f"sweep.mode=vmap runs on one device ({mesh.size} visible); use "
                                     "sweep.mode=sequential to put each seed on the mesh")
    from ftlab.train import averaging

    averaged = averaging.active_keys(cfg)
    if averaged:  # the vmapped loop evaluates and exports the raw δ only
        raise config_lib.ConfigError(f"sweep.mode=vmap does no weight averaging ({', '.join(averaged)}); use "
                                     "sweep.mode=sequential (each seed an ordinary run)")
    loop._check_workdir(workdir)
    ignore = [k for k in loop.RESUME_IGNORED_KEYS if k not in ("sweep", "parallel")]  # seeds matter here
    fingerprint = config_lib.fingerprint(cfg, ignore=ignore)
    mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    resume_step = ckpt.latest(mngr)
    cfg_path = os.path.join(workdir, "config.json")
    if resume_step is not None and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = loop.with_defaults(json.load(f))
        if config_lib.fingerprint(old, ignore=ignore) != fingerprint:
            raise loop.WorkdirError(f"{workdir} holds a checkpoint of a different sweep config; refusing to "
                                    f"resume. Differences: {loop._config_diff(old, cfg.to_dict())}")
    _atomic_json(cfg_path, cfg.to_dict())

    # Base, per-seed heads and δ: seed s exactly as train_and_evaluate(seed=s) would start.
    prep0 = loop.prepare(with_seed(cfg, seeds[0]))
    task, base, model = prep0["task"], prep0["base"], prep0["model"]
    fresh_paths = set(prep0["fresh_paths"])
    example = jnp.ones((1, 8), jnp.int32)
    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _, train_enc = loop._load_split(cfg, task, tokenizer, "train", cfg.task.train_subset, base.config)
    _, eval_enc = loop._load_split(cfg, task, tokenizer, cfg.task.eval_split, cfg.task.get("eval_subset", 0),
                                   base.config)
    steps_per_epoch = num_batches(len(train_enc), tc.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"train set has {len(train_enc)} examples, fewer than one batch of {tc.batch_size}")
    total_steps = tc.max_steps if tc.max_steps > 0 else int(math.ceil(tc.epochs * steps_per_epoch))
    eval_every = tc.eval_every or steps_per_epoch

    states, fresh, d0, t0 = [], [], None, None
    for s in seeds:
        cs = with_seed(cfg, s)
        params_s = prep0["params"] if s == seeds[0] else init_params(
            model, jax.random.fold_in(jax.random.key(s), 1), base.params, example)[0]
        d = loop.init_delta(cs, {**prep0, "params": params_s})
        t = loop.init_training(cs, params_s, d, total_steps, task.kind, jit=False)
        states.append(t["state"])
        flat = tree.flatten(params_s)
        fresh.append(tree.unflatten({p: x for p, x in flat.items() if p in fresh_paths}))
        if d0 is None:
            d0, t0 = d, t
            shared = tree.unflatten({p: x for p, x in flat.items() if p not in fresh_paths})
    method, delta_cfg = d0["method"], d0["delta_cfg"]
    train_step, eval_step = t0["train_step"], t0["eval_step"]
    state, fresh = _stack(states), _stack(fresh)
    del states

    def sweep_train(st, shared_base, fr, batch):
        return jax.vmap(lambda s_, f_, b_: train_step(s_, tree.merge(shared_base, f_), b_))(st, fr, batch)

    def sweep_eval(train, fixed, shared_base, fr, batch):
        return jax.vmap(lambda t_, x_, f_: eval_step(t_, x_, tree.merge(shared_base, f_), batch))(train, fixed, fr)

    jtrain = jax.jit(sweep_train, donate_argnums=(0,))
    jeval = jax.jit(sweep_eval)

    alive = list(range(len(seeds)))  # rows of `state` -> index into seeds
    meta: dict[str, Any] = {"curves": {str(s): [] for s in seeds}, "best": {}, "stopped_at": {},
                            "train_seconds": 0.0, "examples_trained": 0}
    if resume_step is not None:
        old_meta = _read_meta(mngr, resume_step)
        alive = old_meta["alive"]
        state, fresh = _take(state, alive), _take(fresh, alive)
        state, meta = ckpt.restore(mngr, resume_step, state)
        print(f"[ftlab] sweep resumed from {workdir}/checkpoints/{resume_step} ({len(alive)} seeds)",
              file=sys.stderr)
    logger = loop._Logger(workdir, resume_step)
    n_train, n_total = tree.count(d0["train"]), tree.count(prep0["params"])
    stop_step = int(math.ceil(cfg.sweep.stop_fraction * total_steps)) if cfg.sweep.stop_fraction > 0 else None
    if resume_step is None:
        print(f"[ftlab] sweep of {len(seeds)} seeds {seeds} in one program (vmap): task {task.name}, "
              f"delta {method}" + (f", reg {cfg.reg.method}" if cfg.get("reg", {}).get("method", "none") != "none" else "")
              + f", {n_train:,} trainable of {n_total:,} parameters per seed; "
              f"{len(train_enc):,} train / {len(eval_enc):,} {cfg.task.eval_split} examples; {total_steps} steps"
              + (f"; after step {stop_step} only the best {cfg.sweep.keep} go on" if stop_step else ""),
              file=sys.stderr)

    def run_eval(step: int) -> None:
        results = _evaluate_rows(jeval, state, shared, fresh, task, eval_enc, tc.eval_batch_size, pad_id,
                                 tc.pad_to_multiple_of)
        eligible = loop.selectable(d0["delta_mod"], delta_cfg, step, total_steps)  # soft movement: from t_f on
        for row, res in zip(alive, results):
            s = str(seeds[row])
            logger.log(step, "eval", {"seed": seeds[row], **res})
            meta["curves"][s].append([step, res[task.main_metric]])
            b = meta["best"].setdefault(s, {"score": None, "step": None, "metrics": None})
            if eligible and metrics_lib.improved(task.main_metric, res[task.main_metric], b["score"]):
                b.update(score=res[task.main_metric], step=step, metrics=res)
            b["final"] = res
        scores = ", ".join(f"{seeds[r]}:{res[task.main_metric]:.4f}" for r, res in zip(alive, results))
        progress.write(f"[ftlab] step {step}: {cfg.task.eval_split} {task.main_metric} by seed {scores}")

    progress = loop._progress(total_steps, int(state["step"][0]), tc.progress)
    step = int(state["step"][0])
    window: list = []
    t_window = time.perf_counter()
    epoch = step // steps_per_epoch
    while step < total_steps:
        regroup = False  # set when seeds were dropped: the epoch's iterators are rebuilt for the kept ones
        its = [batches(train_enc, tc.batch_size, shuffle=True, seed=seeds[r], epoch=epoch, pad_id=pad_id,
                       pad_to_multiple_of=tc.pad_to_multiple_of, bucket=tc.bucket, drop_remainder=True,
                       pad_final=False) for r in alive]
        for i, group in enumerate(zip(*its)):
            if epoch * steps_per_epoch + i < step:  # resuming inside this epoch
                continue
            if step >= total_steps:
                break
            state, m = jtrain(state, shared, fresh, stack_batches(list(group), pad_id))
            window.append(m)
            step += 1
            meta["examples_trained"] += tc.batch_size * len(alive)
            if step % tc.log_every == 0 or step == total_steps:
                host = jax.device_get(window)
                window = []
                meta["train_seconds"] += time.perf_counter() - t_window
                finite = np.all([x["finite"] for x in host])
                if not finite and tc.on_nonfinite == "stop":
                    bad = [seeds[alive[j]] for j in range(len(alive)) if not all(x["finite"][j] for x in host)]
                    raise FloatingPointError(f"non-finite loss or gradient at or before step {step} for seeds {bad}; "
                                             "lower the learning rate or set train.on_nonfinite=skip")
                loss = np.mean([x["loss"] for x in host], axis=0)
                logger.log(step, "train", {"loss": float(np.mean(loss)), "loss_by_seed": loss.tolist(),
                                           "seeds": [seeds[r] for r in alive],
                                           "lr": float(t0["lr_schedule"](step - 1)), "epoch": step / steps_per_epoch})
                progress.set_postfix(loss=f"{float(np.mean(loss)):.4f}")
            progress.update(1)
            if step % eval_every == 0 or step == total_steps or step == stop_step:
                run_eval(step)
            if step == stop_step:
                # by the best selectable score so far, or the latest one where none is selectable yet
                ranked = sorted(alive, key=lambda r: _rank_score(meta, str(seeds[r]), task.main_metric),
                                reverse=True)
                keep_rows = sorted(ranked[: cfg.sweep.keep])
                for r in alive:
                    if r not in keep_rows:
                        meta["stopped_at"][str(seeds[r])] = step
                pos = [alive.index(r) for r in keep_rows]
                state, fresh, alive = _take(state, pos), _take(fresh, pos), keep_rows
                progress.write(f"[ftlab] step {step}: keeping seeds {[seeds[r] for r in alive]} "
                               f"(best {cfg.sweep.keep} so far); the others stop here")
                regroup = True
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == total_steps or step == stop_step:
                ckpt.save(mngr, step, state, {**meta, "alive": alive, "fingerprint": fingerprint})
                if tc.crash_after_checkpoint == step:
                    import signal

                    os.kill(os.getpid(), signal.SIGKILL)
            if step % tc.log_every == 0:
                t_window = time.perf_counter()
            if regroup:
                break
        if not regroup:
            epoch += 1
    progress.close()
    logger.close()

    # Results: one results.json per seed (as a single run's), the exported δ per seed if asked, sweep.json.
    per_seed = {}
    final_rows = {seeds[r]: j for j, r in enumerate(alive)}
    for s in seeds:
        b = meta["best"].get(str(s))
        steps_run = meta["stopped_at"].get(str(s), total_steps)
        per_seed[s] = _seed_summary(b["metrics"] if b else None, b["step"] if b else None,
                                    b.get("final") if b else None, task.main_metric, meta["curves"][str(s)], steps_run)
        r = {"config": with_seed(cfg, s).to_dict(), "task": task.name, "method": method, "model": cfg.model.name,
             "base_hash": base.hash, "metrics": per_seed[s]["final_metrics"],
             "best_metrics": per_seed[s]["best_metrics"], "best_step": per_seed[s]["best_step"],
             "main_metric": task.main_metric, "trainable_params": n_train, "total_params": n_total,
             "trainable_fraction": n_train / n_total, "train_steps": steps_run, "train_examples": len(train_enc),
             "seed": s, "sweep": os.path.abspath(workdir), "stopped_at": meta["stopped_at"].get(str(s))}
        if tc.export_delta != "none" and s in final_rows:  # the final δ of the seeds that ran to the end
            j = final_rows[s]
            delta = jax.device_get(tree.merge(_take(state["train"], [j]), _take(state["fixed"], [j])))
            delta = jax.tree_util.tree_map(lambda x: x[0], delta)
            info = delta_io.save(os.path.join(workdir, "seeds", str(s), "delta"), method, delta_cfg, delta,
                                 base.source, base.hash, {"step": total_steps, "task": task.name, "seed": s})
            r["delta_bytes"] = info.get("array_bytes")
        _atomic_json(os.path.join(workdir, "seeds", str(s), "results.json"), r)
    majority = majority_score(task, list(train_enc.labels)) if task.kind != "tagging" else None
    return _write_summary(cfg, workdir, seeds, per_seed, task.main_metric, total_steps, len(train_enc),
                          meta["examples_trained"], meta["train_seconds"], time.time() - t_start, "vmap", majority)


def _evaluate_rows(jeval, state, shared, fresh, task, enc, batch_size: int, pad_id: int, pad_multiple: int):
    """Metrics of every seed row on an encoded split: [one dict per row], as `loop.evaluate` computes them."""
    from ftlab.data.batching import batches
    from ftlab.train.loop import kept_predictions, split_metrics

    n = jax.tree_util.tree_leaves(state["step"])[0].shape[0]
    preds: list[list] = [[] for _ in range(n)]
    loss_sum, weight = np.zeros(n), 0.0
    for batch in batches(enc, batch_size, shuffle=False, seed=0, epoch=0, pad_id=pad_id,
                         pad_to_multiple_of=pad_multiple, drop_remainder=False, pad_final=True):
        out = jax.device_get(jeval(state["train"], state["fixed"], shared, fresh, batch))
        loss_sum += np.asarray(out["loss_sum"], np.float64)
        weight += float(out["weight"][0])
        for r in range(n):
            preds[r].extend(kept_predictions(task, out["pred"][r], batch))
    return [split_metrics(task, enc, preds[r], float(loss_sum[r]), weight) for r in range(n)]
