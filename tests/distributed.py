"""Two CPU processes under torch.distributed (gloo) for the DDP tests.

A test file that needs them runs itself as a script: its fixture calls
:func:`run_workers`, which starts ``python FILE --worker RANK FOLDER`` once per rank and waits
for them; each worker joins the process group with :func:`process_group`, reads its inputs
from FOLDER and saves its results there, for the fixture to read::

    if __name__ == "__main__":  # a worker: --worker RANK FOLDER
        rank, folder = int(sys.argv[2]), Path(sys.argv[3])
        with process_group(rank, folder):
            ...
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORLD = 2  # processes


def run_workers(script: str | Path, folder: Path, timeout: float = 180) -> None:
    """Run ``script --worker RANK folder`` for every rank at once; fail with the end of the
    workers' output if one does not exit 0 within ``timeout`` seconds."""
    # One thread each: two processes share two slow cores. Loopback for gloo's connections:
    # the host name need not resolve.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # The worker script sits in a folder of tests/: this module and conftest beside it
    tests = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    logs = [folder / f"rank{rank}.log" for rank in range(WORLD)]
    workers = []
    for rank, log in enumerate(logs):
        with log.open("w") as out:
            command = [sys.executable, str(script), "--worker", str(rank), str(folder)]
            workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [worker.wait(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert codes == [0] * WORLD, "\n".join(log.read_text()[-3000:] for log in logs)


@contextmanager
def process_group(rank: int, folder: Path) -> Iterator[None]:
    """This worker in the WORLD processes' gloo group (rendezvous through a file in
    ``folder``), left when the block ends."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=WORLD
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
