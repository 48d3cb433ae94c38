"""A stand-in interpreter for the job-array test (tests/test_shards.py): `$PYTHON -m uni_seg.cli ...`
runs the real command line with the model replaced by `EquivariantModel` (no checkpoint to
build); anything else goes to the real Python. With KILL_MARK=path and KILL_SHARD=K/N set, shard
K/N's process writes `path` and dies (as a node failure would: no cleanup) at its KILL_AT-th
forward pass: a kill point the test waits for by an event, never by a clock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

args = sys.argv[1:]
if args[:2] != ["-m", "uni_seg.cli"]:
    os.execv(sys.executable, [sys.executable, *args])

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stand_ins import EquivariantModel  # noqa: E402

from uni_seg import cli, infer  # noqa: E402

kill_here = os.environ.get("KILL_SHARD") and os.environ.get("KILL_SHARD") in args


class Model(EquivariantModel):
    calls = 0

    def forward(self, x):
        Model.calls += 1
        if kill_here and Model.calls == int(os.environ.get("KILL_AT", "1")):
            Path(os.environ["KILL_MARK"]).write_text(f"killed at forward pass {Model.calls}\n")
            os._exit(137)
        return super().forward(x)


meta = {"working_scale": 1.0, "model_config": {"backbone": "stand-in", "n_classes": 4}, "checkpoint_id": "stand-in"}
infer.load_inference_model = lambda path, device: (Model(), meta)
cli.main(args[2:])
