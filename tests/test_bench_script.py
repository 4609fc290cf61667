"""scripts/bench.py's arithmetic and report, without running a benchmark: the MFU FLOP count against the
formula worked by hand, and the GPU table's MFU lines; scripts/profile_step.py on one small step."""

from __future__ import annotations

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_script", os.path.join(REPO, "scripts", "bench.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_train_flops_bert_base_by_hand():
    # BERT-base: 12 layers × (4·768² attention + 2·768·3072 FFN) = 84,934,656, + pooler 768² + classifier 768·2.
    out = bench.train_flops("bertbase")
    assert out["matmul_params"] == 12 * 7_077_888 + 589_824 + 1_536 == 85_526_016
    tokens = 32 * 512
    assert out["flops_per_step"] == 6 * 85_526_016 * tokens + 12 * 12 * 768 * 512 * tokens


def test_train_flops_smollm2_counts_gqa_and_the_tied_output_projection():
    # 30 layers × (q,o 576·576 each + k,v 576·192 each + 3·576·1536 SwiGLU) + output projection 49152·576.
    out = bench.train_flops("smollm2_1k")
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert out["matmul_params"] == 30 * per_layer + 49152 * 576 == 134_479_872


def test_gpu_report_has_mfu_lines():
    fl = bench.train_flops("bertbase")
    rec = {"model": "bertbase", "method": "full", "status": "ok", "step_s": 0.05, "tokens_per_s": 1.0,
           "trainable_params": 1, "first_step_s": 1.0, "device_peak_mb": 100.0, **fl,
           "model_tflops_per_s": fl["flops_per_step"] / 0.05 / 1e12, "peak_flops": 989.4e12,
           "mfu": fl["flops_per_step"] / 0.05 / 989.4e12}
    data = {"machine": {"cpu": "x", "cpus_used": 1, "cpus_online": 1, "cpu_affinity": [0], "torch_threads": 1,
                        "xla_flags": "", "jax_version": "j", "flax_version": "f", "torch_version": "t",
                        "transformers_version": "tr", "peft_version": "p", "import_rss_mb": {"ftlab": 1, "torch": 1},
                        "run": {"device": "gpu", "dtype": "bfloat16", "attention": "cudnn", "gpu_name": "H100"}},
            "commands": ["c"], "steps": {"bertbase": 10}, "warmup": {"bertbase": 3},
            "methods": {"bertbase": ["full"]}, "records": [{**rec, "framework": "ftlab"}]}
    md = bench.to_markdown(data)
    assert "on GPU (H100), bfloat16" in md and "peak GPU MB" in md
    assert f"| ftlab | 0.0500 | {fl['flops_per_step'] / 0.05 / 1e12:.1f} | {100 * rec['mfu']:.1f}% |" in md


def test_profile_step_sums_a_traced_step(tmp_path):
    """scripts/profile_step.py on MiniLM BitFit at batch 2 × 16: the trace's XLA operations include the step's
    matmuls, the per-kind sums add up to the per-op ones, and the HLO text is written."""
    import subprocess
    import sys

    out = tmp_path / "p.json"
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "profile_step.py"), "--method", "bitfit",
                    "--batch", "2", "--seq", "16", "--warmup", "1", "--json", str(out), "--hlo",
                    str(tmp_path / "step.hlo")], check=True, capture_output=True, text=True)
    r = json.load(open(out))
    assert any(k.startswith("dot") for k in r["ops"]) and r["total_ms"] > 0
    assert abs(sum(r["kinds"].values()) - r["total_ms"]) < 1e-6 * max(1.0, r["total_ms"])
    assert "dot(" in (tmp_path / "step.hlo").read_text()
