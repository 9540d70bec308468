#!/usr/bin/env bash
# The one-call check for a lent GPU (one H100, ≤ 10 minutes a command, no network): parts run
# cheapest first, each under its own timeout, every one even when an earlier one failed:
#
#   setup    install the carried wheels (.whl/, made here by tools/gpu_wheels.sh) whose import is
#            missing on that machine into a temporary --target dir; check every import the parts need
#   kernels  tools/gpu_check.py --no-compile: mixed_r1.kernels at real sizes (B·T = 32,768,
#            V = 151,665, bf16) against float64/float32 references, then time, bandwidth and peak
#            memory vs torch eager, Liger-Kernel and the HBM floor (no torch.compile builds)
#   train    tools/gpu_train_check.py --device cuda: GRPO steps on the megatron-core backend over
#            NCCL with HF-generate rollout, bf16 with fp32 masters, a bitwise weight-sync check,
#            the fused loss on real shapes; head_dim 128, 28 query / 4 KV heads, 2 layers
#   compile  (opt-in, --compile; last) the torch.compile columns beside ours
#
# then prints ONE summary table (part, status, seconds, key numbers) and writes it, with every
# part's full output, to $OUT/gpu_check.md when $OUT is set, to --out FILE when given, else to
# runs/gpu_check-<time>.md. Exit status 0 when every part that ran passed, 1 otherwise, 2 on a
# usage error or (without --dry-run) when no NVIDIA GPU is visible.
#
#   bash tools/gpu_check.sh [--compile] [--parts kernels,train,compile] [--reps N] [--out FILE]
#   bash tools/gpu_check.sh --dry-run     # the same parts at tiny sizes on this CPU (the suite):
#                                         # Triton under TRITON_INTERPRET=1, the training check
#                                         # with --device cpu over gloo on the tiny model
#
# On the device tool: `bash tools/gpu_wheels.sh` here once, then one call with carry [".whl"]
# and the command `bash tools/gpu_check.sh` (about 5-8 minutes without --compile); the table
# comes back as gpu_check.md. Timeouts: setup 60 s, kernels 180 s, train 240 s, compile 150 s,
# each cut to what is left of GPU_CHECK_BUDGET (570 s: a call's command may run 10 minutes); with
# --compile after a slow run, give the compile part a call of its own (--parts compile).
# PYTHON=... picks the interpreter (default python3). Test hooks: GPU_CHECK_FAIL_PART=<part>[,...]
# makes those parts fail after running (the suite checks that later parts still run);
# GPU_CHECK_TIMEOUT_<PART>=seconds overrides a part's timeout.
set -uo pipefail  # no -e: a failing part must not skip the ones after it
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
DRY=0 COMPILE=0 OUTFILE="" REPS="" PARTS="kernels,train"
usage() { echo "gpu_check: $1 (usage: bash tools/gpu_check.sh [--dry-run] [--compile] [--parts LIST] [--reps N] [--out FILE])" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --compile) COMPILE=1 ;;
    --parts) [ $# -ge 2 ] || usage "--parts needs a value"; PARTS="$2"; shift ;;
    --reps) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage "--reps needs a positive integer"; REPS="$2"; shift ;;
    --out) [ $# -ge 2 ] || usage "--out needs a file"; OUTFILE="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument '$1'" ;;
  esac
  shift
done
[ "$COMPILE" = 1 ] && [[ ",$PARTS," != *,compile,* ]] && PARTS="$PARTS,compile"
for p in ${PARTS//,/ }; do
  case "$p" in kernels|train|compile) ;; *) usage "unknown part '$p' in --parts (kernels, train, compile)" ;; esac
done
if [ "$DRY" = 0 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; }; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); run it on a GPU machine, or --dry-run here" >&2
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SITE="$WORK/site"  # the carried wheels go here; on the path from the start (empty until setup)
export PYTHONPATH=".:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 MIXED_R1_PLATFORM="${MIXED_R1_PLATFORM:-cpu}"  # cuda-shaped if asked
else
  unset TRITON_INTERPRET MIXED_R1_KERNEL_BACKEND MIXED_R1_PLATFORM
fi
export PY SITE DRY
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
export WHEELS
STARTED="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
# the whole call stays inside the device tool's 10 minutes a command: the parts' timeouts
# (60 + 180 + 240 s, +150 s with --compile) are cut to what is left of this budget
BUDGET="${GPU_CHECK_BUDGET:-570}"
SECONDS=0
ROWS=()
FAILED=0

