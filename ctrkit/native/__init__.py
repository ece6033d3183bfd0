"""Small C kernels, compiled on first use with the machine's C compiler and called through ctypes.

Some hot loops of the models are a long run of tiny tensor operations (the gate arithmetic of a
recurrence step on a ``[B, H]`` block) whose dispatch costs more than their arithmetic, or a
chain of passes over a block that one pass can do (Dice in training). They are
written once in plain C (no Python or torch headers: a build takes a second or two) and compiled
for this CPU (``-march=native``) into a per-user cache, keyed by the source, the compiler and the
CPU, and written under a temporary name and renamed (several processes may build at once).

Nothing depends on them: where no compiler works, or with ``CTRKIT_NATIVE=0``, :func:`library`
returns ``None`` and the callers use their torch implementation of the same function (the tests
compare the two).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: set to ``0`` to run without the C kernels
ENV_SWITCH = "CTRKIT_NATIVE"
#: where the built libraries go (default ``$XDG_CACHE_HOME/ctrkit/native`` or ``~/.cache/ctrkit/native``)
ENV_CACHE = "CTRKIT_NATIVE_CACHE"

_COMMON_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno")
#: tried in order; the first that compiles is kept (x86 and most compilers; Apple/ARM clang; none)
_CPU_FLAGS = (("-march=native",), ("-mcpu=native",), ())

_I64 = ctypes.c_int64
_F32 = ctypes.c_float
_PTR = ctypes.c_void_p
_STATUS = ctypes.c_int  # 0, or non-zero where the kernel failed (see `check`)
_DICE_FORWARD = (_STATUS, (_I64, _I64, _PTR, _PTR, _F32, _PTR, _F32, _PTR, _PTR, _PTR, _PTR, _PTR))
_DICE_BACKWARD = (_STATUS, (_I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _F32, _PTR, _PTR))
#: ``(result type, argument types)`` of the exported functions, by library
_SIGNATURES = {
    "dice": {
        "ctrkit_dice_forward_f32": _DICE_FORWARD,
        "ctrkit_dice_forward_bf16": _DICE_FORWARD,
        "ctrkit_dice_backward_f32": _DICE_BACKWARD,
        "ctrkit_dice_backward_bf16": _DICE_BACKWARD,
    },
    "pair_products": {
        "ctrkit_pair_products_backward_f32": (None, (_I64, _I64, _PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR)),
        "ctrkit_pair_products_backward_bf16": (None, (_I64, _I64, _PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR)),
    },
    "paired_sigmoid": {
        "ctrkit_paired_sigmoid_forward_f32": (None, (_I64, _I64, _I64, _PTR, _PTR, _PTR)),
        "ctrkit_paired_sigmoid_forward_bf16": (None, (_I64, _I64, _I64, _PTR, _PTR, _PTR)),
        "ctrkit_paired_sigmoid_backward_f32": (None, (_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR)),
        "ctrkit_paired_sigmoid_backward_bf16": (None, (_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR)),
    },
    "scatter": {
        "ctrkit_scatter_add_rows_f32": (_STATUS, (_I64, _I64, _PTR, _PTR, _I64, _PTR)),
    },
    "gated_recurrence": {
        "ctrkit_gru_forward_f32": (None, (_I64, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR)),
        "ctrkit_gru_backward_f32": (None, (_I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR,
                                       _PTR)),
    },
}


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ctrkit" / "native"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags where Linux says them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join([platform.machine(), platform.processor(), *dict.fromkeys(wanted)])


def _build(name: str) -> Path:
    source = Path(__file__).with_name(f"{name}.c")
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    texts = [path.read_text() for path in [source, *sorted(source.parent.glob("*.h"))]]  # the headers it may include
    key = hashlib.sha256("\0".join([*texts, compiler, version, _cpu_identity(),
                                    " ".join(_COMMON_FLAGS)]).encode()).hexdigest()[:20]
    target = cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for cpu_flags in _CPU_FLAGS:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=target.parent)
        os.close(fd)
        result = subprocess.run([compiler, *_COMMON_FLAGS, *cpu_flags, "-o", tmp, str(source), "-lm"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cpu_flags) or '(no CPU flags)'}: {result.stderr.strip()[-400:]}")
    raise OSError(f"{compiler} could not build {source.name}: " + " | ".join(errors))


def library(name: str) -> ctypes.CDLL | None:
    """The C library ``name`` (``ctrkit/native/<name>.c``), built if needed; ``None`` where it cannot be
    built or loaded (the reason is logged once), or while :data:`ENV_SWITCH` turns the kernels off."""
    return _load(name) if enabled() else None


@functools.cache
def _load(name: str) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(_build(name)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("ctrkit: C kernels %r unavailable, using the torch implementation (%s)", name, exc)
        return None
    for function, (restype, argtypes) in _SIGNATURES[name].items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = restype
    return lib


def check(status: int, what: str) -> None:
    """Raise ``RuntimeError`` for a kernel's non-zero status; ``what`` names the kernel and what the status means."""
    if status:
        raise RuntimeError(f"ctrkit C kernel failed: {what}")
