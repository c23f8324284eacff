#!/usr/bin/env bash
# Build the MONAI Label environment that serves this repository's bundles (apps/monailabel/README.md).
#
#   bash apps/monailabel/setup_env.sh [ENV_DIR]      # default: .venv-monailabel at the repository root
#
# MONAI Label 0.8.5 needs torchvision, pydicom < 3 and a torch of its own choosing, so it lives in its own
# virtualenv, apart from the core install (README, "Install"). pip picks torch and torchvision for the
# machine: a CUDA build where the registry offers one (it also runs on a CPU-only machine). The pins below
# are the ones MONAI Label 0.8.5's own requirements leave loose and that break it when left to float:
#   pydicom 3 removed APIs monailabel's DICOM code imports; pynetdicom and dicomweb-client are the releases
#   that accept pydicom 2; pandas 3 changed dtypes its datastore code relies on.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
env_dir="${1:-$repo/.venv-monailabel}"
python="${PYTHON:-python3}"

"$python" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --upgrade pip
"$env_dir/bin/python" -m pip install "monailabel==0.8.5" "pydicom==2.4.4" "pynetdicom==2.0.2" \
    "dicomweb-client==0.59.1" "pandas<3"
# this repository's package, into the same environment, keeping the torch monailabel installed
"$env_dir/bin/python" -m pip install -e "$repo"
"$env_dir/bin/python" - <<'PY'
import monai, monailabel, torch, torchvision
import multirater_monai
print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, cuda available: {torch.cuda.is_available()}")
PY
echo "environment ready: source $env_dir/bin/activate"
