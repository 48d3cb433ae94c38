# shellcheck shell=bash
# Sourced by the slurm_*.sh scripts: choose the Python of the project's environment.
# Order: $PYTHON if set; the repo's .venv (made by `make setup`); the conda env $CONDA_ENV
# (default uni_seg, made from environment.yml); else python3 on the PATH.
# Cluster modules (edit for your site), e.g.:
#   module load cuda/12.4
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
  elif command -v conda >/dev/null 2>&1; then
    eval "$(conda shell.bash hook)"
    conda activate "${CONDA_ENV:-uni_seg}"
    PYTHON=python
  else
    PYTHON=python3
  fi
fi
export PYTHON
echo "environment: $("$PYTHON" -c 'import sys; print(sys.prefix)')"
