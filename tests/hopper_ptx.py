"""Compile Triton kernels for the H100 (sm_90a) on a machine without a GPU, and read what ptxas did.

The interpreter checks a kernel's arithmetic but not how it compiles: whether its loads are 16-byte
vectors, whether its dots become wgmma, whether registers spill. Triton's wheel carries LLVM and ptxas,
so the CUDA backend can compile ahead of time for a named target with no driver present. The tests
run under ``TRITON_INTERPRET=1`` (where ``@triton.jit`` builds interpreted functions), so compilation
happens in a child process without it: ``compile_for_hopper`` sends it the jobs as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass
class HopperBuild:
    ptx: str
    registers: int
    spill_bytes: int
    shared_bytes: int

    def memory_ops(self, kind: str) -> set[str]:
        """The distinct ``ld.global…`` / ``st.global…`` instructions (``kind`` "ld" or "st")."""
        return set(re.findall(rf"\b{kind}\.global[a-z0-9.]*", self.ptx))

    def async_copy_bytes(self) -> set[int]:
        """Byte widths of the ``cp.async`` copies (global to shared, issued ahead by the pipeliner)."""
        found = re.findall(r"cp\.async\.c[ag]\.shared\.global \[[^\]]*\], \[[^\]]*\], (0x[0-9a-f]+|\d+)", self.ptx)
        return {int(v, 0) for v in found}

    @property
    def uses_wgmma(self) -> bool:
        return "wgmma.mma_async" in self.ptx


def compile_for_hopper(jobs: list[dict]) -> list[HopperBuild]:
    """Each job: ``module``, ``kernel`` (its name there), ``args`` (every parameter in order: a type
    string such as ``"*bf16"``, ``"i32"``, ``"fp32"``, or a constexpr value; ``"tl.float16"`` names a
    triton dtype), ``num_warps``, and ``aligned``: the pointers and integers Triton would specialise as
    multiples of 16 at launch (tensors from PyTorch, strides of contiguous rows)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, __file__], input=json.dumps(jobs), capture_output=True, text=True, env=env, timeout=600
    )
    if done.returncode:
        raise RuntimeError(f"compiling for sm_90a failed:\n{done.stderr[-4000:]}")
    return [HopperBuild(**r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def _ptxas() -> str:
    import triton.backends.nvidia as nvidia

    folder = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX versions new Triton emits
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"no ptxas in {folder}")


def _build(job: dict) -> dict:
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    args = {n: getattr(tl, v[3:]) if isinstance(v, str) and v.startswith("tl.") else v for n, v in job["args"].items()}
    args = {n: _gluon_descriptor(v) if isinstance(v, list) else v for n, v in args.items()}
    names = list(args)
    constant = {n: v for n, v in args.items() if not isinstance(v, str)}
    signature = {n: ("constexpr" if n in constant else v) for n, v in args.items()}
    if job.get("gluon"):
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(names.index(n),): v for n, v in constant.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in job.get("aligned", ())},
    )
    options = {"num_warps": job["num_warps"], "num_stages": job.get("num_stages", 3)}
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        cmd = [_ptxas(), "-arch=sm_90a", "-v", path, "-o", os.devnull]
        report = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    return {
        "ptx": ptx,
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
        "shared_bytes": int(kernel.metadata.shared),
    }


def _gluon_descriptor(spec: list) -> str:
    """``["desc", "int8", [128, 128]]`` → the signature of a Gluon TMA descriptor of that block (with the
    default shared layout), in the spelling of the Triton that compiles it."""
    import torch
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    _, dtype, block = spec
    base = torch.empty([4 * b for b in block], dtype=getattr(torch, dtype))
    layout = gl.NVMMASharedLayout.get_default_for(block, getattr(gl, dtype))
    return mangle_type(TensorDescriptor.from_tensor(base, block, layout))


if __name__ == "__main__":
    print(json.dumps([_build(job) for job in json.loads(sys.stdin.read())]))
