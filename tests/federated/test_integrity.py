"""Checkpoints you can trust: damage, a foreign task set or a failing disk ends with one line naming the file.

Unit tests drive :mod:`mas_lightning.federated.checkpoint` and :mod:`mas_lightning.report.metrics_file`
directly; one test resumes a real (in-process) run from a checkpoint with flipped bytes, and one runs ``fit``
in a subprocess whose files may not grow past 1 MiB (``RLIMIT_FSIZE``), so that the checkpoint write fails
with ``EFBIG`` as on a full disk.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from corruption import flip_tensor_byte

from mas_lightning.cli import main
from mas_lightning.errors import ConfigError, RunError
from mas_lightning.federated import checkpoint
from mas_lightning.federated.checkpoint import LAST, load_checkpoint, load_state, save_checkpoint
from mas_lightning.federated.state import new_state
from mas_lightning.report import metrics_file

TASKS = ("depth_zbuffer", "normal", "edge_texture")
FIT = ["fit", "--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 3}}',
       "--tasks", "dnt", "--rounds", "1", "--engine.clients_per_round", "2", "--engine.batch_size", "4",
       "--engine.local_steps", "1", "--model.decoder_width", "8", "--accelerator", "cpu"]  # fmt: skip


def run_state(rounds: int = 3, groups: list[tuple[str, ...]] | None = None) -> dict[str, Any]:
    """A run state after ``rounds`` rounds of one all-in-one stage, with a weight large enough to damage."""
    state = new_state()
    state.update(stage=0, round=rounds, stage_started=True, stage_name="all-in-one", groups=groups or [TASKS],
                 weights=[{"w": torch.arange(4096.0)}], metrics=[{"round": r} for r in range(rounds)])
    return dict(state)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------- damaged files
def test_roundtrip_keeps_a_plain_torch_file_with_a_checksum_trailer(tmp_path: Path) -> None:
    path = save_checkpoint(run_state(), tmp_path)
    assert torch.equal(load_checkpoint(path)["weights"][0]["w"], torch.arange(4096.0))
    assert path.read_bytes()[-checkpoint.TRAILER.size :].startswith(checkpoint.MAGIC)
    assert torch.load(path, weights_only=True)["round"] == 3  # torch.load ignores the trailer


def test_flipped_bytes_are_refused_although_torch_would_read_them(tmp_path: Path) -> None:
    path = save_checkpoint(run_state(), tmp_path)
    flip_tensor_byte(path, mask=0xFF)
    damaged = torch.load(path, weights_only=True)["weights"][0]["w"]  # silently wrong without a checksum
    assert not torch.equal(damaged, torch.arange(4096.0))
    with pytest.raises(RunError) as error:
        load_state(path, [], torch.device("cpu"), TASKS, "auto")
    assert str(path) in one_line(error) and "checksum" in str(error.value)


def damage(path: Path, how: str) -> None:
    """Damage the checkpoint at ``path`` (written by save_checkpoint) in the way ``how`` names."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "trailer cut":
        path.write_bytes(path.read_bytes()[:-1])
    elif how == "appended":
        path.write_bytes(path.read_bytes() + b"\0")
    elif how == "doubled":  # two writes into one file: the trailer's length no longer fits
        path.write_bytes(path.read_bytes() * 2)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(3000))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "unreadable":  # a symlink loop: open() fails with ELOOP, even as root
        path.unlink()
        path.symlink_to(path.name)


@pytest.mark.parametrize(
    ("how", "reason"),
    [("truncated", "no checksum trailer"), ("trailer cut", "no checksum trailer"), ("appended", "no checksum trailer"),
     ("doubled", "trailer says"),
     ("empty", "is empty"), ("garbage", "no checksum trailer"), ("directory", "is a directory"),
     ("unreadable", "cannot be read")],
)
@pytest.mark.parametrize(("resume", "kind"), [("auto", RunError), (True, RunError), ("named", ConfigError)])
def test_a_damaged_checkpoint_stops_with_one_line(tmp_path: Path, how: str, reason: str, resume: Any,
                                                  kind: type[Exception]) -> None:
    path = save_checkpoint(run_state(), tmp_path)
    damage(path, how)
    with pytest.raises(kind) as error:
        load_state(path, [], torch.device("cpu"), TASKS, path if resume == "named" else resume)
    message = one_line(error)
    assert str(path) in message and reason in message


def test_a_checkpoint_of_another_task_set_names_both(tmp_path: Path) -> None:
    path = save_checkpoint(run_state(), tmp_path)
    assert load_state(path, [], torch.device("cpu"), TASKS)["round"] == 3  # its own task set resumes
    with pytest.raises(RunError) as error:
        load_state(path, [], torch.device("cpu"), ("depth_zbuffer", "normal"))
    message = one_line(error)
    assert str(path) in message and "'dnt'" in message and "'dn'" in message
    # A task that only a finished stage mentions (MAS after the split, one-by-one) counts as well.
    state = run_state(groups=[("normal",)])
    state["history"] = [{"name": "one-by-one/k", "groups": [["keypoints2d"]]}]
    with pytest.raises(ConfigError, match=r"holds tasks 'nk'.*this run's tasks are 'dnt'"):
        load_state(save_checkpoint(state, tmp_path), [], torch.device("cpu"), TASKS, tmp_path / LAST)


