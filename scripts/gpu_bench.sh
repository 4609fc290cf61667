#!/usr/bin/env bash
# Issue 11's GPU measurements, for a lent GPU machine whose Python already has jax (CUDA), flax, optax, torch,
# transformers and peft (no install: ftlab runs from this checkout via PYTHONPATH). Weights are random (the
# shipped checkpoints' configs, RANDOM_CONFIGS in scripts/bench.py): step times do not depend on their values.
#
#   bash scripts/gpu_bench.sh mfu OUT      # full fine-tuning MFU: SmolLM2 seq 1024, BERT-base seq 512 (bf16)
#   bash scripts/gpu_bench.sh minilm OUT   # the CPU table's MiniLM rows on the GPU, bf16
#   bash scripts/gpu_bench.sh smollm2 OUT  # the CPU table's SmolLM2 rows (+ greedy decoding) on the GPU, bf16
#
# Extra arguments after OUT go to bench.py (e.g. `--update --methods houlsby` to re-measure some rows of an
# existing OUT/<part>.json). Writes OUT/<part>.json and OUT/<part>.md (scripts/bench.py's format) and OUT/<part>.log.
set -u
part=$1
out=${2:-docs/gpu}
shift 2 || shift $#
extra=("$@")   # passed on to bench.py (e.g. --update --methods houlsby,prefix)
mkdir -p "$out"
export PYTHONPATH=$PWD FTLAB_XLA_DEFAULTS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$py - <<'PY'
import time, jax, jax.numpy as jnp, flax, optax, torch, transformers, peft
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__,
      "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, flush=True)
# The bf16 matmul ceiling of this card as found (8192^3, random data, median of 10 after 3 warm-ups).
a = jax.random.normal(jax.random.key(0), (8192, 8192), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (8192, 8192), jnp.bfloat16)
f = jax.jit(lambda x, y: x @ y)
for _ in range(3):
    f(a, b).block_until_ready()
ts = []
for _ in range(10):
    t = time.perf_counter(); f(a, b).block_until_ready(); ts.append(time.perf_counter() - t)
ts.sort()
print(f"measured bf16 matmul 8192^3: {2 * 8192**3 / ts[5] / 1e12:.0f} TFLOP/s", flush=True)
PY
common=(--device gpu --dtype bfloat16 --random-weights /tmp/ftlab-rw)
case $part in
  mfu)
    $py scripts/bench.py "${common[@]}" --attention cudnn --models smollm2_1k,bertbase --steps 10 --warmup 3 \
        "${extra[@]}" --out "$out/mfu" 2>&1 | tee -a "$out/mfu.log" ;;
  mfu_xla)
    $py scripts/bench.py "${common[@]}" --attention xla --frameworks ftlab --models smollm2_1k,bertbase \
        --batch smollm2_1k=8 --steps 10 --warmup 3 "${extra[@]}" --out "$out/mfu_xla" 2>&1 | tee -a "$out/mfu_xla.log" ;;
  minilm|smollm2)
    $py scripts/bench.py "${common[@]}" --attention cudnn --models "$part" --steps 20 --warmup 5 \
        "${extra[@]}" --out "$out/$part" 2>&1 | tee -a "$out/$part.log" ;;
  *) echo "unknown part $part (mfu | mfu_xla | minilm | smollm2)"; exit 2 ;;
esac
