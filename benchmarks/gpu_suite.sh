#!/usr/bin/env bash
# Proves the GPU paths on one CUDA machine. The default run takes at most five minutes (BUDGET=300), so that a second,
# targeted run fits in a short lease:
#
#   benchmarks/gpu_suite.sh OUTDIR                       # tests, bench, jpeg: the numbers the README's GPU table quotes
#   STEPS="quant train compile" benchmarks/gpu_suite.sh OUTDIR   # the rest, in a second run
#
# Runs from the source tree (PYTHONPATH=src) with what a GPU machine already has: PyTorch, transformers, Pillow,
# numpy, tokenizers, safetensors, typer, rich, pytest. torchao, for the quantized engines, is installed from
# wheels in .whl/ when it is missing (pip download them beside the tree; no package registry is needed).
# Every step is time-boxed and writes its own JSON and log into OUTDIR, so one failing step loses nothing else:
#
#   env.txt          the machine, versions and features (variable-length attention, torchao, Triton)
#   summary.txt      each step's command, exit status, time and last lines
#   suite.log        every step's whole output, one after the other; the tests step runs tests/test_cuda.py
#                    (parity on CUDA, fast paths within tolerance, CUDA-graph replay, the compiled image path),
#                    tests/test_fast_paths.py and tests/test_engines.py
#   bench_cuda.json  altclip bench at B=256 and B=1: the default bf16 engine (what Embedder picks: the image tower
#                    compiled for large batches, CUDA graphs for small ones), float32, transformers bf16
#   jpeg_cuda.json   JPEG files -> embeddings, exact and fast preprocessing, and their distance
#   bench_quant.json the torchao int8 / int4 engines                      (STEPS=quant)
#   train_cuda.json  one training step of each stage, bf16: pairs/s and peak memory   (STEPS=train)
#   bench_compile.json  bf16 eager, bf16 + graphs, bf16 + compile, fp16, each alone  (STEPS=compile)
#
# STEPS picks steps (default "tests bench jpeg"); BUDGET (seconds, default 300) is the whole run's limit.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
steps=${STEPS:-tests bench jpeg}
budget=${BUDGET:-300}
start=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

left() { echo $((budget - (SECONDS - start))); }
# run NAME SECONDS COMMAND...: time-boxed to the smaller of SECONDS and what is left, its output appended to suite.log.
run() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  (( remaining < limit )) && limit=$remaining
  if (( limit < 20 )); then echo "== $name: skipped, out of time" | tee -a "$out/summary.txt"; return; fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $((SECONDS - t0))s" | tee -a "$out/summary.txt"
  tail -n 5 "$work/$name.log" | sed 's/^/   | /' | tee -a "$out/summary.txt"
  { echo "===== $name: $* (exit $rc)"; cat "$work/$name.log"; } >>"$out/suite.log"
}
want() { [[ " $steps " == *" $1 "* ]]; }

if ! python3 -c "import torchao" 2>/dev/null && ls .whl/torchao-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$work/site"
fi

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  python3 - <<'EOF'
import importlib, importlib.util, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("transformers", "torchao", "torchvision", "triton", "PIL", "tokenizers", "safetensors", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "missing:", type(e).__name__, e)
from altclip.modeling import layers
print("variable-length attention (torch.nn.attention.varlen):", layers.varlen_kernel() is not None)
print("triton (torch.compile on the GPU):", importlib.util.find_spec("triton") is not None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, p.total_memory // 2**20, "MiB", p.multi_processor_count, "SMs")
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

ckpt="$work/altclip-random"
bench=(python3 -m altclip bench --model "$ckpt" --device cuda --image-batch 256 --text-batch 256 --min-seconds 2)

want tests && run tests 80 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fast_paths.py \
  tests/test_engines.py -rs
if want bench || want quant || want compile || want jpeg; then
  run checkpoint 60 python3 -m altclip random-checkpoint --shape BAAI/AltCLIP "$ckpt"
fi
want bench && run bench 110 "${bench[@]}" --engines exact,default-bf16,transformers-bf16 \
  --compare transformers -o "$out/bench_cuda.json"
want jpeg && run jpeg 60 python3 benchmarks/jpeg_throughput.py --model "$ckpt" --images 4096 --batch 256 \
  --workers "$(nproc)" -o "$out/jpeg_cuda.json"
want train && run train 80 python3 benchmarks/train_step.py --device cuda --batch 128 --steps 5 -o "$out/train_cuda.json"
want quant && run quant 90 "${bench[@]}" --engines exact,int8-bf16,int8wo-bf16,int4-bf16 -o "$out/bench_quant.json"
want compile && run compile 150 "${bench[@]}" --engines bf16,bf16-graphs,bf16-compile,fp16 -o "$out/bench_compile.json"
echo "== done in $((SECONDS - start))s" | tee -a "$out/summary.txt"
