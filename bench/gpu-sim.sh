#!/usr/bin/env bash
# A stand-in for the GPU machine's Python on this CPU machine, for `ADSEG_GPU_DRY=1 bash bench/gpu.sh`.
#
# The GPU machine has Python with torch, numpy, scipy, matplotlib, pyyaml, tqdm and psutil (and what they
# pull in), plus what .gpu/site.tar.xz (and .gpu/extra/) bring: nothing else. The kit is built for Python
# 3.12 and its compiled modules do not load here, so this makes a venv (default /tmp/gpusim) whose
# site-packages links exactly those distributions from adseg's own environment (the one active when this
# runs). A dependency the kit lacks then fails here as it would there.
#
#   . .venv/bin/activate && bash bench/gpu-sim.sh [KIT.tar.xz] [VENV]
#   . /tmp/gpusim/bin/activate && ADSEG_GPU_DRY=1 bash bench/gpu.sh
set -euo pipefail
kit=${1:-.gpu/site.tar.xz}
venv=${2:-/tmp/gpusim}
extra=$(dirname "$kit")/extra
src=$(python -c "import site; print(site.getsitepackages()[0])")
rm -rf "$venv"
"$(python -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')" -m venv --without-pip "$venv"
dst=$("$venv/bin/python" -c "import site; print(site.getsitepackages()[0])")
python - "$kit" "$extra" "$src" "$dst" <<'EOF'
import re, sys, tarfile
from importlib.metadata import distributions
from pathlib import Path

kit, extra, src, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
# the GPU machine's own packages and their dependencies
wanted = {norm(n) for n in """torch numpy scipy matplotlib pyyaml tqdm psutil filelock typing-extensions
sympy mpmath networkx jinja2 markupsafe fsspec setuptools contourpy cycler fonttools kiwisolver pillow
pyparsing python-dateutil six""".split()}
with tarfile.open(kit) as t:
    for name in t.getnames():
        m = re.match(r"^(?:\./)?([^/]+)-[^-/]+\.dist-info$", name)
        if m:
            wanted.add(norm(m.group(1)))
for whl in extra.glob("*.whl") if extra.is_dir() else []:
    wanted.add(norm(whl.name.split("-")[0]))
found = set()
for dist in distributions(path=[str(src)]):
    name = norm(dist.metadata["Name"])
    if name not in wanted:
        continue
    found.add(name)
    tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if not (dst / top).exists() and (src / top).exists():
            (dst / top).symlink_to(src / top)
print(f"{len(found)} distributions linked into {dst}")
missing = sorted(wanted - found)
if missing:
    print("not in this environment (left out):", " ".join(missing))
EOF
