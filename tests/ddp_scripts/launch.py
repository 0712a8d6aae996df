"""Run a DDP fit script in a subprocess and read the per-rank JSON digests it writes.

``Trainer(strategy="ddp")`` starts the other ranks by re-running the command line; inside pytest
that would re-run the whole session, so the DDP tests drive a script instead.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


def run_ddp_script(
    script: Path, out: Path, phases: tuple[str, ...], timeout: int
) -> dict[tuple[str, int], dict]:
    """Run ``script OUT`` with ``out`` as working directory; return ``{(phase, rank): digest}`` for ranks 0 and 1.

    The combined output goes to ``out/ddp.log``; on failure the assertion shows the lines of the
    ranks other than 0 (rank 0's are prefixed ``[rank0]``), where DDP errors usually surface.
    """
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=out, check=False,
    )  # fmt: skip
    log = out / "ddp.log"
    log.write_text(result.stdout + result.stderr)
    other_ranks = "\n".join(line for line in log.read_text().splitlines() if not line.startswith("[rank0]"))
    assert result.returncode == 0, f"{log}, without [rank0] lines:\n{other_ranks[-4000:]}"
    return {
        (phase, rank): json.loads((out / f"{phase}_rank{rank}.json").read_text())
        for phase in phases
        for rank in (0, 1)
    }
