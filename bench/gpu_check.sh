#!/usr/bin/env bash
# The GPU check of issue #18, as one command on a machine with one CUDA GPU:
#
#     bash bench/gpu_check.sh OUT        # or: OUT=dir bash bench/gpu_check.sh
#
# From the repository root, on a bare machine (Python 3.10+ and the NVIDIA driver,
# nothing else installed by hand), in under 8 minutes: a fresh venv, the CUDA build
# of torch (`pip install torch` from the default index is the CUDA build on Linux
# x86_64; pinned to pyproject's major version), `pip install -e .[dev]`,
# `pytest -m gpu`, then bench/gpu.py. Every part runs under `timeout` and inside one
# overall budget; a failing part is recorded and the next one still runs. Exit
# status 1 if any part failed, 0 if all passed.
#
# OUT receives seven files, no folders:
#   summary.txt       one line per part (ok / FAILED / skipped, exit status, seconds), versions, commit
#   nvidia-smi.txt    `nvidia-smi -q`
#   setup.log         venv, torch and project installs, the torch/CUDA probe
#   pytest.log        `pytest -m gpu` (collection, then the run with -rA)
#   pytest-junit.xml  its JUnit XML
#   gpu-bench.log     bench/gpu.py's output
#   gpu.json          bench/gpu.py's figures (bench/report.py's GPU section reads them)
#
# Environment:
#   GENTRAIN_GPU_CHECK_CPU=1      dry run without a GPU: installs the CPU torch
#                                 (GENTRAIN_GPU_CHECK_TORCH_SPEC, default torch==2.13.0, the README's pin),
#                                 runs the same parts; the GPU tests skip and the bench runs
#                                 --allow-cpu-dry-run. Nothing is measured. On a busy 2-core machine the
#                                 bench's CPU compile can outrun its cap: add GENTRAIN_GPU_BENCH_ARGS=--no-compile.
#   GENTRAIN_GPU_CHECK_TORCH=system  no torch install: the venv also sees the packages of the
#                                 interpreter that made it (its CUDA torch), behind its own
#   GENTRAIN_WHEELHOUSE=DIR       install offline: every wheel in DIR (pip --no-index --find-links DIR),
#                                 then the project with --no-deps; for a machine with no package index
#                                 (with GENTRAIN_GPU_CHECK_TORCH=system). Missing packages show in setup.log.
#   GENTRAIN_GPU_CHECK_PYTHON     the interpreter that makes the venv (default python3)
#   GENTRAIN_GPU_CHECK_VENV       where the venv goes (default: a fresh temporary folder)
#   GENTRAIN_GPU_CHECK_BUDGET_S   the overall budget in seconds (default 470)
#   GENTRAIN_GPU_BENCH_ARGS       extra arguments for bench/gpu.py (e.g. "--reps 5")
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

OUT=${1:-${OUT:-}}
if [[ -z "$OUT" ]]; then
    echo "usage: bash bench/gpu_check.sh OUT   (or set OUT): the folder for the results" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

BUDGET=${GENTRAIN_GPU_CHECK_BUDGET_S:-470}
DEADLINE=$((SECONDS + BUDGET))
CPU=${GENTRAIN_GPU_CHECK_CPU:-0}
TORCH_MODE=${GENTRAIN_GPU_CHECK_TORCH:-install}
WHEELHOUSE=${GENTRAIN_WHEELHOUSE:-}
BASE_PY=${GENTRAIN_GPU_CHECK_PYTHON:-python3}
if [[ "$CPU" == 1 ]]; then
    TORCH_SPEC=${GENTRAIN_GPU_CHECK_TORCH_SPEC:-torch==2.13.0}
else
    # pyproject asks for torch>=2.4; the same major version, the newest CUDA build.
    TORCH_SPEC=${GENTRAIN_GPU_CHECK_TORCH_SPEC:-torch>=2.4,<3}
fi
if [[ -n "${GENTRAIN_GPU_CHECK_VENV:-}" ]]; then
    VENV=$GENTRAIN_GPU_CHECK_VENV
else
    VENV=$(mktemp -d "${TMPDIR:-/tmp}/gentrain-gpu-check.XXXXXX")/venv
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
if [[ -n "$WHEELHOUSE" ]]; then
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd) || exit 2
    PIP_FROM=(--no-index --find-links "$WHEELHOUSE")
