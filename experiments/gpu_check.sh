#!/usr/bin/env bash
# GPU check: on a fresh GPU machine (JAX, flax, optax and orbax installed), print the
# device, then time the sweep program. Each step runs under its own `timeout` and prints
# every number as it comes; a failed or timed-out step does not stop the next one, and a
# summary comes last. About 8 minutes at most on one H100.
#
#   bash experiments/gpu_check.sh              # the GPU check
#   bash experiments/gpu_check.sh --dry-run    # the same steps with tiny settings (CPU, ~5 min)
#   GPU_CHECK_QUICK=1 bash experiments/gpu_check.sh   # the same as --dry-run
#
# Steps: (0) ml-collections and absl-py, if `import ml_collections` fails: pip install from
# wheels in $GPU_CHECK_WHEELS, ./shared/wheels, ./wheels or ./.whl (no network needed),
# else from the package index; into a folder put on PYTHONPATH; (1) nvidia-smi -L and
# jax.devices(); (a) bench.py, paper setup, K = 1, 256 (the default layout: one vmap);
# (b) the same, K = 256, compute_dtype=bfloat16; (c) the same, K = 256, the exact
# layout (vmap_group=32); (d) numerics.py --check=invariance (seed 1 alone = seed 1 of 3,
# bit for bit?); (e) numerics.py --check=precision (float32 highest vs bfloat16); (f) a
# timed 10,000-step sweep of configs/div.py (27 runs); (g) bench.py, quick setup, K = 256.
#
# Environment: OUT_DIR (default ${OUT:-/tmp/gpu_check}) gets bench_paper.json,
# bench_bf16.json, bench_exact.json, bench_quick.json and div_summary.json; PYTHON
# (default python3); GPU_CHECK_BUDGET_S (default 470; 1500 with --dry-run) bounds the
# whole script: a step gets at most what is left of it. GPU_CHECK_SETUP (with --dry-run
# only): the setup of every bench row (quick, paper or a config file; default paper for (a),
# quick for the others) and, if a config file, of the numerics checks (d) and (e), e.g.
# tests/tiny_config.py: the steps in seconds, not minutes.

set -u
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${GPU_CHECK_QUICK:-0}
for arg in "$@"; do
  case $arg in
    --dry-run | --quick) QUICK=1 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $arg; use --dry-run or nothing" >&2; exit 2 ;;
  esac
done
[[ $QUICK == 0 || $QUICK == 1 ]] || QUICK=1

OUT_DIR=${OUT_DIR:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-$(command -v python3 || command -v python)}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
SITE=$TMP/site # where step (0) installs missing packages
export PY SITE PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}:$SITE"
if [[ $QUICK == 1 ]]; then BUDGET=${GPU_CHECK_BUDGET_S:-1500}; else BUDGET=${GPU_CHECK_BUDGET_S:-470}; fi
START=$SECONDS
SUMMARY=()
FAILED=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME LIMIT_S CMD...: CMD (a program or a function of this script) under `timeout`,
# for at most what is left of the budget.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  ((left < limit)) && limit=$left
  if ((limit < 5)); then
    echo "=== [$name] skipped: the ${BUDGET} s budget is spent"
    SUMMARY+=("$name: skipped (budget spent)")
    FAILED=1
    return 1
  fi
  echo
  echo "=== [$name] at most ${limit} s: $*"
  local t0 rc status
  t0=$(now)
  if declare -F "$1" >/dev/null; then
    timeout -k 10 "$limit" bash -c "$(declare -f have_deps "$1"); $*"
  else
    timeout -k 10 "$limit" "$@"
  fi
  rc=$?
  local dt
  dt=$(since "$t0")
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT after ${limit} s" ;;
    *) status="FAILED (exit status $rc)" ;;
  esac
  [[ $rc == 0 ]] || FAILED=1
  echo "=== [$name] $status, ${dt} s"
  SUMMARY+=("$name: $status, ${dt} s")
  return $rc
}

have_deps() { "$PY" -c "import ml_collections, absl" 2>/dev/null; }

