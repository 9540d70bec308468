"""Post-install guard: the stack imports together and no CUDA build slipped in on a CPU machine.

Run by `make install`; exits non-zero with one line per problem.
"""
from __future__ import annotations

import importlib
import shutil
import sys

problems: list[str] = []
import torch  # noqa: E402

cuda_machine = shutil.which("nvidia-smi") is not None
if not cuda_machine and torch.version.cuda is not None:
    problems.append(f"torch {torch.__version__} is a CUDA build on a machine without a GPU")
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        pass
    except Exception as exc:  # a CUDA wheel beside the CPU torch fails here
        problems.append(f"{name} is installed but broken beside torch {torch.__version__}: {exc}"
                        f" (uninstall it: {sys.executable} -m pip uninstall -y {name})")
for name in ("triton", "megatron.core", "transformers", "math_verify", "safetensors"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        problems.append(f"cannot import {name}: {exc}")
if problems:
    print("stack check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"stack ok: torch {torch.__version__}")
