#!/usr/bin/env bash
# Runs every benchmark and writes bench/RESULTS.md from their output:
#
#     bash bench/run_all.sh
#
# About 10-15 minutes on a 2-core machine. Figures in RESULTS.md come only from
# this run (bench/report.py turns the scripts' JSON and logs into Markdown);
# never edit them by hand. Environment:
#   PY=...           the interpreter (default .venv/bin/python)
#   BENCH_QUICK=1    smoke settings (seconds, not a measurement)
#   DDP_ARGS="..."   arguments for bench/ddp.py (default: its own defaults)
#   FIRST_STEP_ARGS="..."  arguments for bench/first_step.py
#   REPORT_FROM=DIR  only rewrite RESULTS.md from a kept output directory
#   EXTRA_ONLY=1     only the sampling, toolkit and folder-data benchmarks: rewrites the
#                    sections of RESULTS.md below its marker line, keeps the rest
#   FOLDER_ARGS="..."  arguments for bench/data_path.py --part folder (default --n 20000 --reps 3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if [[ -n "${REPORT_FROM:-}" ]]; then
    "$PY" bench/report.py "$REPORT_FROM" > bench/RESULTS.md.tmp
    mv bench/RESULTS.md.tmp bench/RESULTS.md
    echo "wrote bench/RESULTS.md from $REPORT_FROM"
    exit 0
fi

extras() {
    "$PY" bench/sample.py --rounds 7 2>&1 | tee "$OUT/sample.txt"
    "$PY" bench/overhead.py --toolkit-only --models vae,gan --threads 1 --reps 5 --json "$OUT/toolkit.json" \
        | tee "$OUT/toolkit.txt"
    # shellcheck disable=SC2086  # FOLDER_ARGS is a word list
    "$PY" bench/data_path.py --part folder --threads 1 ${FOLDER_ARGS:---n 20000 --reps 3} \
        --json "$OUT/data_folder.json" | tee "$OUT/data_folder.txt"
}

# The scripts' JSON and logs are kept there (a few KB): REPORT_FROM=<it> rewrites RESULTS.md from them.
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gentrain-bench.XXXXXX")
echo "outputs in $OUT"

if [[ "${EXTRA_ONLY:-0}" == 1 ]]; then
    cat /proc/loadavg > "$OUT/load_start.txt"
    date +%s > "$OUT/t_start.txt"
    date -u "+%Y-%m-%d %H:%M:%S UTC" > "$OUT/date.txt"
    touch "$OUT/extra_only.txt"
    extras
    cat /proc/loadavg > "$OUT/load_end.txt"
    date +%s > "$OUT/t_end.txt"
    "$PY" bench/report.py --extra "$OUT" < bench/RESULTS.md > bench/RESULTS.md.tmp
    mv bench/RESULTS.md.tmp bench/RESULTS.md
    echo "wrote the extra sections of bench/RESULTS.md (from $OUT)"
    exit 0
fi

if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    OVERHEAD=(--quick --no-toolkit) SECONDARY=(--quick --timing-only --no-lightning --no-toolkit) DATA=(--part mnist --reps 2 --epochs 2) MEMORY=(--reps 1 --epochs 1)
else
    # Primary: 1 thread. On this shared 2-core machine a 2-thread OpenMP step stalls
    # whenever another process is runnable (observed 8 ms to 145 ms per step), while a
    # 1-thread step can be timed to about 1 %. Secondary: all cores, VAE only.
    OVERHEAD=(--threads 1 --reps 7 --epochs 4 --no-toolkit)
    SECONDARY=(--reps 5 --epochs 4 --no-bare --no-lightning --timing-only --no-toolkit)
    DATA=(--part mnist --threads 1 --reps 5 --epochs 3)
    MEMORY=(--threads 1 --reps 3 --epochs 2)
fi

cat /proc/loadavg > "$OUT/load_start.txt"
date +%s > "$OUT/t_start.txt"
"$PY" bench/overhead.py "${OVERHEAD[@]}" --json "$OUT/overhead.json" | tee "$OUT/overhead.txt"
"$PY" bench/overhead.py --models vae "${SECONDARY[@]}" --json "$OUT/overhead_allcores.json" | tee "$OUT/overhead_allcores.txt"
"$PY" bench/data_path.py "${DATA[@]}" --json "$OUT/data_path.json" | tee "$OUT/data_path.txt"
"$PY" bench/memory.py "${MEMORY[@]}" --json "$OUT/memory.json" | tee "$OUT/memory.txt"
if [[ -f bench/ddp.py ]]; then
    # shellcheck disable=SC2086  # DDP_ARGS is a word list
    "$PY" bench/ddp.py ${DDP_ARGS:-} 2>&1 | tee "$OUT/ddp.txt" || echo "bench/ddp.py exited with status $?" >> "$OUT/ddp.txt"
fi
"$PY" bench/first_step.py ${FIRST_STEP_ARGS:-} 2>&1 | tee "$OUT/first_step.txt" || echo "bench/first_step.py exited with status $?" >> "$OUT/first_step.txt"
[[ "${BENCH_QUICK:-0}" == 1 ]] || extras
cat /proc/loadavg > "$OUT/load_end.txt"
date +%s > "$OUT/t_end.txt"
"$PY" bench/report.py "$OUT" > bench/RESULTS.md.tmp
mv bench/RESULTS.md.tmp bench/RESULTS.md
echo "wrote bench/RESULTS.md (from $OUT)"
