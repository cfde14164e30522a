#!/usr/bin/env bash
# Issue 16's GPU checks in one run, for a session that is lent a GPU (about 8 minutes on an H100):
#   1. host-device synchronizations in forward + loss (`bench_speed.py --check-syncs`, fp32 and bf16);
#   2. the speed table on the GPU: demo, Swin-T 224 and Swin V2-T 256, fp32 and bf16 autocast;
#   3. `vtagml demo` on the GPU (metrics.json: training images/s against the 1000/s target);
#   4. the data path on the machine's cores (`bench_synthetic.py`);
#   5. Swin-B 448 (the paper's backbone), while the time allows.
# Each step has its own time limit, so one that hangs costs only its own minutes; every output goes
# to $OUT (the device tool brings it back) or ./gpu-checks. Runs from a checkout without installing:
# PYTHONPATH=src (the GPU image holds torch, timm, Lightning, torchmetrics and safetensors).
#   bash benchmarks/gpu_checks.sh            # everything
#   STEPS="1 2" bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
steps=${STEPS:-1 2 3 4 5}
status=0

step() {  # step NUMBER SECONDS LOG COMMAND...: run COMMAND under a time limit, its output to $out/LOG
    local number=$1 seconds=$2 log=$3
    shift 3
    [[ " $steps " == *" $number "* ]] || return 0
    local start=$SECONDS
    echo "== step $number: $* (limit ${seconds} s)" | tee -a "$out/$log"
    timeout "$seconds" "$@" 2>&1 | tee -a "$out/$log"
    local rc=${PIPESTATUS[0]}
    echo "== step $number: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$log"
    [[ $rc == 0 ]] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt" 2>&1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$out/device.txt" 2>&1
step 1 120 syncs.txt python benchmarks/bench_speed.py --device cuda --check-syncs --cases demo,swin_t
step 2 240 speed.txt python benchmarks/bench_speed.py --device cuda --cases demo,swin_t,swinv2_t --repeats 3
step 3 240 demo.txt python -m vtagml.demo --out "$out/demo"
[[ -f "$out/demo/metrics.json" ]] && cp "$out/demo/metrics.json" "$out/demo_metrics.json"
step 4 120 synthetic.txt python benchmarks/bench_synthetic.py --n 300 --repeat 2 --scenes 2000 --workers 1,4,15
step 5 180 speed_swin_b.txt python benchmarks/bench_speed.py --device cuda --cases swin_b --repeats 3
rm -rf "$out/demo"  # only metrics.json comes back (the device tool returns at most 8 files)
exit $status
