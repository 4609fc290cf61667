"""ftlab.parallel: mesh, sharding rules and inheritance (in-process, abstract meshes), and sharded training
steps on 8 fake CPU devices and across two local processes (subprocesses running tests/parallel_worker.py,
since the fake device count must be set before JAX starts)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from ftlab import deltas, optim, parallel, tree
from ftlab.models import BertConfig, GPT2Config, LlamaConfig, build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "parallel_worker.py")

# One worker run covers these (mesh, method) pairs; the rest of the 5 × 3 grid is marked slow.
FAST = ["8,1,1/lora", "1,8,1/lora", "2,4,1/lora", "2,2,2/lora", "1,1,8/lora", "2,2,2/full", "1,8,1/full",
        "2,2,2/said"]
SLOW = ["8,1,1/full", "8,1,1/said", "1,8,1/said", "2,4,1/full", "2,4,1/said", "1,1,8/full", "1,1,8/said"]


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), parallel.AXES)


def shapes(cfg, head):
    model = build_model(cfg, head=head)
    out = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, jnp.ones((1, 8), jnp.int32)),
                         jax.random.key(0))
    return out["params"]


BERT = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=32)
LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, attention_bias=True, mlp_bias=True)
GPT2 = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4)


# ------------------------------------------------------------------------------------------ mesh and rules


def test_mesh_shape_fills_and_names_bad_sizes():
    assert parallel.mesh_shape({}, 8) == (8, 1, 1)
    assert parallel.mesh_shape({"fsdp": -1, "data": 2}, 8) == (2, 4, 1)
    assert parallel.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match=r"data=3 × fsdp=1 × tensor=1 has 3 devices but there are 8"):
        parallel.mesh_shape({"data": 3}, 8)
    with pytest.raises(ValueError, match=r"data=-1 × fsdp=3 × tensor=1: 3 does not divide the 8 devices"):
        parallel.mesh_shape({"fsdp": 3}, 8)
    with pytest.raises(ValueError, match="at most one -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown parallel config key"):
        parallel.mesh_shape({"model": 2}, 8)


@pytest.mark.parametrize("cfg,heads", [
    (BERT, [None, "sequence_classification", "token_classification", "masked_lm"]),
    (LLAMA, [None, "sequence_classification", "token_classification", "causal_lm"]),
    (GPT2, [None, "sequence_classification", "token_classification", "causal_lm"]),
])
def test_default_rules_cover_every_family_and_head(cfg, heads):
    mesh = abstract_mesh(1, 2, 2)
    for head in heads:
        specs = tree.flatten(parallel.param_specs(shapes(cfg, head), mesh))
        big = {p: s for p, s in specs.items() if p.endswith(("kernel", "embedding"))}
        # every matrix of the backbone is split over fsdp (FSDP for all large weights)
        assert all("fsdp" in s for p, s in big.items() if p.startswith("backbone/")), big
    bb = tree.flatten(parallel.param_specs(shapes(cfg, None), mesh))
    column, row = {
        "BertConfig": ("attention/self/query", "attention/output/dense"),
        "LlamaConfig": ("self_attn/q_proj", "self_attn/o_proj"),
        "GPT2Config": ("attn/c_attn", "mlp/c_proj"),
    }[type(cfg).__name__]
    layer = {"BertConfig": "encoder/layer/0", "LlamaConfig": "layers/0", "GPT2Config": "h/0"}[type(cfg).__name__]
    assert bb[f"backbone/{layer}/{column}/kernel"] == P("fsdp", "tensor")  # column-parallel
    assert bb[f"backbone/{layer}/{row}/kernel"] == P("tensor", "fsdp")  # row-parallel


def test_llama_mlp_rules():
    specs = tree.flatten(parallel.param_specs(shapes(LLAMA, "causal_lm"), abstract_mesh(1, 2, 2)))
    for name in ("gate_proj", "up_proj"):
        assert specs[f"backbone/layers/0/mlp/{name}/kernel"] == P("fsdp", "tensor")
        assert specs[f"backbone/layers/0/mlp/{name}/bias"] == P("tensor")
    assert specs["backbone/layers/0/mlp/down_proj/kernel"] == P("tensor", "fsdp")
    assert specs["backbone/embed_tokens/embedding"] == P("tensor", "fsdp")
    assert specs["head/lm_head/kernel"] == P("fsdp", "tensor")
    assert specs["backbone/norm/scale"] == P()


def test_unmatched_parameter_and_unused_rule_are_errors():
    params = dict(shapes(BERT, None))
    params["backbone"] = {**params["backbone"], "mystery": {"w": jax.ShapeDtypeStruct((32, 32), jnp.float32)}}
    with pytest.raises(ValueError, match="backbone/mystery/w"):
        parallel.param_specs(params, abstract_mesh(1, 8, 1))
    with pytest.raises(ValueError, match="matched no parameter path"):
        parallel.param_specs(shapes(BERT, None), abstract_mesh(1, 8, 1), rules=[("nothing/here", (None,))])
    # a config rule wins over the defaults and may use tuples of axes
    specs = tree.flatten(parallel.param_specs(shapes(BERT, None), abstract_mesh(2, 4, 1),
                                              rules=[(".*/query/kernel", [["data", "fsdp"], None])]))
    assert specs["backbone/encoder/layer/0/attention/self/query/kernel"] == P(("data", "fsdp"))


def test_indivisible_dimension_is_replicated_and_described():
    params = shapes(BERT, "sequence_classification")  # head/classifier/kernel [32, 2]
    specs = tree.flatten(parallel.param_specs(params, abstract_mesh(1, 1, 8),
                                              rules=[("head/classifier/kernel", (None, "tensor"))]))
    assert specs["head/classifier/kernel"] == P()
    table = parallel.describe(params, abstract_mesh(1, 1, 8), rules=[("head/classifier/kernel", (None, "tensor"))])
    assert "dim 1 (2) not divisible by tensor=8: replicated" in table


def test_delta_leaves_inherit_from_their_base_leaf():
    mesh = abstract_mesh(1, 2, 2)
    params = shapes(BERT, "sequence_classification")
    base_specs = parallel.param_specs(params, mesh)
    q = "backbone/encoder/layer/0/attention/self/query"
    o = "backbone/encoder/layer/0/output/dense"
    cases = {
        "lora": {"delta/" + q + "/lora_a": P("fsdp"), "delta/" + q + "/lora_b": P(None, "tensor"),
                 "delta/" + q + "/lora_scale": P(), "head/classifier/kernel": P("fsdp")},
        "full": {q + "/kernel": P("fsdp", "tensor"), o + "/kernel": P("tensor", "fsdp")},
        "diffprune": {"diffprune/w/" + q + "/kernel": P("fsdp", "tensor"),
                      "diffprune/log_alpha/" + o + "/kernel": P("tensor", "fsdp"), "diffprune/hp/beta": P()},
        "ia3": {"delta/" + o + "/ia3_in": P("tensor"),
                "delta/backbone/encoder/layer/0/attention/self/key/ia3_out": P("tensor")},
        "houlsby": {"delta/backbone/encoder/layer/0/output/adapter/0/down/kernel": P()},  # tiny: replicated
        "said": {"fastfood/theta_d": P(), "fastfood/lambda": P()},
    }
    for method, want in cases.items():
        mod = deltas.get(method)
        cfg = deltas.check_config(mod, {})
        delta = jax.eval_shape(lambda p, m=mod, c=cfg: m.init(jax.random.key(0), p, c), params)
        got = tree.flatten(parallel.delta_specs(delta, params, base_specs, mesh))
        assert set(got) == set(tree.flatten(delta))
        for p, spec in want.items():
            assert got[p] == spec, (method, p, got[p])
    # a large leaf with no base counterpart is split over fsdp on its largest divisible dimension
    big = {"fastfood": {"gauss": jax.ShapeDtypeStruct((3, 1 << 20), jnp.float32)}}
    assert tree.flatten(parallel.delta_specs(big, params, base_specs, mesh))["fastfood/gauss"] == P(None, "fsdp")


def test_optimizer_state_follows_its_parameter():
    mesh = abstract_mesh(1, 4, 2)
    params = shapes(BERT, "sequence_classification")
    base_specs = parallel.param_specs(params, mesh)
    train = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    # groups make an optax.partition (masked sub-states); grad clipping adds a chain element
    tx, _ = optim.build({"groups": ((r"head/.*", 10.0), (r".*", 1.0))}, train, 10, 1)
    opt_state = jax.eval_shape(tx.init, train)
    specs = parallel.opt_state_specs(opt_state, train, base_specs, mesh)
    flat_base = tree.flatten(base_specs)
    n_moments = 0
    for keypath, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, P)):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keypath]
        if "mu" in keys or "nu" in keys:
            i = keys.index("mu" if "mu" in keys else "nu")
            assert spec == flat_base["/".join(keys[i + 1:])]
            n_moments += 1
        else:
            assert spec == P()  # counts
    assert n_moments == 2 * len(flat_base)


def test_initialize_is_a_no_op_for_one_process():
    assert parallel.initialize({}) is False
    assert parallel.initialize({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "1"}) is False
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS is not"):
        parallel.initialize({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})


# --------------------------------------------------------------------------------- 8 fake devices (subprocess)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return env


def run_worker(tmp_path, combos: list[str]) -> dict:
    out = tmp_path / "meshes.json"
    proc = subprocess.run([sys.executable, WORKER, "meshes", str(out), ";".join(combos)], env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())["meshes"]


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("parallel"), FAST)


def check_combo(key: str, r: dict) -> None:
    shape, method = key.split("/")
    d, f, t = (int(n) for n in shape.split(","))
    print(f"{key}: loss {r['loss']:.6f} (1 device {r['loss_ref']:.6f}), δ rel err {r['delta_rel_err']:.1e}, "
          f"update rel err {r['update_rel_err']:.1e}, {r['seconds']:.1f} s")
    assert r["loss_rel_err"] <= 1e-5
    assert abs(r["grad_norm"] - r["grad_norm_ref"]) <= 1e-5 * abs(r["grad_norm_ref"])
    assert r["delta_rel_err"] <= 1e-5
    # The step's change alone, a stricter measure; one float32 ulp of a norm scale near 1.0 (1.2e-7) is
    # about 5e-6 of the update here.
    assert r["update_rel_err"] <= 1e-4
    assert r["cache_size"] == 1, "the second step recompiled"
    # large weights really are split (kernels [in, out], embeddings [vocab, width])
    layer = "backbone/encoder/layer/0/"
    assert r["base_shards"] == {
        layer + "intermediate/dense/kernel": [32 // f, 64 // t],
        layer + "output/dense/kernel": [64 // t, 32 // f],
        layer + "attention/self/query/kernel": [32 // f, 32 // t],
        "backbone/embeddings/word_embeddings/embedding": [128 // t, 32 // f],
    }
    ts = r["train_shards"]
    assert ts["head/classifier/kernel"] == [32 // f, 2]
    if method == "full":
        for p, s in r["base_shards"].items():
            assert ts[p] == s
    if method == "lora":
        assert ts["delta/" + layer + "attention/self/query/lora_a"] == [32 // f, 4]
        assert ts["delta/" + layer + "attention/self/query/lora_b"] == [4, 32 // t]
    # what the plan says one device holds is what device 0 holds
    assert r["bytes_params_opt"] == r["bytes_on_device0"]
    if f == 1 or t == 1:  # one model axis: every split leaf is split n ways, the rest is whole everywhere
        n, rep = f * t, r["bytes_replicated_leaves"]
        assert r["bytes_params_opt"] == (r["bytes_replicated"] - rep) // n + rep


@pytest.mark.parametrize("key", FAST)
def test_sharded_step_equals_single_device(fast_results, key):
    check_combo(key, fast_results[_k(key)])


def _k(key: str) -> str:
    shape, method = key.split("/")
    return f"({shape.replace(',', ', ')})/{method}"


def test_fsdp8_holds_an_eighth_of_params_and_optimizer_state(fast_results):
    r = fast_results[_k("1,8,1/full")]
    ratio = r["bytes_params_opt"] / r["bytes_replicated"]
    sharded = r["bytes_replicated"] - r["bytes_replicated_leaves"]
    print(f"fsdp=8, full fine-tuning: θ₀ + δ + Adam state per device {r['bytes_params_opt']:,} B of "
          f"{r['bytes_replicated']:,} B replicated ({ratio:.3f}; the split leaves exactly 1/8: "
          f"{(r['bytes_params_opt'] - r['bytes_replicated_leaves']) / sharded:.4f}; norms, biases and counts "
          f"({r['bytes_replicated_leaves']:,} B) are whole on every device)")
    assert r["bytes_params_opt"] - r["bytes_replicated_leaves"] == sharded // 8
    assert ratio < 0.16  # this 1-layer width-32 model: biases/norms are a larger share than in real models


@pytest.mark.slow
def test_sharded_step_equals_single_device_rest_of_grid(tmp_path):
    results = run_worker(tmp_path, SLOW)
    for key in SLOW:
        check_combo(key, results[_k(key)])


# ----------------------------------------------------------------------------- two processes on 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_step_equals_single_process_and_checkpoint_restores_in_one(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, "process", str(i), str(port), str(tmp_path)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(m["loss"] - m["ref"]["loss"]) <= 1e-5 * abs(m["ref"]["loss"])
    assert abs(m["grad_norm"] - m["ref"]["grad_norm"]) <= 1e-5 * abs(m["ref"]["grad_norm"])
    # the checkpoint the two processes wrote (each its own shards), restored by one process on one device
    proc = subprocess.run([sys.executable, WORKER, "restore", str(tmp_path), str(tmp_path / "restore.json")],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads((tmp_path / "restore.json").read_text())
    print(r)
    assert r["step"] == 1 and r["meta"] == {"note": "two processes"}
    assert r["restored_vs_saved"] == 0.0
    assert r["two_process_vs_single"] <= 1e-5
    assert r["two_process_update_vs_single"] <= 1e-4


# ---------------------------------------------------------------------------------------- compile check


@pytest.mark.slow
def test_compile_check_script():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compile_check.py"), "--devices", "8",
                           "--mesh", "1,8,1", "--model", "tiny-bert", "--method", "full", "--batch", "16",
                           "--seq", "16"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout)
    assert "per-device bytes" in proc.stdout


def test_per_device_bytes_counts_shards():
    mesh = abstract_mesh(1, 8, 1)
    x = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32), "b": jax.ShapeDtypeStruct((32,), jnp.float32)}
    sh = {"w": jax.sharding.NamedSharding(mesh, P("fsdp")), "b": jax.sharding.NamedSharding(mesh, P())}
    assert parallel.per_device_bytes(x, sh) == 64 * 32 * 4 // 8 + 32 * 4
    assert np.isclose(parallel.per_device_bytes(x, jax.sharding.NamedSharding(mesh, P())), (64 * 32 + 32) * 4)


# ------------------------------------------------------------------- the training loop on a mesh (subprocess)

TRAIN = os.path.join(REPO, "scripts", "train.py")
# The tiny random BERT of tests/test_train_loop.py; 6 steps, a checkpoint every 2, one eval at the end.
LOOP_ARGS = ["--config.task.max_length=32", "--config.train.pad_to_multiple_of=32", "--config.train.progress=false",
             "--config.train.eval_batch_size=256", "--config.train.max_steps=6", "--config.train.log_every=1",
             "--config.train.checkpoint_every=2", "--config.train.eval_every=6"]


def _train_cmd(workdir, tiny_bert_dir, devices: int, *extra: str, env_extra=None):
    env = {**_env(), **(env_extra or {})}
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true")
    cmd = [sys.executable, TRAIN, "--config", os.path.join(REPO, "configs", "sst2_full.py:runlocal"),
           "--workdir", str(workdir), f"--config.model.name={tiny_bert_dir}", *LOOP_ARGS, *extra]
    return cmd, env


def _train(workdir, tiny_bert_dir, devices: int, *extra: str) -> subprocess.CompletedProcess:
    """scripts/train.py (sst2_full:runlocal) on `devices` fake CPU devices, in a subprocess."""
    cmd, env = _train_cmd(workdir, tiny_bert_dir, devices, *extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=900)


def _same_losses(a: list[dict], b: list[dict]) -> None:
    assert [(m["step"], m["kind"]) for m in a] == [(m["step"], m["kind"]) for m in b]
    for x, y in zip(a, b):
        print(x["step"], x["kind"], x["loss"], y["loss"])
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (x, y)
        if x["kind"] == "train":
            assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * abs(x["grad_norm"]), (x, y)


def _logged(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_loop_on_a_mesh_matches_one_device_and_resumes(tmp_path, tiny_bert_dir):
    """train_and_evaluate on 8 devices as data=2 × fsdp=4: killed right after step 4's checkpoint, rerun with
    the same command, it finishes; every logged loss (train and eval) equals the one-device run's to 1e-5."""
    ref = _train(tmp_path / "one", tiny_bert_dir, 1)
    assert ref.returncode == 0, ref.stderr[-4000:]
    assert "mesh {" not in ref.stderr  # one device: no sharding table, the unsharded steps
    mesh = ["--config.parallel.data=2", "--config.parallel.fsdp=4"]
    killed = _train(tmp_path / "mesh", tiny_bert_dir, 8, *mesh, "--config.train.crash_after_checkpoint=4")
    assert killed.returncode == -9, killed.stderr[-4000:]
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in killed.stderr  # the table, logged once
    assert "backbone/encoder/layer/0/intermediate/dense/kernel" in killed.stderr
    assert sorted(os.listdir(tmp_path / "mesh" / "checkpoints")) == ["2", "4"]
    resumed = _train(tmp_path / "mesh", tiny_bert_dir, 8, *mesh)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    a, b = _logged(tmp_path / "one"), _logged(tmp_path / "mesh")
    assert [m["kind"] for m in b].count("eval") == 1
    _same_losses(a, b)
    ra, rb = (json.loads((tmp_path / w / "results.json").read_text()) for w in ("one", "mesh"))
    assert ra["train_steps"] == rb["train_steps"] == 6
    assert abs(ra["metrics"]["loss"] - rb["metrics"]["loss"]) <= 1e-5 * ra["metrics"]["loss"]
    # the exported δ (gathered from the mesh) is the one-device run's
    from safetensors.numpy import load_file

    da, db = (load_file(str(tmp_path / w / "delta" / "delta.safetensors")) for w in ("one", "mesh"))
    assert set(da) == set(db)
    num = sum(float(np.sum((da[k].astype(np.float64) - db[k]) ** 2)) for k in da)
    den = sum(float(np.sum(da[k].astype(np.float64) ** 2)) for k in da)
    assert (num / den) ** 0.5 <= 1e-5


