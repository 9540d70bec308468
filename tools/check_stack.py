"""Post-install guard: the stack imports together, holds the pinned versions, and says which
attention megatron-core will run.

Run by `make install`; exits non-zero with one line per problem.

- Every machine: triton, megatron-core, transformers, math-verify and safetensors import; a
  torchvision / torchaudio / torchcodec that is installed imports beside torch.
- CPU machines (no ``nvidia-smi``): torch is not a CUDA build.
- CUDA machines: torch is a CUDA build; every ``NAME==VERSION`` pin of requirements/cuda.txt is
  the installed version (:func:`pin_problems`); vLLM's own requirements on torch, torchvision and
  transformers hold for what is installed (:func:`requirement_problems`: a ``pip install vllm``
  that pins another torch is caught here, not at the first engine start); a Transformer Engine
  that is installed imports with its PyTorch extension (megatron-core picks its TE layer spec when
  ``transformer_engine`` is importable, so a core without ``transformer_engine.pytorch`` breaks
  the first model build).
- Both: one line ``attention: te|local (...)`` says what megatron-core's attention will run
  (:func:`attention_report`); ``local`` builds ``[micro_batch·heads/TP, s, s]`` scores per layer,
  which ``mixed-r1 plan`` counts.

The checks are functions of version data (installed versions, Requires-Dist lines, import
results), so ``tests/test_stack.py`` runs the CUDA checks on a CPU machine against given data.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_PINS = ROOT / "requirements" / "cuda.txt"
#: the packages whose vLLM requirements must hold for what is installed
VLLM_COUPLED = ("torch", "torchvision", "torchaudio", "transformers")


def canon(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str | Path = CUDA_PINS) -> dict[str, str]:
    """``{name: version}`` of the ``NAME==VERSION`` lines of a requirements file (extras and
    comments dropped; ranges and markers are not pins and are skipped)."""
    pins: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;,]+)", line)
        if m:
            pins[canon(m.group(1))] = m.group(3)
    return pins


def public(version: str) -> str:
    """The public part of a version (``2.13.0+cu130`` -> ``2.13.0``)."""
    return version.split("+", 1)[0]


def pin_problems(pins: dict[str, str], installed: dict[str, str | None],
                 source: str = "requirements/cuda.txt") -> list[str]:
    """One line per pin that is not what is installed (``installed``: name -> version or None)."""
    out = []
    for name, want in pins.items():
        have = installed.get(canon(name))
        if have is None:
            out.append(f"{name} is not installed ({source} pins {name}=={want})")
        elif public(have) != public(want):
            out.append(f"{name} {have} is installed, {source} pins {want} "
                       f"(reinstall: {sys.executable} -m pip install -r {source})")
    return out


def requirement_problems(dist: str, dist_version: str, requires: list[str],
                         installed: dict[str, str | None], names=VLLM_COUPLED,
                         environment: dict[str, str] | None = None) -> list[str]:
    """One line per ``Requires-Dist`` line of ``dist`` (for ``names``, whose marker applies to
    ``environment``, default this interpreter's, with no extra) that the installed version does
    not satisfy. A required package that is not installed is not reported here (the CPU stack
    leaves vLLM's torchvision out on purpose; the CUDA pins name what must be there)."""
    from packaging.requirements import InvalidRequirement, Requirement

    env = {**({} if environment is None else environment), "extra": ""}
    out = []
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = canon(req.name)
        if name not in names or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        have = installed.get(name)
        if have is not None and not req.specifier.contains(have, prereleases=True):
            out.append(f"{dist} {dist_version} requires {req.name}{req.specifier} but "
                       f"{req.name} {have} is installed")
    return out


def attention_report(te_version: str | None, te_error: str | None, flash_version: str | None,
                     flash_error: str | None = None) -> tuple[str, str, list[str]]:
    """``(implementation, line, problems)`` for what megatron-core's attention will run, from
    what is installed: Transformer Engine (``te_version``; ``te_error``: why
    ``transformer_engine.pytorch`` failed to import, None when it imported), flash-attn
    (``flash_version``, ``flash_error``: reported, and a broken one is a problem, but it does not
    change megatron-core's attention: 0.16.1 reaches flash-attn only through TE). The rule is
    :meth:`mixed_r1.parallel.platform.Platform.attention_implementation`'s: TE, else megatron's
    local attention."""
    problems = []
    if te_version is not None and te_error is not None:
        problems.append(f"transformer-engine {te_version} is installed but "
                        f"transformer_engine.pytorch does not import ({te_error}): megatron-core "
                        "would pick its TE layer spec and fail; uninstall it "
                        f"({sys.executable} -m pip uninstall -y transformer-engine "
                        "transformer-engine-cu12 transformer-engine-cu13) or install a "
                        "matching transformer-engine-torch wheel")
    if flash_version is not None and flash_error is not None:
        problems.append(f"flash-attn {flash_version} is installed but does not import "
                        f"({flash_error})")
    if te_version is not None and te_error is None:
        return "te", f"attention: te (Transformer Engine {te_version}: no s x s scores)", problems
    flash = (f"; flash-attn {flash_version} serves the HF vision tower only"
             if flash_version is not None and flash_error is None else "")
    return "local", ("attention: local (no Transformer Engine: megatron-core's "
                     "DotProductAttention builds [micro_batch*heads/TP, s, s] scores per layer; "
                     f"`mixed-r1 plan` counts them{flash})"), problems


def cuda_problems(installed: dict[str, str | None], pins: dict[str, str],
                  vllm_requires: list[str] | None, torch_cuda: str | None,
                  environment: dict[str, str] | None = None) -> list[str]:
    """Every CUDA-stack problem of the given data: ``installed`` (canonical name -> version or
    None), ``pins`` (:func:`read_pins`), vLLM's Requires-Dist lines (None: vLLM not installed),
    ``torch_cuda`` (``torch.version.cuda``, None for a CPU build)."""
    out = []
    torch_v = installed.get("torch")
    if torch_v is not None and torch_cuda is None:
        out.append(f"torch {torch_v} is a CPU build on a CUDA machine "
                   f"(reinstall: {sys.executable} -m pip install -r requirements/cuda.txt)")
    out += pin_problems(pins, installed)
    if vllm_requires is not None:
        out += requirement_problems("vllm", installed.get("vllm") or "?", vllm_requires, installed,
                                    environment=environment)
    return out


# ------------------------------------------------------------------------------ this machine
def _installed(names) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[canon(n)] = md.version(n)
        except md.PackageNotFoundError:
            out[canon(n)] = None
    return out


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure is the report
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return None


def _first_version(*names: str) -> str | None:
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
    return None


def main() -> int:
    problems: list[str] = []
    import torch

    cuda_machine = shutil.which("nvidia-smi") is not None
    if not cuda_machine and torch.version.cuda is not None:
        problems.append(f"torch {torch.__version__} is a CUDA build on a machine without a GPU")
    for name in ("torchvision", "torchaudio", "torchcodec"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass
        except Exception as exc:  # a CUDA wheel beside the CPU torch fails here
            problems.append(f"{name} is installed but broken beside torch {torch.__version__}: "
                            f"{exc} (uninstall it: {sys.executable} -m pip uninstall -y {name})")
    for name in ("triton", "megatron.core", "transformers", "math_verify", "safetensors"):
        try:
            importlib.import_module(name)
        except Exception as exc:
            problems.append(f"cannot import {name}: {exc}")

    te_v = _first_version("transformer-engine", "transformer_engine")
    te_err = _import_error("transformer_engine.pytorch") if te_v is not None else None
    fl_v = _first_version("flash-attn", "flash_attn")
    fl_err = _import_error("flash_attn") if fl_v is not None else None
    impl, line, att_problems = attention_report(te_v, te_err, fl_v, fl_err)
    problems += att_problems
    if cuda_machine:
        pins = read_pins()
        installed = _installed(set(pins) | set(VLLM_COUPLED) | {"vllm"})
        try:
            vllm_requires = md.requires("vllm") or []
        except md.PackageNotFoundError:
            vllm_requires = None
        problems += cuda_problems(installed, pins, vllm_requires, torch.version.cuda)
        try:  # the runtime's answer must be the same (it decides the layer spec)
            from mixed_r1.parallel.platform import current_platform

            runtime = current_platform().attention_implementation()
            if runtime != impl:
                problems.append(f"mixed_r1's platform would run {runtime!r} attention, but the "
                                f"installed packages give {impl!r} ({line})")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"cannot ask mixed_r1's platform for its attention: {exc}")
    if problems:
        print("stack check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"stack ok: torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})"
                                                   if torch.version.cuda else ""))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