else
    PIP_FROM=()
fi

SUMMARY=$OUT/summary.txt
SETUP_LOG=$OUT/setup.log
PYTEST_LOG=$OUT/pytest.log
BENCH_LOG=$OUT/gpu-bench.log
: >"$SETUP_LOG"
: >"$PYTEST_LOG"
: >"$BENCH_LOG"
FAILED=()
RESULTS=()

# part NAME CAP LOG CMD...: runs CMD under `timeout` (CAP seconds, or what is left of the
# budget), output appended to LOG, and records the outcome. Returns CMD's status.
part() {
    local name=$1 cap=$2 log=$3
    shift 3
    local left=$((DEADLINE - SECONDS))
    local limit=$((cap < left ? cap : left))
    if ((limit < 5)); then
        RESULTS+=("$(printf '%-12s FAILED  skipped: the %ss budget is spent' "$name" "$BUDGET")")
        FAILED+=("$name")
        echo "== $name: skipped, the ${BUDGET}s budget is spent" | tee -a "$log"
        return 124
    fi
    local shown="$*"
    shown=${shown//$'\n'/ }
    ((${#shown} > 160)) && shown="${shown:0:160}..."
    echo "== $name (timeout ${limit}s): $shown" | tee -a "$log"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local took=$((SECONDS - t0)) what=ok
    if ((rc != 0)); then
        what=FAILED
        FAILED+=("$name")
        if ((rc == 124 || rc == 137)); then
            echo "== $name: timed out after ${limit}s" | tee -a "$log"
        fi
    fi
    RESULTS+=("$(printf '%-12s %-7s exit %-3s %4ss  (%s)' "$name" "$what" "$rc" "$took" "$(basename "$log")")")
    echo "== $name: $what (exit $rc, ${took}s)" | tee -a "$log"
    return "$rc"
}

skip() {
    RESULTS+=("$(printf '%-12s skipped %s' "$1" "$2")")
    echo "== $1: skipped ($2)"
}

# -- the GPU -------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
    part nvidia-smi 30 "$OUT/nvidia-smi.txt" nvidia-smi -q
elif [[ "$CPU" == 1 ]]; then
    echo "no nvidia-smi on this machine (GENTRAIN_GPU_CHECK_CPU=1 dry run)" >"$OUT/nvidia-smi.txt"
    skip nvidia-smi "dry run: no nvidia-smi"
else
    echo "nvidia-smi not found: no NVIDIA driver on this machine" >"$OUT/nvidia-smi.txt"
    RESULTS+=("$(printf '%-12s FAILED  nvidia-smi not found' nvidia-smi)")
    FAILED+=(nvidia-smi)
fi

# -- the environment -----------------------------------------------------------
# A Python without ensurepip (Debian's, without python3-venv) gets a venv without pip,
# filled by its own pip (`pip --python`).
# shellcheck disable=SC2016  # expanded by the inner bash
MAKE_VENV='"$0" -m venv "$@" || { echo "venv with pip failed; again without pip"; "$0" -m venv --without-pip "$@"; }'
part venv 90 "$SETUP_LOG" bash -c "$MAKE_VENV" "$BASE_PY" "$VENV"
if [[ -x "$PY" ]] && ! "$PY" -m pip --version >/dev/null 2>&1; then
    PIP=("$BASE_PY" -m pip --python "$PY" --disable-pip-version-check --no-input)
fi
if [[ "$TORCH_MODE" == system && -x "$PY" ]]; then
    # The interpreter's packages (its torch) behind the venv's own: a .pth line per folder. Not
    # --system-site-packages, which skips them when that interpreter is itself a venv.
    SITE='import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])'
    "$BASE_PY" -c "$SITE" | sort -u >"$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gentrain-base.pth"
fi

if [[ "$TORCH_MODE" == system ]]; then
    skip torch "GENTRAIN_GPU_CHECK_TORCH=system: the interpreter's own torch"
else
    part torch 300 "$SETUP_LOG" "${PIP[@]}" install "${PIP_FROM[@]}" "$TORCH_SPEC"
fi

if [[ -n "$WHEELHOUSE" ]]; then
    mapfile -t WHEELS < <(find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' | sort)
    if ((${#WHEELS[@]})); then
        part wheelhouse 180 "$SETUP_LOG" "${PIP[@]}" install "${PIP_FROM[@]}" "${WHEELS[@]}"
    fi
    part install 180 "$SETUP_LOG" "${PIP[@]}" install --no-index --no-deps --no-build-isolation -e "$ROOT"
else
    part install 240 "$SETUP_LOG" "${PIP[@]}" install -e "${ROOT}[dev]"
fi

# What the venv imports and what torch sees; on a GPU run, a CPU-only torch fails here.
PROBE='
import importlib, os, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda build", torch.version.cuda,
      "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
missing = []
for name in ("engine", "plugins", "ray", "pydantic", "pluggy", "yaml", "pytest", "pytest_timeout"):
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f"{name} ({e})")
print("missing:", ", ".join(missing) or "none")
if os.environ.get("GENTRAIN_GPU_CHECK_CPU") != "1" and not (torch.version.cuda and torch.cuda.is_available()):
    sys.exit("torch has no CUDA device here: a CPU build, or no driver")
sys.exit(1 if any(m.split()[0] in ("engine", "plugins", "pytest") for m in missing) else 0)
'
part torch-probe 60 "$SETUP_LOG" env GENTRAIN_GPU_CHECK_CPU="$CPU" "$PY" -c "$PROBE"

# -- the GPU tests ---------------------------------------------------------------
export PYTHONUNBUFFERED=1
part collect 90 "$PYTEST_LOG" "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider
part pytest 300 "$PYTEST_LOG" "$PY" -m pytest -m gpu -rA -p no:cacheprovider \
    --junitxml="$OUT/pytest-junit.xml" -o junit_family=xunit2

# On a GPU, a skipped GPU test proves nothing: count them (reasons are in pytest.log).
COUNTS='
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(" ".join(f"{k}={v}" for k, v in n.items()))
sys.exit(1 if n["tests"] == 0 or (sys.argv[2] != "1" and n["skipped"]) else 0)
'
if [[ -f "$OUT/pytest-junit.xml" ]]; then
    part gpu-tests 20 "$PYTEST_LOG" "$PY" -c "$COUNTS" "$OUT/pytest-junit.xml" "$CPU"
    TEST_COUNTS=$(tail -n 3 "$PYTEST_LOG" | grep -m1 '^tests=' || true)
else
    RESULTS+=("$(printf '%-12s FAILED  no JUnit XML written' gpu-tests)")
    FAILED+=(gpu-tests)
    TEST_COUNTS="none"
fi

# -- the GPU benchmark -----------------------------------------------------------
BENCH_ARGS=(--out "$OUT")
[[ "$CPU" == 1 ]] && BENCH_ARGS+=(--allow-cpu-dry-run)
# shellcheck disable=SC2206  # GENTRAIN_GPU_BENCH_ARGS is a word list
BENCH_ARGS+=(${GENTRAIN_GPU_BENCH_ARGS:-})
part bench 240 "$BENCH_LOG" "$PY" bench/gpu.py "${BENCH_ARGS[@]}"

# -- the summary -----------------------------------------------------------------
{
    echo "bash bench/gpu_check.sh $OUT"
    echo "date      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host      $(uname -n) ($(uname -m)), $(nproc) CPUs"
    echo "commit    $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (working tree differs)')"
    echo "mode      $([[ "$CPU" == 1 ]] && echo 'CPU dry run (GENTRAIN_GPU_CHECK_CPU=1): nothing measured' || echo GPU)," \
        "torch: $([[ "$TORCH_MODE" == system ]] && echo "the interpreter's own" || echo "$TORCH_SPEC")${WHEELHOUSE:+, offline from $WHEELHOUSE}"
    echo "gpu       $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
    echo "versions  $(grep -m1 '^python ' "$SETUP_LOG" || echo 'torch probe did not run')"
    echo "venv      $VENV"
    echo "gpu tests $TEST_COUNTS"
    echo "total     ${SECONDS}s of a ${BUDGET}s budget"
    echo
    printf '%s\n' "${RESULTS[@]}"
    echo
    if ((${#FAILED[@]})); then
        echo "FAILED: ${FAILED[*]}"
    else
        echo "all parts passed"
    fi
} >"$SUMMARY"
cat "$SUMMARY"
((${#FAILED[@]} == 0))
