"""The ``export`` command: a finished run's serving models as standard Lightning checkpoints.

One file per serving group, ``<out>/<group letters>.ckpt``, holding what Lightning writes and reads:
``state_dict`` (the model's weights), ``hyper_parameters`` (the keyword arguments that rebuild it) and
``pytorch-lightning_version``. So either of these gives the trained model back::

    checkpoint = torch.load("export/dn.ckpt", weights_only=True)
    model = MultiTaskModel(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])

    model = MultiTaskModel.load_from_checkpoint("export/dn.ckpt")   # or lightning.Trainer(...).test(..., ckpt_path=)

A training-time loss weighting (GradNorm) is not part of a served model: its state is kept apart, under
``mas_lightning.loss_weighting``, and ``state_dict`` loads into the default (equal) weighting.
``<out>/serving.json`` says which file answers for which task, with the run's test losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mas_lightning.errors import ConfigError
from mas_lightning.run_loading import FinishedRun, load_run, parse_run_tasks
from mas_lightning.tasks import letters

WEIGHTING = "loss_weighting."
"""The prefix of the loss weighting's entries in a MultiTaskModel's state_dict."""


def export(run: Path, out: Path, tasks: str | list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a finished run's serving models as Lightning checkpoints (state_dict + the config that rebuilds them).

    Args:
        run: the run folder (``<out>/<name>``) of a finished ``fit``.
        out: folder to write ``<group>.ckpt`` files and ``serving.json`` to (created if needed).
        tasks: export only the models serving these tasks, as letters ("dn"), names or "all" (default: all).
        overwrite: replace files already in ``out``; without it an existing file is refused.
    """
    import json

    import torch

    opened = load_run(run, device="cpu")
    chosen = parse_run_tasks(opened, tasks)
    keys = list(dict.fromkeys(opened.serving[t] for t in chosen))
    files = {key: Path(out) / f"{key}.ckpt" for key in keys}
    index = Path(out) / "serving.json"
    taken = [str(p) for p in [*files.values(), index] if p.exists()]
    if taken and not overwrite:
        raise ConfigError(f"out: {taken[0]} exists; choose another --out or add --overwrite true")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder")
    Path(out).mkdir(parents=True, exist_ok=True)
    for key, path in files.items():
        torch.save(checkpoint(opened, key), path)
    serving = {
        "run": str(opened.path),
        "serving": {t: files[opened.serving[t]].name for t in chosen},
        "test_loss": {t: opened.summary["test_loss"][t] for t in chosen},
        "total_test_loss": opened.summary["total_test_loss"],
    }
    index.write_text(json.dumps(serving, indent=2))
    for key, path in files.items():
        served = [t for t in chosen if opened.serving[t] == key]
        print(f"{path}: group {key}, serves {', '.join(served)}")
    print(f"which file serves which task: {index}")
    return serving


def checkpoint(run: FinishedRun, key: str) -> dict[str, Any]:
    """The Lightning checkpoint of group ``key``'s model (plain containers: loads with ``weights_only=True``)."""
    import lightning

    model = run.groups[key]
    hparams = getattr(model, "hparams", None)
    if hparams is None:
        raise ConfigError(f"model: {type(model).__name__} records no hyper-parameters (not a LightningModule "
                          f"with save_hyperparameters): it cannot be exported with the config that rebuilds it")
    state = model.state_dict()
    weighting = {k[len(WEIGHTING):]: v for k, v in state.items() if k.startswith(WEIGHTING)}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(hparams).items()}
    lw = getattr(model, "loss_weighting", None)
    return {
        "state_dict": {k: v for k, v in state.items() if not k.startswith(WEIGHTING)},
        "hyper_parameters": config,
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "mas_lightning": {
            "run": str(run.path),
            "group": key,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",  # whose (**hyper_parameters)
            "serves": letters(t for t in run.tasks if run.serving[t] == key),
            "stage": run.stages[key],
            "test_loss": {t: run.summary["test_loss"][t] for t in run.tasks if run.serving[t] == key},
            "loss_weighting": {"class": f"{type(lw).__module__}.{type(lw).__qualname__}", "state": weighting}
            if lw is not None else None,
        },
    }