@pytest.mark.slow
def test_loop_checkpoint_from_a_mesh_resumes_on_another_device_count(tmp_path, tiny_bert_dir):
    """Killed after step 4 on 8 devices (data=2 × fsdp=4), resumed on 4 devices (data=4): the run finishes
    and its losses equal the one-device run's (the mesh is layout, not part of the config fingerprint)."""
    ref = _train(tmp_path / "one", tiny_bert_dir, 1)
    assert ref.returncode == 0, ref.stderr[-4000:]
    killed = _train(tmp_path / "run", tiny_bert_dir, 8, "--config.parallel.data=2", "--config.parallel.fsdp=4",
                    "--config.train.crash_after_checkpoint=4")
    assert killed.returncode == -9, killed.stderr[-4000:]
    resumed = _train(tmp_path / "run", tiny_bert_dir, 4, "--config.parallel.data=4")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in resumed.stderr
    _same_losses(_logged(tmp_path / "one"), _logged(tmp_path / "run"))


def test_loop_batch_size_not_divisible_by_data_fsdp_is_a_clear_error(tmp_path, tiny_bert_dir):
    p = _train(tmp_path, tiny_bert_dir, 8, "--config.parallel.data=2", "--config.parallel.fsdp=4",
               "--config.train.batch_size=12")
    assert p.returncode != 0
    assert "train.batch_size=12 is not a multiple of data × fsdp = 2 × 4 = 8" in p.stderr, p.stderr[-3000:]
    assert not os.path.exists(tmp_path / "checkpoints")  # raised before anything was set up
    p = _train(tmp_path, tiny_bert_dir, 8, "--config.parallel.data=3")
    assert p.returncode != 0 and "data=3 × fsdp=1 × tensor=1 has 3 devices but there are 8" in p.stderr


