#!/usr/bin/env bash
# Type-check the TensorRT engine code with mypy against tensorrt-stubs.
#
#   tools/typecheck.sh            # PYTHON=/path/to/python to pick the interpreter (needs mypy,
#                                 # tensorrt-stubs: pip install 'ckbd[dev]')
#
# Two things stop a plain `mypy engines/` from checking anything real:
#  * the repo maps ckbd.engines -> engines/, ckbd.runtime -> runtime/ (pyproject package-dir) and
#    mypy cannot follow setuptools' editable-install finder, so ckbd.* would resolve to nothing;
#  * tensorrt-stubs installs tensorrt/*.pyi without a py.typed marker (mypy skips them) and its
#    generated signatures contain syntax errors (parameters named `in`, defaults out of order).
# So this lays the package out as installed, in a temporary folder of symlinks, writes a
# syntax-fixed copy of the stubs beside it, and runs mypy there with mypy-engines.ini.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" - "$root" "$work" <<'EOF'
import ast
import importlib.metadata as metadata
import os
import re
import sys
import tomllib
from pathlib import Path

root, work = Path(sys.argv[1]), Path(sys.argv[2])

# 1. The ckbd package as installed, from pyproject's package-dir mapping.
package_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
src = work / "src"
for package, folder in sorted(package_dir.items()):
    target = src.joinpath(*package.split("."))
    target.parent.mkdir(parents=True, exist_ok=True)
    if package == "ckbd":
        target.mkdir(exist_ok=True)
        for entry in (root / folder).iterdir():
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                os.symlink(entry, target / entry.name)
    elif (root / folder).is_dir() and not target.exists():
        os.symlink(root / folder, target)

# 2. A syntax-fixed copy of tensorrt-stubs.
try:
    dist = metadata.distribution("tensorrt-stubs")
except metadata.PackageNotFoundError:
    sys.exit("tensorrt-stubs is not installed: pip install tensorrt-stubs (or 'ckbd[dev]')")

def split_params(text):
    depth, part, parts = 0, "", []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    return parts + [part] if part.strip() else parts

def parses(line):
    try:
        ast.parse(line.strip() + " ...")
        return True
    except SyntaxError:
        return False

def fix_def(line):
    if parses(line):
        return line
    line = re.sub(r"(?<=[(,] )in(?=:)", "in_", line)
    if parses(line):
        return line
    head, _, rest = line.partition("(")
    depth, end = 1, 0
    for end, ch in enumerate(rest):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            break
    params, tail = split_params(rest[:end]), rest[end:]
    seen_default, fixed = False, []
    for param in params:
        bare = param.strip()
        if bare.startswith("*") or bare == "/":
            seen_default = False
        elif "=" in param:
            seen_default = True
        elif seen_default:
            param += " = ..."
        fixed.append(param)
    line = f"{head}({','.join(fixed)}{tail}"
    if parses(line):
        return line
    indent = head[: len(head) - len(head.lstrip())]
    name = head.strip()[4:]
    return f"{indent}def {name}(*args, **kwargs):"

stubs = work / "stubs"
for file in dist.files or []:
    if not str(file).endswith(".pyi"):
        continue
    out = stubs / str(file)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = Path(dist.locate_file(file)).read_text().splitlines()
    out.write_text("\n".join(fix_def(l) if l.lstrip().startswith("def ") else l for l in lines) + "\n")
EOF

cd "$root"
targets=(-p ckbd.engines -m ckbd.cli.build -m ckbd.cli.check.gpu -m ckbd.tools.check.gpu.backends -m ckbd.runtime.package
         -m ckbd.runtime.backend -m ckbd.runtime.model)
MYPYPATH="$work/src:$work/stubs" "$python" -m mypy --config-file "$root/mypy-engines.ini" "${targets[@]}" 2>&1 \
    | sed -e "s#$work/src/ckbd/engines/#engines/#g" -e "s#$work/src/ckbd/tools/#tools/#g" \
          -e "s#$work/src/ckbd/#ckbd/#g" -e "s#$work/stubs/#(tensorrt-stubs) #g"
