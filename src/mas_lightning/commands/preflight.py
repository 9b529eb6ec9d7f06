"""Checks that ``fit`` runs before it trains, so that a bad option ends at once with one line and exit code 2.

Without them a negative learning rate surfaced only when the first client built its optimiser (after the data
was rendered), an unusable ``out`` folder or a missing ``resume`` file as a traceback, and Fabric's own
refusals (``precision``, ``devices``, ``accelerator``...) as a traceback that never named the option. Each
check raises :class:`~mas_lightning.errors.ConfigError` whose message names the key, the value given and what
would be accepted.

- :func:`check_options`: seed, output folder, resume file and the optimiser (built once on a dummy
  parameter), before Fabric and the data;
- :func:`make_fabric`: builds Fabric and names the option its constructor rejected;
- :func:`check_data`: what needs the data (``engine.clients_per_round`` against the number of clients).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric

from mas_lightning.errors import ConfigError
from mas_lightning.federated.checkpoint import find_resume

SEED_MAX = 2**32 - 1
"""numpy's (and so Fabric's ``seed_everything``) largest seed; the smallest is 0."""

FABRIC_KEYS: dict[str, str] = {
    "accelerator": "auto, cpu, cuda, mps or tpu",
    "strategy": "auto, ddp, ddp_spawn, dp, fsdp, deepspeed, ... (Lightning's strategy names)",
    "devices": "a count >= 1, -1 or 'auto' (all devices), or device indices such as '0,1'",
    "num_nodes": "an integer >= 1",
    "precision": "32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true",
}
"""The options passed to Fabric's constructor, and what each accepts (for messages)."""

_FABRIC_PATTERNS: dict[str, str] = {
    "accelerator": r"`?accelerator`?\s*=|`accelerator`",
    "strategy": r"`?strategy`?\s*=|`strategy`",
    "devices": r"`?devices`?\s*=|`devices`",
    "num_nodes": r"`?num_nodes`?\s*=|`num_nodes`",
    "precision": r"\bprecision\b",
}
"""How Fabric's messages name each option (``accelerator='x'``, ```num_nodes` must...``, ``Precision 'x'``)."""

OPTIMIZER_ACCEPTS: dict[str, str] = {
    "lr": "a number >= 0",
    "momentum": "a number >= 0",
    "weight_decay": "a number >= 0",
    "dampening": "a number >= 0",
    "eps": "a number >= 0",
    "betas": "two numbers in [0, 1)",
}
_OPTIMIZER_WORDS: dict[str, tuple[str, ...]] = {"lr": ("learning rate",), "eps": ("epsilon",), "betas": ("beta",)}
"""How torch's optimiser messages name an argument when not by its name ("Invalid learning rate: -1")."""


def check_options(*, optimizer: Callable[..., Any], seed: int, out: Path, run_dir: Path,
                  resume: bool | str | Path) -> None:
    """The checks that need neither Fabric nor the data: cheap, so they come first."""
    check_seed(seed)
    check_out(Path(out), Path(run_dir))
    check_resume(resume, Path(run_dir))
    check_optimizer(optimizer)


def check_seed(seed: int) -> None:
    """Fabric's ``seed_everything`` (numpy) takes seeds in [0, 2**32 - 1] only."""
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed} is out of range: use an integer in [0, {SEED_MAX}]")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder``, or None. A real probe file: permission bits alone lie
    (root ignores them, a read-only mount ignores them the other way)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.unlink(name)
    return None


