#!/usr/bin/env bash
# The GPU check on an offline GPU host, from a bare start: install ckbd from this checkout and the
# wheels prepared on a connected machine (docs/gpu.md), then run `ckbd check gpu` within a budget.
#
#   tools/gpu_host_check.sh [extra `ckbd check gpu` options]
#
# Environment (all optional):
#   WHEELS    folder of the prepared wheels            (default: .whl in the checkout)
#   IMAGES    test images                              (default: ../shared/data/kodak, else .kodak in the
#                                                       checkout, else ckbd's own default)
#   BUDGET_S  time budget of the check, seconds        (default: 360, so that with the install it ends
#                                                       well inside 8 minutes)
#   OUT       where gpu_check.json and the log go      (default: the checkout)
#   PYTHON    the interpreter that holds torch         (default: python3)
#
# The host's own environment is left as it is: ckbd goes into a virtual environment in /tmp that
# sees the host's packages (torch, numpy, onnxruntime, ...) through a .pth file, so only what is
# missing is installed, from the wheels alone (--no-index). Exit status: the check's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheels="${WHEELS:-$root/.whl}"
out="${OUT:-$root}"
python="${PYTHON:-python3}"
venv="/tmp/ckbd-gpu-venv"
started=$SECONDS
mkdir -p "$out"
log="$out/gpu_check.log"

if [ ! -d "$wheels" ]; then
    echo "error: no wheels folder $wheels (prepare it as docs/gpu.md says, or set WHEELS)" >&2
    exit 1
fi
if [ -z "${IMAGES:-}" ]; then
    for candidate in "$root/../shared/data/kodak" "$root/.kodak"; do
        if [ -d "$candidate" ]; then IMAGES="$candidate"; break; fi
    done
fi

"$python" -c 'import torch, numpy, onnxruntime; print("host:", "python", __import__("platform").python_version(),
      "torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__,
      "onnxruntime", onnxruntime.__version__)'

# A venv that sees the host's packages: --system-site-packages is not enough when the host's python
# is itself a venv (its packages are not the system's), so a .pth file adds its site folders (with
# site.addsitedir, so that their own .pth files are read too).
rm -rf "$venv"
"$python" -m venv --without-pip "$venv"
"$python" -c 'import site, sys; [print(f"import site; site.addsitedir({p!r})") for p in site.getsitepackages()]' \
    > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_host_packages.pth"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" --version >/dev/null  # the host's pip, seen through the .pth file

# ckbd and its missing dependencies from the wheels only; the C helpers build if a compiler is there.
"${pip[@]}" install -q --no-index --find-links "$wheels" -e "$root"
# CompressAI (optional): its own dependencies are not needed for the decode that is compared.
if ls "$wheels"/compressai-*.whl >/dev/null 2>&1; then
    "${pip[@]}" install -q --no-index --no-deps --find-links "$wheels" compressai \
        || echo "notice: CompressAI did not install; its part of the check is skipped"
fi
echo "installed in $((SECONDS - started)) s"

args=(check gpu --json "$out/gpu_check.json" --budget-s "${BUDGET_S:-360}")
if [ -n "${IMAGES:-}" ]; then args+=(--images "$IMAGES"); fi
set +e
PYTHONUNBUFFERED=1 "$venv/bin/ckbd" "${args[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "gpu check exit status $status after $((SECONDS - started)) s; report $out/gpu_check.json"
exit "$status"
