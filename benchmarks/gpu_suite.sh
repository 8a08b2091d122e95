#!/usr/bin/env bash
# The top of the GPU queue (benchmarks/gpu_queue.md) in one short run: results JSON under $OUT.
#
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh               # on a CUDA machine, under 8 minutes
#   OUT=/tmp/smoke bash benchmarks/gpu_suite.sh --cpu-smoke     # the same stages at toy sizes on the CPU
#
# Stages, in priority order, each under `timeout` so the whole stays within SUITE_BUDGET_S (default 450 s):
#   1. ab_kv           the prompted-attention key/value join and the mixed-task projection, before vs after
#   2. speed           benchmarks/speed.py, every arm (training, memory, FLOP utilisation, inference, 8 tasks)
#   3. energy          joules per training step and per trained task (NVML energy counter): VPT-deep, the linear
#                      probe and VPT-deep in FP8 against full fine-tuning, same run
#   4. speed_compile   speed.py --compile for full / linear / vpt_deep
#   5. profile         where inference time goes per operator (profile_inference.py)
# A stage that does not fit in the time left is skipped and says so. $OUT/gpu_suite.json lists every stage
# with its command, exit status, seconds and the file it wrote. Without a CUDA GPU (and no --cpu-smoke) the
# suite exits 2 before running anything.
set -u -o pipefail

SMOKE=0
for a in "$@"; do
  case "$a" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument '$a' (use --cpu-smoke, or no argument on a GPU machine)" >&2; exit 2 ;;
  esac
done
if [ -z "${OUT:-}" ]; then
  echo "gpu_suite.sh: set OUT to the folder for the results JSON, e.g. OUT=/tmp/gpu_out bash $0" >&2
  exit 2
fi
mkdir -p "$OUT" || { echo "gpu_suite.sh: cannot create OUT=$OUT; choose a writable folder" >&2; exit 2; }
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python}"
BUDGET="${SUITE_BUDGET_S:-450}"

if [ "$SMOKE" = 0 ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_suite.sh: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU" \
         "machine, or pass --cpu-smoke to check the stages at toy sizes on the CPU" >&2
    exit 2
  fi
  DEV=cuda
  MODEL=timm:vit_base_patch16_224; KW='{}'; B=128; DT=bfloat16
  STEPS=8; WARM=2; ESTEPS=20; EBLOCKS=3; TASKS=8
  ARMS="full linear lora vpt_shallow vpt_deep vpt_prefix pixel_pad vpt_deep_lean vpt_deep_lean50"
  nvidia-smi -q > "$OUT/nvidia_smi.txt" 2>&1 || true
else
  DEV=cpu
  MODEL=timm:vit_tiny_patch16_224; KW='{"img_size": 32}'; B=2; DT=float32
  STEPS=1; WARM=0; ESTEPS=1; EBLOCKS=1; TASKS=2
  ARMS="full linear vpt_deep vpt_prefix"  # pixel_pad's 30 px frame needs more than 32 px images
fi

START=$(date +%s)
STAGES=()
stage() {  # stage NAME EST_SECONDS OUTFILE CMD...
  local name="$1" est="$2" file="$3"; shift 3
  local now left rc t0 t1
  now=$(date +%s); left=$(( BUDGET - (now - START) ))
  if [ "$SMOKE" = 0 ] && [ "$left" -lt "$est" ]; then
    echo "== $name: skipped (${left}s left of ${BUDGET}s, needs about ${est}s)" >&2
    STAGES+=("{\"stage\": \"$name\", \"skipped\": \"${left}s left of the ${BUDGET}s budget, needs about ${est}s\"}")
    return
  fi
  [ "$left" -lt 30 ] && left=30
  [ "$SMOKE" = 1 ] && left=1200  # toy sizes on a (possibly shared) CPU: checks the stages, not the budget
  echo "== $name: $*" >&2
  t0=$(date +%s)
  timeout "$left" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s)
  tail -n 12 "$OUT/$name.log" >&2
  local cmd="$*"; cmd="${cmd//\\/\\\\}"; cmd="${cmd//\"/\\\"}"  # JSON-escaped
  STAGES+=("{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(( t1 - t0 )), \"file\": \"$file\", \"command\": \"$cmd\"}")
}

stage ab_kv 60 ab_kv_$DEV.json "$PY" "$HERE/ab_kv.py" --model "$MODEL" --model-kwargs "$KW" --batch "$B" \
  --dtype "$DT" --device "$DEV" --steps "$STEPS" --warmup "$WARM" --tasks "$TASKS" --out "$OUT/ab_kv_$DEV.json"
stage speed 150 speed_$DEV.json "$PY" "$HERE/speed.py" --model "$MODEL" --model-kwargs "$KW" --batch "$B" \
  --dtype "$DT" --device "$DEV" --steps "$STEPS" --warmup "$WARM" --infer-steps "$STEPS" --tasks "$TASKS" --arms $ARMS --out "$OUT/speed_$DEV.json"
stage energy 90 energy_$DEV.json "$PY" "$HERE/energy.py" --model "$MODEL" --model-kwargs "$KW" --batch "$B" \
  --dtype "$DT" --device "$DEV" --steps "$ESTEPS" --blocks "$EBLOCKS" --warmup "$WARM" --out "$OUT/energy_$DEV.json"
if [ "$SMOKE" = 0 ]; then
  stage speed_compile 150 speed_${DEV}_compile.json "$PY" "$HERE/speed.py" --model "$MODEL" --batch "$B" \
    --dtype "$DT" --device "$DEV" --compile --arms full linear vpt_deep --tasks 0 --out "$OUT/speed_${DEV}_compile.json"
  stage profile 40 profile_inference_$DEV.json "$PY" "$HERE/profile_inference.py" \
    --arms full vpt_shallow vpt_deep vpt_prefix --device "$DEV" --out "$OUT/profile_inference_$DEV.json"
else
  STAGES+=("{\"stage\": \"speed_compile\", \"skipped\": \"GPU only (compiling on the CPU takes minutes)\"}")
  STAGES+=("{\"stage\": \"profile\", \"skipped\": \"GPU only\"}")
fi

FAILED=0
{
  echo "{\"mode\": \"$([ "$SMOKE" = 1 ] && echo cpu-smoke || echo gpu)\", \"budget_s\": $BUDGET,"
  echo " \"seconds\": $(( $(date +%s) - START )), \"commit\": \"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)\","
  echo " \"stages\": ["
  for i in "${!STAGES[@]}"; do
    sep=","; [ "$i" = $(( ${#STAGES[@]} - 1 )) ] && sep=""
    echo "  ${STAGES[$i]}$sep"
  done
  echo " ]}"
} > "$OUT/gpu_suite.json"
for s in "${STAGES[@]}"; do
  case "$s" in *'"rc": 0,'*|*'"skipped"'*) ;; *) FAILED=1 ;; esac
done
echo "gpu_suite.sh: wrote $OUT/gpu_suite.json ($(( $(date +%s) - START ))s)" >&2
exit $FAILED
