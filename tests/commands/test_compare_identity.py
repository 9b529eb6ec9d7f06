"""``compare`` trusts a run folder by the identity of its run, not by its name.

One variant, one seed, one round of a tiny synthetic run; the comparison is called again after each change
and must say (and do) what the folder deserves: reused, rerun (naming the changed keys) or resumed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mas_lightning.cli import COMMANDS, main
from mas_lightning.federated.checkpoint import load_checkpoint

WITH_COMPARE = {**COMMANDS, "compare": "mas_lightning.commands.compare:compare"}
CONFIG = """\
shared:
  data:
    class_path: mas_lightning.data.synthetic.SyntheticData
    init_args: {{clients: 3, sizes: [8], resolution: 32}}
  tasks: dn
  rounds: {rounds}
  accelerator: cpu
  engine: {{clients_per_round: 2, batch_size: 4, local_steps: 1, eval_batch_size: 16}}
  model:
    class_path: mas_lightning.model.MultiTaskModel
    init_args: {{decoder_width: 8}}
variants:
  aio: {{method: mas_lightning.methods.AllInOne}}
seeds: [0]
reference: null
"""


def run_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str], rounds: int) -> tuple[dict[str, Any], str]:
    """Run the comparison with ``rounds``; return its result and the line it printed for the one run."""
    config = tmp_path / "compare.yaml"
    config.write_text(CONFIG.format(rounds=rounds))
    result = main(["compare", "-c", str(config), f"--out={tmp_path / 'cmp'}"], commands=WITH_COMPARE)
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\[1/1\] aio-seed0: ", line)]
    assert len(lines) == 1
    return result, lines[0]


@pytest.mark.slow  # about 30 s: three tiny trainings and five comparisons in-process
def test_compare_reuses_only_runs_of_the_same_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cmp" / "runs" / "aio-seed0"
    first, line = run_compare(tmp_path, capsys, rounds=1)
    assert first["actions"] == {"aio-seed0": "new"} and first["ran"] == ["aio-seed0"]
    assert "--resume=auto" in line
    fingerprint = json.loads((run / "summary.json").read_text())["identity"]["fingerprint"]

    # Unchanged: read back, not trained (the summary file is not even rewritten).
    stamp = (run / "summary.json").stat().st_mtime_ns
    second, line = run_compare(tmp_path, capsys, rounds=1)
    assert second["actions"] == {"aio-seed0": "reused"} and second["ran"] == []
    assert line.startswith(f"[1/1] aio-seed0: reused (fingerprint {fingerprint})")
    assert (run / "summary.json").stat().st_mtime_ns == stamp

    # The shared config changed: the finished run no longer stands for this variant and is replaced.
    third, line = run_compare(tmp_path, capsys, rounds=2)
    assert third["actions"] == {"aio-seed0": "rerun: config changed (keys rounds)"}
    assert line.startswith("[1/1] aio-seed0: rerun: config changed (keys rounds): python -m mas_lightning fit")
    assert "--overwrite=true" in line and "--resume=auto" not in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["identity"]["fingerprint"] != fingerprint
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 rounds of the new run only

    # Interrupted after its last checkpoint (no summary): resumed when the checkpoint is of this config...
    (run / "summary.json").unlink()
    fourth, line = run_compare(tmp_path, capsys, rounds=2)
    assert fourth["actions"] == {"aio-seed0": "resumed"} and fourth["ran"] == ["aio-seed0"]
    assert line.startswith("[1/1] aio-seed0: resumed: python -m mas_lightning fit") and "--resume=auto" in line
    assert json.loads((run / "summary.json").read_text())["total_test_loss"] == summary["total_test_loss"]

    # ...and run again when it is not.
    (run / "summary.json").unlink()
    fifth, line = run_compare(tmp_path, capsys, rounds=1)
    assert fifth["actions"] == {"aio-seed0": "rerun: config changed (keys rounds)"}
    assert load_checkpoint(run / "checkpoints" / "last.pt")["identity"]["config"]["rounds"] == 1
    assert json.loads((run / "summary.json").read_text())["rounds"] == 1