def check_out(out: Path, run_dir: Path) -> None:
    """``out`` (and the run folder in it) must be folders, or creatable ones, where this process can write."""
    for key, path in (("out", out), ("out/name", run_dir)):
        existing = _nearest_existing(path)
        if existing.exists() and not existing.is_dir():
            where = "is a file" if existing == path else f"is inside {existing}, which is a file"
            raise ConfigError(f"{key}={path} {where}: {key} must be a folder (it holds the run's files); "
                              "give a folder path, or remove the file")
    folders = [run_dir, run_dir / "checkpoints"] if run_dir.is_dir() else [_nearest_existing(run_dir)]
    for folder in folders:
        if folder.is_dir() and (reason := _unwritable(folder)) is not None:
            raise ConfigError(f"out={out}: cannot write in {folder} ({reason}); give a writable folder with --out, "
                              "or make this one writable")


def check_resume(resume: bool | str | Path, run_dir: Path) -> None:
    """A checkpoint that ``resume`` names must exist now, not after the data is built."""
    try:
        find_resume(resume, run_dir / "checkpoints")
    except FileNotFoundError as error:
        raise ConfigError(f"{error}; resume accepts false, auto (continue if {run_dir}/checkpoints/last.pt "
                          "exists), true (it must exist) or the path of an existing checkpoint file") from None


def describe_factory(factory: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """The class (or function) a configured factory builds, and its keyword arguments.

    jsonargparse turns ``class_path``/``init_args`` of a ``Callable`` option into a ``functools.partial``
    whose positional arguments include the class.
    """
    keywords: dict[str, Any] = {}
    target: Any = factory
    while isinstance(target, functools.partial):
        keywords = {**target.keywords, **keywords}
        target = next((a for a in target.args if isinstance(a, type)), target.func)
    short = getattr(target, "__qualname__", repr(target))
    module = "torch.optim" if getattr(torch.optim, short, None) is target else getattr(target, "__module__", "")
    return f"{module}.{short}".lstrip("."), keywords


def check_optimizer(optimizer: Callable[..., Any]) -> None:
    """Build the optimiser once on a dummy parameter: its constructor's checks (lr >= 0...) run now."""
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer(iter([dummy]))
    except (ValueError, TypeError) as error:
        name, keywords = describe_factory(optimizer)
        message = " ".join(str(error).split())
        for key, value in keywords.items():
            words = (key, *_OPTIMIZER_WORDS.get(key, ()))
            if any(re.search(rf"\b{re.escape(w)}\b", message, re.IGNORECASE) for w in words):
                accepted = OPTIMIZER_ACCEPTS.get(key, f"a value that {name} accepts")
                raise ConfigError(f"optimizer.init_args.{key}={value!r} is rejected by {name} ({message}): "
                                  f"{key} must be {accepted}") from None
        given = ", ".join(f"{k}={v!r}" for k, v in keywords.items())
        raise ConfigError(f"optimizer: {name}({given}) cannot be built ({message}); give init_args that "
                          f"{name} accepts") from None


def make_fabric(**options: Any) -> Fabric:
    """``Fabric(**options)``, with a refusal of accelerator, strategy, devices, num_nodes or precision
    turned into a :class:`ConfigError` naming the option, its value and what it accepts."""
    try:
        return Fabric(**options)
    except (ValueError, TypeError, RuntimeError, ImportError) as error:
        message = " ".join(str(error).split())
        keys = [k for k, pattern in _FABRIC_PATTERNS.items() if k in options and re.search(pattern, message, re.I)]
        keys = keys or [k for k in FABRIC_KEYS if k in options]
        named = "; ".join(f"{k}={options[k]!r} (accepted: {FABRIC_KEYS[k]})" for k in keys)
        raise ConfigError(f"{named}: Fabric refused it: {message}") from None


def check_data(clients_per_round: int | float, num_clients: int, data_name: str = "data") -> None:
    """``engine.clients_per_round`` as a count cannot exceed the clients that the data has."""
    if isinstance(clients_per_round, int) and not isinstance(clients_per_round, bool) \
            and clients_per_round > num_clients:
        raise ConfigError(f"engine.clients_per_round={clients_per_round} is more than the {num_clients} clients "
                          f"of {data_name}: use a count in [1, {num_clients}] or a fraction in (0, 1]")
