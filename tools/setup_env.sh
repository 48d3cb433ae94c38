#!/usr/bin/env bash
# Create (or update) the project's virtual environment, install the project into it (editable,
# so the `uni-seg` command and `import uni_seg` work from anywhere) and its Jupyter kernel.
#
#   tools/setup_env.sh [VENV_DIR]        default: .venv
#
# Idempotent: a stamp holding the hash of requirements.txt and pyproject.toml skips the install
# when neither changed. After installing it proves that torchvision's compiled operators load (timm imports
# torchvision): a CPU-only "+cpu" torch build that a local wheel cache may offer first cannot
# load them, so it is replaced by the regular build of the same version from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $venv is up to date with requirements.txt and pyproject.toml"
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -r requirements.txt

torchvision_ops_load() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import torch, torchvision.ops
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PY
}
if ! torchvision_ops_load; then
  torch_pin=$(grep -E '^torch==' requirements.txt)
  echo "setup: torchvision cannot load its operators with $("$venv/bin/python" -c 'import torch; print(torch.__version__)'); installing the regular $torch_pin build from the package index"
  # --isolated ignores pip configuration (and so a local +cpu wheel folder); --no-deps keeps
  # the rest of the environment as installed.
  "${pip[@]}" install -q --isolated --force-reinstall --no-deps "$torch_pin"
  "${pip[@]}" install -q --isolated "$torch_pin"
  torchvision_ops_load || { echo "setup: torchvision still cannot load its operators" >&2; exit 1; }
fi

# The project itself, editable: its dependencies are the pins above, so pip resolves nothing here.
"${pip[@]}" install -q --no-deps --no-build-isolation -e .

"$venv/bin/python" -m ipykernel install --sys-prefix --name uni_seg --display-name "Python (uni_seg)" >/dev/null
echo "$want" > "$stamp"
echo "setup: $venv ready (kernel 'uni_seg' installed into it)"
