#!/usr/bin/env bash
# On a lent GPU machine (bin/gpu-kit's last device call): continue the stable run on CUDA, then hand the
# checkpoint back in parts. MINUTES: training time; BATCH: small-patch batch; DEVICE: cuda (cpu to rehearse
# here); PRECISION: float32 (TF32 convolutions on the GPU) as every step of the run so far, not bfloat16, which
# would round the latents and their means before the rate sees them (not measured on a GPU yet);
# OUT: where the device tool collects files (set there).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MINUTES:=7}" "${BATCH:=128}" "${DEVICE:=cuda}" "${PRECISION:=float32}" "${OUT:?OUT must name the folder that comes back}"
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/vaecodec-site}
# constriction from the carried wheel (nothing can be fetched there); the rest is the device's own.
"$PYTHON" -c "import constriction" 2>/dev/null || {
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
DATA=${DATA:-/tmp/vaecodec-train}
mkdir -p "$DATA"
count=$(find .gpu -path '.gpu/data-*' -type f | wc -l)  # the parts that reached this machine
cp .gpu/data-*/* "$DATA"/
echo "images: $count; $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
# A machine given back between the calls keeps none of the earlier parts: never train on a subset.
[ "$count" -eq "$(cat .gpu/ckpt/images.txt)" ] || { echo "error: $count images here, $(cat .gpu/ckpt/images.txt) packed: a part is missing (the machine was given back between calls?)"; exit 1; }
"$PYTHON" -u -m vaecodec train .gpu/ckpt/cc-stable.pt --data "$DATA" --device "$DEVICE" --minutes "$MINUTES" \
    --batch-size "$BATCH" --precision "$PRECISION" --data-workers "$(nproc)" --save-every 120 --log "$OUT/gpu-train.log"
mkdir -p "$OUT/ckpt"
"$PYTHON" bin/gpu-kit split .gpu/ckpt/cc-stable.pt "$OUT/ckpt"