@pytest.mark.slow
def test_loop_on_two_processes_matches_one_device(tmp_path, tiny_bert_dir):
    """The same command in two processes on 127.0.0.1 (4 fake devices each, mesh data=2 × fsdp=4 over both):
    each feeds its half of every train batch, evaluation lines up the global rows with the whole batch's
    mask, only process 0 writes logs and results, both write the checkpoint; the losses are one device's."""
    ref = _train(tmp_path / "one", tiny_bert_dir, 1, "--config.train.max_steps=4", "--config.train.eval_every=4")
    assert ref.returncode == 0, ref.stderr[-4000:]
    port = _free_port()
    procs = []
    for i in range(2):
        cmd, env = _train_cmd(tmp_path / "two", tiny_bert_dir, 4, "--config.parallel.data=2",
                              "--config.parallel.fsdp=4", "--config.train.max_steps=4", "--config.train.eval_every=4",
                              env_extra={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                         "JAX_PROCESS_ID": str(i)})
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in outs[0] and "mesh {" not in outs[1]
    _same_losses(_logged(tmp_path / "one"), _logged(tmp_path / "two"))
    ra, rb = (json.loads((tmp_path / w / "results.json").read_text()) for w in ("one", "two"))
    assert ra["metrics"]["accuracy"] == rb["metrics"]["accuracy"]
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["2", "4"]