def test_a_checkpoint_without_a_run_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="lacks .*weights"):
        load_state(save_checkpoint({"round": 1}, tmp_path), [], torch.device("cpu"), TASKS)


def test_a_checkpoint_from_before_checksums_loads(tmp_path: Path) -> None:
    torch.save(run_state(), tmp_path / LAST)  # a plain torch file: no trailer
    assert load_state(tmp_path / LAST, [], torch.device("cpu"), TASKS)["round"] == 3


def test_resuming_from_flipped_bytes_ends_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([*FIT, f"--out={tmp_path}", "--name=run"])
    path = tmp_path / "run" / "checkpoints" / LAST
    flip_tensor_byte(path, mask=0xFF)
    capsys.readouterr()
    for resume, code in (("auto", 1), (str(path), 2)):
        with pytest.raises(SystemExit) as exit_info:
            main([*FIT, f"--out={tmp_path}", "--name=run", f"--resume={resume}"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == code, err
        assert len(err.splitlines()) == 1 and str(path) in err and "checksum" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- failing storage
class FailingFile(io.FileIO):
    """A file whose writes fail with ``code`` once ``budget`` bytes are written (a disk that fills up)."""

    budget = 1000
    code = errno.ENOSPC

    def write(self, data: Any) -> int:
        FailingFile.budget -= memoryview(data).nbytes
        if FailingFile.budget < 0:
            raise OSError(FailingFile.code, os.strerror(FailingFile.code))
        return super().write(data)


@pytest.mark.parametrize(("where", "code"), [("write", errno.ENOSPC), ("open", errno.EROFS), ("open", errno.EACCES)])
def test_a_failed_write_names_the_file_and_the_last_good_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                where: str, code: int) -> None:
    save_checkpoint(run_state(rounds=3), tmp_path)

    def failing_open(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" not in mode:
            return open(path, mode, *args, **kwargs)
        if where == "open":
            raise OSError(code, os.strerror(code), str(path))
        FailingFile.budget, FailingFile.code = 1000, code
        return FailingFile(path, "w")

    monkeypatch.setattr(checkpoint, "open", failing_open, raising=False)
    with pytest.raises(RunError) as error:
        save_checkpoint(run_state(rounds=4), tmp_path)
    message = one_line(error)
    assert str(tmp_path / LAST) in message and os.strerror(code) in message and errno.errorcode[code] in message
    assert "last good checkpoint" in message and "3 rounds trained" in message and "inline_container" not in message
    assert temporaries(tmp_path) == []
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / LAST)["round"] == 3  # the previous checkpoint is untouched


@pytest.mark.parametrize("exception", [KeyboardInterrupt, ValueError])
def test_any_failure_during_the_write_removes_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 exception: type[BaseException]) -> None:
    def half_save(state: Any, handle: Any) -> None:
        handle.write(b"x" * 100)
        raise exception("stop")

    monkeypatch.setattr(checkpoint.torch, "save", half_save)
    with pytest.raises(exception):
        save_checkpoint(run_state(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_removed_checkpoint_folder_stops_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint(run_state(), folder)
    shutil.rmtree(folder)
    with pytest.raises(RunError) as error:
        save_checkpoint(run_state(rounds=4), folder)
    assert str(folder) in one_line(error) and "gone" in str(error.value)
    assert not folder.exists()  # not silently recreated


def test_temporaries_of_dead_writers_are_removed_at_the_next_start(tmp_path: Path) -> None:
    dead = tmp_path / f".{LAST}.{2**40}.tmp"  # no process has this id
    alive = tmp_path / f".{LAST}.{os.getppid()}.tmp"  # a writer still at work
    for path in (dead, alive):
        path.write_bytes(b"half a checkpoint")
    save_checkpoint(run_state(), tmp_path)
    assert not dead.exists() and alive.exists()


def test_a_failed_metrics_csv_write_names_the_file_and_the_checkpoint(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.csv"
    metrics_file.write_metrics_csv([{"round": 0}], path)

    def full_disk(self: Any, rows: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics_file.csv.DictWriter, "writerows", full_disk)
    with pytest.raises(RunError) as error:
        metrics_file.write_metrics_csv([{"round": 0}, {"round": 1}], path, run_state(rounds=2))
    message = one_line(error)
    assert str(path) in message and "ENOSPC" in message and str(tmp_path / "checkpoints" / LAST) in message
    assert "2 rounds trained" in message
    assert temporaries(tmp_path) == [] and path.read_text().splitlines() == ["round", "0"]


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_and_no_temporary_file(tmp_path: Path) -> None:
    # The run's config.yaml is 1 kB, its checkpoint 5 MB: the first checkpoint cannot be written.
    command = [sys.executable, "-m", "mas_lightning", *FIT, f"--out={tmp_path}", "--name=full"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, preexec_fn=_file_size_limit, env=env, capture_output=True, text=True,
                          timeout=280)
    err = done.stderr.strip()
    assert done.returncode == 1, err[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "inline_container" not in err, err[-3000:]
    assert str(tmp_path / "full" / "checkpoints" / LAST) in err and "EFBIG" in err
    assert temporaries(tmp_path) == []
