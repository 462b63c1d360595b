"""What the H100 would run, without a GPU: registers, spills, shared memory, load and async-copy widths and
wgmma use of every kernel case of tests/test_hopper_compile.py, compiled for sm_90a on this machine.

Usage: PYTHONPATH=src python3 scripts/hopper_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hopper_ptx import compile_for_hopper  # noqa: E402
from test_hopper_compile import (  # noqa: E402
    GEMM_CASES,
    GEMV_CASES,
    QUANTIZE_GEMV_CASES,
    TQ_CASES,
    gemm_job,
    gemv_job,
    kv_attention_job,
    quantize_gemv_job,
    transform_quantize_job,
)


def main() -> None:
    jobs = {f"transform+quantize {name} {'static' if static else 'dynamic'}": transform_quantize_job(*case, static)
            for name, case in TQ_CASES.items() for static in (False, True)}  # fmt: skip
    jobs["int4-kv decode attention"] = kv_attention_job()
    jobs.update({f"w4a4 gemm {name}": gemm_job(*case) for name, case in GEMM_CASES.items()})
    jobs.update({f"w4a4 {name}": gemv_job(*case) for name, case in GEMV_CASES.items()})
    jobs.update({f"w4a4 {name}": quantize_gemv_job(*case) for name, case in QUANTIZE_GEMV_CASES.items()})
    print(f"{'kernel case':<44} {'regs':>5} {'spill B':>8} {'smem KB':>8} {'wgmma':>6}  loads / async copies (bytes)")
    for name, b in zip(jobs, compile_for_hopper(list(jobs.values())), strict=True):
        loads = ",".join(sorted(op.replace("ld.global.", "") for op in b.memory_ops("ld")))
        copies = ",".join(str(v) for v in sorted(b.async_copy_bytes())) or "-"
        print(f"{name:<44} {b.registers:>5} {b.spill_bytes:>8} {b.shared_bytes / 1024:>8.1f} {str(b.uses_wgmma):>6}  "
              f"{loads} / {copies}")  # fmt: skip


if __name__ == "__main__":
    main()
