#!/usr/bin/env bash
# Issue 16's GPU checks, prepared for a session that is lent a GPU. Two runs, each under the device
# tool's 10-minute limit per command (at most 9 and 5 minutes):
#   STEPS="1 2 3 4" bash benchmarks/gpu_checks.sh    # the default
#     1. host-device synchronizations in forward + loss (`bench_speed.py --check-syncs`, fp32, bf16);
#     2. the speed table on the GPU: demo, Swin-T 224, Swin V2-T 256, fp32 and bf16 autocast;
#     3. `vtagml demo` on the GPU (metrics.json: training images/s against the 1000/s target);
#     4. the data path on the machine's cores (`bench_synthetic.py`);
#   STEPS=5 bash benchmarks/gpu_checks.sh
#     5. Swin-B 448, the paper's backbone (fp32, bf16; the official structure trains in ~40 GiB).
# Each step runs under its own time limit (a step that hangs costs only its own minutes) and writes
# to $OUT (what the device tool brings back) or ./gpu-checks. From a checkout, nothing installed:
# PYTHONPATH=src (the GPU image holds torch, timm, Lightning, torchmetrics and safetensors).
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-1 2 3 4}
if [[ ! "$steps" =~ ^[1-5]( [1-5])*$ ]]; then
    echo "STEPS must be step numbers 1-5 separated by spaces, got '$steps'" >&2
    exit 2
fi
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
status=0

step() {  # step NUMBER SECONDS LOG COMMAND...: COMMAND under a time limit, its output also in $out/LOG
    local number=$1 seconds=$2 log=$3
    shift 3
    [[ " $steps " == *" $number "* ]] || return 0
    local start=$SECONDS
    echo "== step $number: $* (limit ${seconds} s)" | tee -a "$out/$log"
    timeout -k 10 "$seconds" "$@" 2>&1 | tee -a "$out/$log"
    local rc=${PIPESTATUS[0]}
    echo "== step $number: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$log"
    [[ $rc == 0 ]] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$out/device.txt" 2>&1
step 1 75 syncs.txt python benchmarks/bench_speed.py --device cuda --check-syncs --cases demo,swin_t
step 2 170 speed.txt python benchmarks/bench_speed.py --device cuda --cases demo,swin_t,swinv2_t --repeats 3
step 3 230 demo.txt python -m vtagml.demo --out "$out/demo"
if [[ -d "$out/demo" ]]; then  # only metrics.json comes back (the device tool returns at most 8 files)
    cp "$out/demo/metrics.json" "$out/demo_metrics.json" 2>/dev/null
    rm -rf "$out/demo"
fi
step 4 60 synthetic.txt python benchmarks/bench_synthetic.py --n 300 --repeat 2 --scenes 2000 --workers 1,4,15
step 5 280 speed_swin_b.txt python benchmarks/bench_speed.py --device cuda --cases swin_b --repeats 3
exit $status
