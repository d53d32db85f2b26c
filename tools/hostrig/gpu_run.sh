#!/bin/bash
# One GPU-machine run of the host rig: unpack the bundle, make the checkpoints there, run the checks.
#   tools/hostrig/gpu_run.sh HOST BUNDLE_DIR DIFFUSERS_WHEELS_DIR OUT BUDGET_SECONDS [PHASES]
# Run from VAE Precision's folder (the copy that travelled); writes at most 6 files into OUT.
set -u
HOST=$1 BUNDLE=$2 WHEELS=$3 OUT=$4 BUDGET=$5 PHASES=${6:-default,hostfp32}
HERE=$(cd "$(dirname "$0")" && pwd)
EXT=$(cd "$HERE/../.." && pwd)
W=/tmp/rig-$HOST
t0=$(date +%s)
mkdir -p "$W" "$OUT/$HOST"
R=$OUT/$HOST
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
  python3 -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'
} > "$R/env.txt" 2>&1
tar -xJf "$BUNDLE/webui.tar.xz" -C "$W" && tar -xJf "$BUNDLE/site312.tar.xz" -C "$W" || { echo "unpack failed" >> "$R/env.txt"; exit 1; }
python3 -m pip install -q --no-deps --no-index --target /tmp/rig-diffusers "$WHEELS"/*.whl >> "$R/env.txt" 2>&1
echo "unpacked in $(( $(date +%s) - t0 )) s" >> "$R/env.txt"
# The checkpoints: the GPU machine's own packages plus diffusers (for the bench's VAE construction).
if [ ! -f "$W/webui/models/Stable-diffusion/rig-sdxl.safetensors" ]; then
  mkdir -p /tmp/rig-extra && ln -sfn $W/site312/omegaconf $W/site312/antlr4 /tmp/rig-extra/
  PYTHONPATH=/tmp/rig-diffusers:$EXT:/tmp/rig-extra timeout 300 python3 "$HERE/make_checkpoints.py" --webui "$W/webui" \
    --open-clip-config "$W/site312/open_clip/model_configs/ViT-bigG-14.json" > "$R/checkpoints.log" 2>&1
fi
echo "checkpoints ready after $(( $(date +%s) - t0 )) s" >> "$R/env.txt"
timeout $((BUDGET + 90)) python3 "$HERE/check.py" --host "$HOST" --webui "$W/webui" --out "$R" --plan gpu \
  --python python3 --site "$W/site312" --extension "$EXT" --budget "$BUDGET" --phases "$PHASES" > "$R/check.log" 2>&1
echo "checks done after $(( $(date +%s) - t0 )) s (rc $?)" >> "$R/env.txt"
tar -czf "$R/host-logs.tgz" -C "$R" $(cd "$R" && ls host-*.log 2>/dev/null) && rm -f "$R"/host-*.log