install_deps() {
  if have_deps; then
    echo "ml_collections and absl import: nothing to install"
    return 0
  fi
  local dir
  shopt -s nullglob nocaseglob
  for dir in ${GPU_CHECK_WHEELS:-} shared/wheels wheels .whl; do
    local wheels=("$dir"/ml_collections-*.whl)
    ((${#wheels[@]})) || continue
    "$PY" -c "import absl" 2>/dev/null || wheels+=("$dir"/absl_py-*.whl)
    "$PY" -c "import yaml" 2>/dev/null || wheels+=("$dir"/pyyaml-*.whl)
    echo "installing from $dir: ${wheels[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" \
      && have_deps && break
  done
  shopt -u nullglob nocaseglob
  if ! have_deps; then
    echo "no ml_collections wheel in ${GPU_CHECK_WHEELS:+$GPU_CHECK_WHEELS, }shared/wheels, wheels or .whl: trying the package index"
    timeout 90 "$PY" -m pip install -q --retries 1 --timeout 10 --target "$SITE" ml-collections absl-py
  fi
  have_deps && "$PY" -c "import ml_collections; print('ml_collections from', ml_collections.__file__)"
}

show_device() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "(no nvidia-smi)"; fi
  "$PY" - <<'EOF'
import jax, flax, optax, orbax.checkpoint, ml_collections, grokjax
print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}")
print(f"backend {jax.default_backend()}: {jax.devices()}")
EOF
}

BENCH=("$PY" experiments/bench.py)
if [[ $QUICK == 1 ]]; then
  echo "# gpu_check --dry-run: the same steps with tiny settings"
  PAPER_SETUP=${GPU_CHECK_SETUP:-paper} QUICK_SETUP=${GPU_CHECK_SETUP:-quick}
  PAPER_ARGS=(--quick --setups="$PAPER_SETUP" --ks=1 --k_timeout_s=240)
  BF16_ARGS=(--quick --setups="$QUICK_SETUP" --ks=1 --compute_dtype=bfloat16 --k_timeout_s=240)
  EXACT_ARGS=(--quick --setups="$QUICK_SETUP" --ks=3 --vmap_group=2 --k_timeout_s=240)
  NUM_SETUP=configs/quick.py
  [[ ${GPU_CHECK_SETUP:-} == *.py ]] && NUM_SETUP=$GPU_CHECK_SETUP
  INV_ARGS=(--check=invariance --quick --vmap_group=2 --setup="$NUM_SETUP")
  PREC_ARGS=(--check=precision --quick --settings=highest,bfloat16 --setup="$NUM_SETUP")
  DIV_ARGS=(--config.steps=20 --config.p=7 --config.sweep.seeds=0 --config.sweep.train_fracs=0.5
    --config.model.num_layers=1 --config.model.width=32)
  QUICK_ARGS=(--quick --setups="$QUICK_SETUP" --ks=2 --k_timeout_s=240)
  T_DEPS=120 T_DEV=120 T_A=300 T_BF16=240 T_EXACT=240 T_INV=300 T_C=400 T_D=300 T_B=240
else
  # Measured on one H200 (2026-11-26): paper K=1, 64, 256 took 146 s (a K: ~5 s to start,
  # ~20 s to compile, the steps), quick K=64, 256 85 s, the precision check ~25 s per
  # setting plus start-up, div 20k steps 88 s after compiling. Not yet measured: (b)-(d).
  PAPER_ARGS=(--setups=paper --ks=1,256 --steps=500 --k_timeout_s=100)
  BF16_ARGS=(--setups=paper --ks=256 --steps=500 --compute_dtype=bfloat16 --k_timeout_s=60)
  EXACT_ARGS=(--setups=paper --ks=256 --steps=500 --vmap_group=32 --k_timeout_s=60)
  INV_ARGS=(--check=invariance --vmap_group=32)
  PREC_ARGS=(--check=precision --settings=highest,bfloat16)
  DIV_ARGS=(--config.steps=10000)
  QUICK_ARGS=(--setups=quick --ks=256 --steps=500 --k_timeout_s=50)
  T_DEPS=60 T_DEV=40 T_A=110 T_BF16=65 T_EXACT=65 T_INV=70 T_C=90 T_D=90 T_B=55
fi
echo "# $(date -u +%FT%TZ) $(hostname), python $PY, output to $OUT_DIR, budget ${BUDGET} s"

step deps "$T_DEPS" install_deps
step device "$T_DEV" show_device
step bench_paper "$T_A" "${BENCH[@]}" "${PAPER_ARGS[@]}" --torch=false --out="$OUT_DIR/bench_paper.json"
step bench_bf16 "$T_BF16" "${BENCH[@]}" "${BF16_ARGS[@]}" --torch=false --out="$OUT_DIR/bench_bf16.json"
step bench_exact "$T_EXACT" "${BENCH[@]}" "${EXACT_ARGS[@]}" --torch=false --out="$OUT_DIR/bench_exact.json"
step invariance_check "$T_INV" "$PY" experiments/numerics.py "${INV_ARGS[@]}"
step precision_check "$T_C" "$PY" experiments/numerics.py "${PREC_ARGS[@]}"
DIV_T0=$(now)
if step div_sweep "$T_D" "$PY" experiments/sweep.py --config configs/div.py "${DIV_ARGS[@]}" --workdir="$TMP/div"; then
  DIV_S=$(since "$DIV_T0")
  cp "$TMP/div/summary.json" "$OUT_DIR/div_summary.json" 2>/dev/null
  "$PY" - "$TMP/div" "$DIV_S" <<'EOF'
import json, sys
from pathlib import Path
d, wall = Path(sys.argv[1]), float(sys.argv[2])
runs = len(json.loads((d / "runs.json").read_text()))
steps = json.loads((d / "config.json").read_text())["steps"]
print(f"div sweep: {runs} runs x {steps} steps in {wall:.1f} s wall (start, compile, "
      f"checkpoints and report included): {runs * steps / wall:.0f} run-steps/s")
EOF
fi

step bench_quick "$T_B" "${BENCH[@]}" "${QUICK_ARGS[@]}" --torch=false --out="$OUT_DIR/bench_quick.json"

echo
echo "=== summary ($((SECONDS - START)) s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
"$PY" - "$OUT_DIR"/bench_{paper,bf16,exact,quick}.json <<'EOF'
import json, sys
from pathlib import Path
for name in sys.argv[1:]:
    path = Path(name)
    if not path.is_file():
        print(f"  {path.name}: not written")
        continue
    try:
        rows = json.loads(path.read_text())
    except ValueError as e:
        print(f"  {path.name}: unreadable ({e})")
        continue
    cells = [
        f"K={r['k']} {r['error']}" if "error" in r else
        f"K={r['k']} {r['run_steps_per_s']:.0f} run-steps/s (compile {r.get('compile_s', 0):.1f} s, "
        f"vmap group {r.get('vmap_group')}, {r.get('compute_dtype', 'float32')})"
        for r in rows
    ]
    print(f"  {path.name}: {len(rows)} rows: " + ("; ".join(cells) or "none"))
EOF
exit $FAILED
