#!/usr/bin/env bash
# The GPU benchmark as one prepared call (fits 10 minutes on a datacenter GPU): loratab on native
# wgpu (Vulkan) against PyTorch + PEFT on CUDA, f32 with TF32 off, the same cases side by side.
#
#   tools/bench_gpu.sh [OUT_DIR]        # default: $OUT or target/bench-gpu
#
# Uses a prebuilt binary if one is at $LORATAB_BIN (e.g. carried to the device machine), else
# builds the release binary. PYTHON (default: python3) must have torch with CUDA, transformers and
# peft. Writes OUT_DIR/{table.md,bench.json,env.txt,log.txt}; record table.md in BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-target/bench-gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  vulkaninfo --summary 2>&1 | grep -E "deviceName|driverName|apiVersion" || true
  "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 || true
  nproc; grep -m1 "model name" /proc/cpuinfo
} > "$out/env.txt"
cat "$out/env.txt"

bin=${LORATAB_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin loratab 2>&1 | tail -3
  bin=${CARGO_TARGET_DIR:-target}/release/loratab
fi

# Larger batches than on a CPU: a GPU needs rows to fill it. B·T ≤ ~650 keeps GPT-2's logits in
# one 128 MiB binding where the driver caps bindings there.
args=(--models default,gpt2,smollm2 --seqs 128,256 --batch 2 --steps 5 --warmup 2
      --forward-models default,gpt2 --ranks 1,4,8,16,64 --forward-reps 15)
torch=(--torch "$py" --torch-device cuda)
if ! "$py" -c "import torch, peft, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "PyTorch with CUDA, transformers or peft is missing: loratab side only" | tee -a "$out/env.txt"
  torch=()
fi
timeout 540 "$bin" bench "${args[@]}" "${torch[@]}" --json "$out/bench.json" > "$out/table.md" 2> "$out/log.txt"
rc=$?
cat "$out/table.md"; tail -5 "$out/log.txt"
exit $rc
