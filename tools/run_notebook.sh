#!/usr/bin/env bash
# Run the notebook headlessly with papermill, then render its two HTML reports.
#
#   tools/run_notebook.sh RUN_NAME [-p NAME VALUE ...]      (any papermill arguments)
#
# Environment (all optional):
#   PYTHON       the interpreter of the project's environment (default: .venv/bin/python if
#                present, else python)
#   RESULTS_DIR  where results and reports go (default: results); passed to the notebook too
#   LOG_DIR      where the run's log goes (default: logs)
#   KERNEL       Jupyter kernel to run (default: uni_seg; installed into the environment if missing)
#   NOTEBOOK     the notebook to run (default: cell_instance_segmentation.ipynb; tests run stand-ins)
#
# Writes RESULTS_DIR/reports/RUN_NAME.ipynb (the executed notebook), RUN_NAME.html (with code,
# for developers) and RUN_NAME.no-code.html (outputs only, for reviewers), and LOG_DIR/RUN_NAME_*.log.
# When a cell fails, the reports are still rendered, so the failure can be read in them, and the
# script exits non-zero.
#
# A notebook edited without `make sync` would run its export cells beside a stale uni_seg/ (the
# story cells import the package): the script refuses, in one line, before papermill starts.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 RUN_NAME [papermill arguments, e.g. -p PROFILE demo]" >&2
  exit 2
fi
run_name=$1
shift
if [[ ! "$run_name" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "RUN_NAME '$run_name' may hold only letters, digits, '.', '_' and '-'" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
# The package must be in step with the notebook (tools/nbexport.py --check); no way around it.
sync_status=0
sync_report=$("$PYTHON" tools/nbexport.py --check 2>&1) || sync_status=$?
if [ "$sync_status" -ne 0 ]; then
  if grep -q '^stale: ' <<<"$sync_report"; then
    stale=$(sed -n 's/^stale: \([^ ]*\).*/\1/p' <<<"$sync_report" | paste -sd ' ' -)
    echo "refusing to run: the generated files are stale against the notebook ($stale); run \`make sync\` first (edits made in the .py pair: tools/pair_to_notebook.py before it)" >&2
  else
    echo "refusing to run: tools/nbexport.py --check failed: $(tail -n 1 <<<"$sync_report")" >&2
  fi
  exit 1
fi
results_dir=${RESULTS_DIR:-results}
log_dir=${LOG_DIR:-logs}
kernel=${KERNEL:-uni_seg}
notebook=${NOTEBOOK:-cell_instance_segmentation.ipynb}
report_dir="$results_dir/reports"
mkdir -p "$report_dir" "$log_dir"
log="$log_dir/${run_name}_${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}.log"

if ! "$PYTHON" -m jupyter kernelspec list 2>/dev/null | grep -q "^ *$kernel "; then
  echo "installing Jupyter kernel '$kernel' into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m ipykernel install --sys-prefix --name "$kernel" --display-name "Python ($kernel)" >/dev/null
fi

executed="$report_dir/$run_name.ipynb"
echo "run '$run_name': executing $notebook -> $executed (log: $log)"
status=0
"$PYTHON" -m papermill "$notebook" "$executed" \
  -k "$kernel" --cwd . --log-output --no-progress-bar \
  -p RUN_NAME "$run_name" -p RESULTS_DIR "$results_dir" "$@" 2>&1 | tee "$log" || status=$?

if [ -f "$executed" ]; then
  # the run's summary (or, if it failed, a banner naming the failed cell) goes on top of both
  "$PYTHON" tools/render_report.py "$executed" "$report_dir" "$run_name" >/dev/null
  echo "reports: $report_dir/$run_name.html (with code), $report_dir/$run_name.no-code.html (for reviewers)"
fi
if [ "$status" -ne 0 ]; then
  echo "run '$run_name' FAILED (papermill exit $status); the reports show the failing cell" >&2
fi
exit "$status"
