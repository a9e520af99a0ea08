"""ctypes access to the Metal emulator library (native/metal_emu/emu_abi.h) for kernel tests.

``EmuLib(path).dispatch(kernel, groups, threads, {index: array})`` binds numpy arrays as
``[[buffer(index)]]`` (kernels write into them in place) and runs the dispatch. The argument
structs mirror shaders/args.h field for field (their sizes are checked against it at import).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_EMU = ROOT / "native" / "metal_emu" / "build_emu.py"
CLANG = "clang++-19"
MAX_BUFFERS, MAX_TG_MEM = 31, 8
OK, ERR_INVALID, ERR_UNBOUND, ERR_KERNEL = 0, 1, 2, 3


class EmuError(RuntimeError):
    """A dispatch the emulator rejected or a kernel bug it detected. ``code`` is EMU_ERR_*."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _Buffer(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("nbytes", ctypes.c_uint64)]


class _Dispatch(ctypes.Structure):
    _fields_ = [
        ("kernel", ctypes.c_char_p),
        ("groups", ctypes.c_uint32 * 3),
        ("threads", ctypes.c_uint32 * 3),
        ("buffers", _Buffer * MAX_BUFFERS),
        ("tg_bytes", ctypes.c_uint32 * MAX_TG_MEM),
        ("workers", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


# ----------------------------------------------------------------------------- shaders/args.h


def _args(name: str, fields: list[tuple[str, str]]) -> np.dtype:
    return np.dtype([(f, "<u4" if t == "u" else "<f4") for f, t in fields], align=False)


RmsNormArgs = _args(
    "RmsNormArgs",
    [("n", "u"), ("x_stride", "u"), ("out_stride", "u"), ("eps", "f"), ("accumulate", "u")]
    + [(f, "u") for f in ("pad0", "pad1", "pad2")],
)
GemvArgs = _args(
    "GemvArgs",
    [("rows", "u"), ("cols", "u"), ("row_bytes", "u"), ("x_stride", "u"), ("out_stride", "u")]
    + [("accumulate", "u"), ("has_bias", "u"), ("pad0", "u")],
)
RopeKvArgs = _args(
    "RopeKvArgs",
    [(f, "u") for f in ("n_head", "n_head_kv", "head_dim", "neox", "pos0", "kv_capacity")]
    + [(f, "u") for f in ("q_stride", "k_stride", "v_stride", "rope_dim")]
    + [("mscale", "f"), ("pad0", "u")],
)
AttnArgs = _args(
    "AttnArgs",
    [(f, "u") for f in ("n_head", "n_head_kv", "head_dim", "pos0", "kv_capacity", "q_stride")]
    + [("out_stride", "u"), ("scale", "f"), ("window", "u"), ("softcap", "f")],
)
SwiGluArgs = _args(
    "SwiGluArgs", [("cols", "u"), ("gate_stride", "u"), ("up_stride", "u"), ("gelu", "u")]
)
EmbedArgs = _args(
    "EmbedArgs", [("cols", "u"), ("row_bytes", "u"), ("out_stride", "u"), ("scale", "f")]
)


def _constants() -> dict[str, int]:
    """Grid constants (enum values) and struct sizes read from shaders/args.h."""
    text = (ROOT / "shaders" / "args.h").read_text()
    out: dict[str, int] = {}
    for name, expr in re.findall(r"\b(k\w+) = ([\w */]+?)\s*[,}]", text):  # enum values
        out[name] = int(eval(expr.replace("/", "//"), {"__builtins__": {}}, dict(out)))  # noqa: S307
    sizes = dict(re.findall(r"sizeof\((\w+)\) == (\d+)", text))
    mirror = {"RmsNormArgs": RmsNormArgs, "GemvArgs": GemvArgs, "RopeKvArgs": RopeKvArgs}
    mirror |= {"AttnArgs": AttnArgs, "SwiGluArgs": SwiGluArgs, "EmbedArgs": EmbedArgs}
    for name, dt in mirror.items():
        if int(sizes[name]) != dt.itemsize:
            raise AssertionError(
                f"[emu_harness] {name}: args.h says {sizes[name]} bytes, mirror has {dt.itemsize}"
            )
    return out


def pack(dtype: np.dtype, **fields) -> np.ndarray:
    """One argument struct as a (1,) structured array (bind it like any buffer)."""
    a = np.zeros(1, dtype=dtype)
    for k, v in fields.items():
        a[k] = v
    return a


def rope_kv_args(
    n_head: int,
    n_kv: int,
    hd: int,
    *,
    neox: bool,
    pos0: int,
    cap: int,
    rope_dim: int,
    mscale: float,
) -> np.ndarray:
    """RopeKvArgs for contiguous (tokens, heads * hd) q, k and v rows (rope_dim 0: all of hd)."""
    args = pack(
        RopeKvArgs,
        n_head=n_head,
        n_head_kv=n_kv,
        head_dim=hd,
        neox=int(neox),
        pos0=pos0,
        kv_capacity=cap,
        rope_dim=rope_dim,
        mscale=mscale,
    )
    args["q_stride"], args["k_stride"], args["v_stride"] = n_head * hd, n_kv * hd, n_kv * hd
    return args


# ----------------------------------------------------------------------------- library


def write_case(path: Path, kernel: str, groups, threads, buffers: dict, tg_bytes: dict) -> None:
    """One dispatch and its input buffers as a case file for native/metal_emu/replay.cpp."""
    name = kernel.encode()
    parts = [b"EMUCASE1", struct.pack("<I", len(name)), name]
    parts.append(struct.pack("<3I3I", *groups, *threads))
    parts.append(struct.pack(f"<{MAX_TG_MEM}I", *[tg_bytes.get(i, 0) for i in range(MAX_TG_MEM)]))
    parts.append(struct.pack("<I", len(buffers)))
    for i, arr in sorted(buffers.items()):
        parts += [struct.pack("<IQ", i, arr.nbytes), arr.tobytes()]
    path.write_bytes(b"".join(parts))


class EmuLib:
    def __init__(self, path: Path, record_dir: Path | None = None):
        """record_dir (default: $METALLIC_EMU_RECORD): write every dispatch there as a case file."""
        self.path = Path(path)
        rec = record_dir or os.environ.get("METALLIC_EMU_RECORD")
        self.record_dir = Path(rec) if rec else None
        self._n_recorded = 0
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.emu_kernel_name.restype = ctypes.c_char_p
        self._lib.emu_dispatch.argtypes = [
            ctypes.POINTER(_Dispatch),
            ctypes.c_char_p,
            ctypes.c_uint64,
        ]
        self.kernels = [
            self._lib.emu_kernel_name(i).decode() for i in range(self._lib.emu_kernel_count())
        ]

    def dispatch(
        self, kernel, groups, threads, buffers, tg_bytes=None, workers=2, reverse=False
    ) -> None:
        """groups / threads: up to 3 ints; buffers: {index: C-contiguous numpy array}."""
        groups = [groups[i] if i < len(groups) else 1 for i in range(3)]
        threads = [threads[i] if i < len(threads) else 1 for i in range(3)]
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            self._n_recorded += 1
            case = self.record_dir / f"{os.getpid()}_{self._n_recorded:05d}_{kernel}.case"
            write_case(case, kernel, groups, threads, buffers, tg_bytes or {})
        d = _Dispatch()
        d.kernel = kernel.encode()
        for i in range(3):
            d.groups[i] = groups[i]
            d.threads[i] = threads[i]
        for i, arr in buffers.items():
            if not arr.flags.c_contiguous:
                raise ValueError(f"[emu_harness] buffer({i}): expected a C-contiguous array")
            d.buffers[i].ptr = arr.ctypes.data
            d.buffers[i].nbytes = arr.nbytes
        for i, n in (tg_bytes or {}).items():
            d.tg_bytes[i] = n
        d.workers = workers
        d.flags = 1 if reverse else 0
        err = ctypes.create_string_buffer(4096)
        rc = self._lib.emu_dispatch(ctypes.byref(d), err, len(err))
        if rc != OK:
            raise EmuError(rc, err.value.decode(errors="replace"))


def build(
    out: Path, dirs: list[Path], sanitize: str = "none", replay: bool = False, headers=()
) -> Path:
    """Compiles an emulator library (or, with `replay`, the emu_replay executable) with clang++-19.
    `headers`: shader directories that are only included (e.g. shaders/ for defines.h)."""
    cmd = [
        sys.executable,
        str(BUILD_EMU),
        "--out",
        str(out),
        "--work",
        str(out.parent / (out.name + ".work")),
    ]
    cmd += ["--cxx", CLANG, "--sanitize", sanitize]
    cmd += ["--driver", str(ROOT / "native" / "metal_emu" / "replay.cpp")] if replay else []
    for h in headers:
        cmd += ["--headers", str(h)]
    r = subprocess.run(cmd + [str(d) for d in dirs], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr or r.stdout)
    return out


def have_clang() -> bool:
    return shutil.which(CLANG) is not None


IN_CI = bool(os.environ.get("CI"))


def unless_available(missing: str | None) -> pytest.MarkDecorator:
    """Skips a test whose tool (``missing`` says which) is absent on a developer machine. Under
    CI=true, which installs clang-19 and GNUstep itself (.ci/run), the test runs and fails, so a
    broken CI setup never turns into silently skipped tests."""
    return pytest.mark.skipif(missing is not None and not IN_CI, reason=missing or "")


NEEDS_CLANG = unless_available(
    None if have_clang() else f"{CLANG} is not installed (scripts/install_clang.sh)"
)


def session_library(tmp_path_factory) -> EmuLib:
    """The emulator library of every shaders/*.metal kernel: the installed one (next to
    metallic._core), else built once per session with clang++-19 (missing: skip locally, fail
    under CI). The `emu` fixture of tests/conftest.py."""
    lib = installed_library()
    if lib is None:
        if not have_clang():
            why = f"{CLANG} is not installed (scripts/install_clang.sh): no Metal emulator"
            pytest.fail(why) if IN_CI else pytest.skip(why)
        lib = build(
            tmp_path_factory.mktemp("emu") / "libmetallic_shaders_emu.so", [ROOT / "shaders"]
        )
    return EmuLib(lib)


def weights(rng, rows, cols, dtype):
    """Random (rows, cols) weights: (raw rows in the weight's format, float64 values the kernel
    must see)."""
    import tiny_models

    raw, vals = tiny_models.store(rng.standard_normal((rows, cols)).astype(np.float32), dtype)
    return np.ascontiguousarray(raw), vals.astype(np.float64)


def run_both_orders(emu: EmuLib, kernel, groups, threads, buffers: dict, outputs: list[int]):
    """Runs the dispatch twice from the same inputs (lanes ascending, then descending); checks the
    outputs are bit-identical and returns them."""
    inputs = {i: a.copy() for i, a in buffers.items()}
    emu.dispatch(kernel, groups, threads, buffers)
    emu.dispatch(kernel, groups, threads, inputs, reverse=True)
    for i in outputs:
        np.testing.assert_array_equal(
            buffers[i].view(np.uint8),
            inputs[i].view(np.uint8),
            err_msg=f"{kernel}: buffer({i}) depends on lane order",
        )
    return [buffers[i] for i in outputs]


def installed_library() -> Path | None:
    """The library shipped next to metallic._core (dev build: a symlink), or $METALLIC_EMU_LIB."""
    env = os.environ.get("METALLIC_EMU_LIB")
    if env:
        return Path(env)
    import metallic

    p = Path(metallic.__file__).resolve().parent / "libmetallic_shaders_emu.so"
    return p if p.exists() else None


CONST = _constants()


def _installed_library_missing() -> str | None:
    lib = installed_library()
    if lib is not None and lib.exists():
        return None
    return (
        "libmetallic_shaders_emu.so was not built (it needs clang++-19: scripts/install_clang.sh)"
    )


def NEEDS_EMULATOR(test):  # noqa: N802 (used as a decorator, like the marks above)
    """Marks a test of device="metal-emulated" (`-m "not emulator"` leaves it out: the sanitizer
    pass does) that needs the library installed next to metallic._core."""
    return pytest.mark.emulator(unless_available(_installed_library_missing())(test))
