#!/usr/bin/env bash
# Prepare, on this (CPU) machine, the wheels tools/gpu_check.sh needs on a lent GPU machine: the
# packages listed in tools/gpu_wheels.txt, pinned, --no-deps, for CPython 3.12 on x86-64 Linux
# (the GPU image's Python), into .whl/ (or DIR). That machine has no network, and what travels
# with a call (the working tree plus the carried paths) must stay under 64 MiB.
#
#   bash tools/gpu_wheels.sh [DIR]        # default: .whl in the repo root (added to .git/info/exclude)
#
# Idempotent: wheels already there are kept, and wheels of other versions or of packages no longer
# listed are removed (two versions of one package stop the device-side install). Prints the set's
# total size and the size of the working tree that travels beside it; exits 1 when the wheels reach
# 64 MiB, or when wheels + tree do. Needs pip and PyPI (PYTHON=... picks the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
LIMIT=$((64 * 1024 * 1024))
DIR="${1:-.whl}"
if [ $# -gt 1 ] || [[ "$DIR" == -* ]]; then
  echo "gpu_wheels: usage: bash tools/gpu_wheels.sh [DIR]   (got: $*)" >&2
  exit 2
fi
mkdir -p "$DIR"
DIR_ABS="$(cd "$DIR" && pwd)"
# .whl in the repo root travels as a carried, ignored path (`carry: [".whl"]`), never as a
# tracked or untracked file
if [ "$DIR_ABS" = "$ROOT/.whl" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  EXCLUDE="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$EXCLUDE")"
  grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
fi
mapfile -t SPECS < <(awk '!/^[[:space:]]*(#|$)/ {print $1}' tools/gpu_wheels.txt)
[ "${#SPECS[@]}" -gt 0 ] || { echo "gpu_wheels: no wheels listed in tools/gpu_wheels.txt" >&2; exit 2; }
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DIR" "${SPECS[@]}"
# drop what the list no longer names (another version, a removed package), then measure
"$PY" - "$DIR" "$LIMIT" "${SPECS[@]}" <<'EOF'
import re, subprocess, sys
from pathlib import Path

d, limit, specs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()  # noqa: E731 (wheel file names use this form)
want = {(norm(s.split("==")[0]), s.split("==")[1]) for s in specs}
have = {}
for w in sorted(d.glob("*.whl")):
    dist, ver = w.name.split("-")[:2]
    if (norm(dist), ver) in want:
        have[(norm(dist), ver)] = w
    else:
        print(f"gpu_wheels: removing {w.name} (not in tools/gpu_wheels.txt)")
        w.unlink()
missing = sorted(f"{n}=={v}" for n, v in want - set(have))
if missing:
    sys.exit(f"gpu_wheels: no wheel for {', '.join(missing)} in {d}")
total = sum(w.stat().st_size for w in have.values())
for w in have.values():
    print(f"  {w.stat().st_size / 2**20:6.2f} MiB  {w.name}")
# the working tree that travels with a call: tracked + untracked files git does not ignore
files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], capture_output=True,
                       check=False).stdout.decode().split("\0")
tree = sum(p.stat().st_size for p in map(Path, files) if p.is_file() and not p.is_symlink())
inside = d.resolve().relative_to(Path.cwd()).as_posix() + "/" if d.resolve().is_relative_to(Path.cwd()) else None
if inside and any(f.startswith(inside) for f in files):
    tree -= total  # the wheel dir is not ignored: already counted in the tree
print(f"gpu_wheels: {len(have)} wheels, {total / 2**20:.1f} MiB in {d} (limit 64 MiB); "
      f"with the working tree ({tree / 2**20:.1f} MiB) {(total + tree) / 2**20:.1f} MiB travels")
if total >= limit or total + tree >= limit:
    sys.exit("gpu_wheels: over the 64 MiB a call may carry: drop a wheel or shrink the tree")
EOF