# setup: install what is missing from the carried wheels, then check every import the parts need
setup_part() {
  if [ "$DRY" = 1 ]; then echo "device: CPU (dry run)"; DEV="CPU (dry run)"
  else
    DEV="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n1)"
    echo "device: $DEV"
  fi
  local files=() names=() missing=() spec dist ver norm whl
  # the listed packages whose import name is not found here (one interpreter start for all)
  while read -r spec; do
    dist="${spec%%==*}"; ver="${spec##*==}"
    norm="$(echo "$dist" | sed -E 's/[-_.]+/_/g' | tr 'A-Z' 'a-z')"
    whl="$(ls "$WHEELS/$norm-$ver-"*.whl 2>/dev/null | head -n1 || true)"
    if [ -n "$whl" ]; then files+=("$whl"); names+=("$dist")
    else missing+=("$dist"); fi
  done < <(awk '!/^[[:space:]]*(#|$)/ {print $1, $2}' tools/gpu_wheels.txt | "$PY" -c '
import importlib.util, sys
for line in sys.stdin:
    spec, mod = line.split()
    try:
        found = importlib.util.find_spec(mod) is not None
    except ImportError:  # a parent package is missing
        found = False
    if not found:
        print(spec)')
  if [ "${#files[@]}" -gt 0 ]; then
    echo "installing from $WHEELS into $SITE: ${names[*]}"
    if ! PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "${files[@]}"; then
      echo "pip failed; unpacking the wheels instead"
      for whl in "${files[@]}"; do "$PY" -m zipfile -e "$whl" "$SITE" || return 1; done
    fi
  fi
  [ "${#missing[@]}" -eq 0 ] || echo "not importable and not carried (bash tools/gpu_wheels.sh, carry .whl): ${missing[*]}"
  local mods
  mods="torch triton transformers $(awk '!/^[[:space:]]*(#|$)/ {printf "%s ", $2}' tools/gpu_wheels.txt)"
  "$PY" - "$DEV" "${names[*]:-none}" $mods <<'EOF'
import importlib, sys
dev, installed, mods = sys.argv[1], sys.argv[2], sys.argv[3:]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:  # noqa: BLE001 -- any import failure is reported the same way
        bad.append(m)
        print(f"[FAIL] import {m}: {type(exc).__name__}: {exc}")
v = {m: getattr(sys.modules.get(m), "__version__", "missing") for m in ("torch", "triton", "transformers")}
cuda = getattr(getattr(sys.modules.get("torch"), "version", None), "cuda", None)
print(f"python {sys.version.split()[0]}, torch {v['torch']} (cuda {cuda}), triton {v['triton']}, "
      f"transformers {v['transformers']}")
print(f"SUMMARY: {dev}; python {sys.version.split()[0]}, torch {v['torch']}, triton {v['triton']}; "
      f"installed from the carried wheels: {installed}" + (f"; NOT importable: {', '.join(bad)}" if bad else ""))
sys.exit(1 if bad else 0)
EOF
}
export -f setup_part

# run_part NAME TIMEOUT_S CMD...: run one part under its timeout (cut to what is left of the
# call's budget), tee its output to a log, add a row
run_part() {
  local name="$1" limit="$2" t0 t1 rc status key var left
  shift 2
  var="GPU_CHECK_TIMEOUT_$(echo "$name" | tr 'a-z' 'A-Z')"
  limit="${!var:-$limit}"
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    ROWS+=("| $name | FAIL (no time left) | 0 | ${left} s of the ${BUDGET} s budget left: give it a call of its own |")
    FAILED=1; echo; echo "=== gpu_check part: $name: no time left in the call's budget"; return
  fi
  [ "$limit" -le "$left" ] || limit="$left"
  echo
  echo "=== gpu_check part: $name (timeout ${limit}s): $*"
  t0="$(date +%s.%N)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  rc="${PIPESTATUS[0]}"
  if [[ ",${GPU_CHECK_FAIL_PART:-}," == *",$name,"* ]]; then
    echo "gpu_check: part $name made to fail (GPU_CHECK_FAIL_PART)" | tee -a "$WORK/$name.log"
    [ "$rc" = 0 ] && rc=1
  fi
  t1="$(date +%s.%N)"
  case "$rc" in
    0) status=PASS ;;
    124|137) status="TIMEOUT (${limit} s)" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || FAILED=1
  key="$(grep -a '^SUMMARY: ' "$WORK/$name.log" | tail -n1 | sed 's/^SUMMARY: //; s/|/\\|/g')"
  ROWS+=("| $name | $status | $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", b - a}') | ${key:-see its log} |")
  echo "=== gpu_check part: $name: $status"
}

skip_part() { ROWS+=("| $1 | SKIP | 0 | $2 |"); echo; echo "=== gpu_check part: $1: skipped ($2)"; }

want() { [[ ",$PARTS," == *",$1,"* ]]; }

KARGS=(--no-compile) CARGS=(--compile-only) TARGS=(--device cuda)
if [ "$DRY" = 1 ]; then
  KARGS+=(--cpu-smoke) CARGS+=(--cpu-smoke) TARGS=(--device cpu --steps 2)
fi
[ -n "$REPS" ] && KARGS+=(--reps "$REPS") && CARGS+=(--reps "$REPS")

run_part setup 60 bash -c setup_part
if want kernels; then run_part kernels 180 "$PY" tools/gpu_check.py "${KARGS[@]}"
else skip_part kernels "not in --parts"; fi
if want train; then run_part train 240 "$PY" tools/gpu_train_check.py "${TARGS[@]}"
else skip_part train "not in --parts"; fi
if want compile; then run_part compile 150 "$PY" tools/gpu_check.py "${CARGS[@]}"
else skip_part compile "opt-in: --compile"; fi

TABLE="$WORK/table.md"
{
  echo "### gpu_check$([ "$DRY" = 1 ] && echo ' --dry-run'), $STARTED"
  echo
  echo "| part | status | s | key numbers |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} > "$TABLE"
REPORT="$WORK/report.md"
{
  cat "$TABLE"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); command: tools/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry-run') --parts $PARTS${REPS:+ --reps $REPS}"
  for f in setup kernels train compile; do
    [ -f "$WORK/$f.log" ] || continue
    printf '\n## %s\n\n```text\n' "$f"
    cat "$WORK/$f.log"
    printf '```\n'
  done
} > "$REPORT"
TARGETS=()
[ -n "$OUTFILE" ] && TARGETS+=("$OUTFILE")
[ -n "${OUT:-}" ] && TARGETS+=("$OUT/gpu_check.md")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS+=("runs/gpu_check-$(date -u +%Y%m%d-%H%M%S).md")
echo
cat "$TABLE"
for t in "${TARGETS[@]}"; do
  mkdir -p "$(dirname "$t")" && cp "$REPORT" "$t.tmp" && mv "$t.tmp" "$t" && echo "gpu_check: report written to $t"
done
exit "$FAILED"
