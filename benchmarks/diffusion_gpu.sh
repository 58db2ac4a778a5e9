#!/usr/bin/env bash
# AltDiffusion's text encoder on a CUDA GPU, in about five minutes, from the source tree:
#
#   benchmarks/diffusion_gpu.sh OUTDIR
#
# diffusers is installed from wheels in .whl/ when the machine lacks it (pip download diffusers beside the tree).
# Writes into OUTDIR: tests.log (tests/test_diffusion.py on CUDA: our encoder against diffusers' in float32 and
# bfloat16, which takes varlen attention with query-only rows), diffusion_prompt_encoding_{float32,bfloat16}_cuda.json
# and diffusion_cost_cuda.json (one 512x512 m18-shape image, float32), each with its log.
set -uo pipefail
out=${1:?usage: benchmarks/diffusion_gpu.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -c "import diffusers" 2>/dev/null || pip install -q --no-index --find-links .whl diffusers \
  || pip install -q --no-deps .whl/*.whl
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python -c "import torch, transformers, diffusers; print(torch.__version__, transformers.__version__, diffusers.__version__)"; } > "$out/env.txt" 2>&1
timeout 240 python -m pytest tests/test_diffusion.py -q -p no:cacheprovider -k "cuda or outputs_match or images_match" > "$out/tests.log" 2>&1
echo "tests: exit $?" >> "$out/env.txt"
for dtype in float32 bfloat16; do
  timeout 150 python benchmarks/diffusion_prompt_encoding.py --device cuda --dtype $dtype --repeats 20 \
    --json "$out/diffusion_prompt_encoding_${dtype}_cuda.json" > "$out/encoding_$dtype.log" 2>&1
done
timeout 200 python benchmarks/diffusion_cpu_cost.py --device cuda --steps 5 --json "$out/diffusion_cost_cuda.json" \
  > "$out/cost.log" 2>&1
echo "done" >> "$out/env.txt"
