"""A run's identity: a fingerprint of everything that determines its numbers, and the keys two runs differ in.

The identity of a ``fit`` run is its resolved configuration without the keys in :data:`COSMETIC` (where
files go, what the run folder is called, how progress is shown, whether to resume or overwrite) plus the
package version. It is stored in the checkpoint (``state["identity"]``) and in ``summary.json``, so that a
resume with other options is refused (naming the keys that changed) and ``compare`` reuses a finished run
only when it still stands for the configuration asked for.

What stays in: data (except its cache folder), tasks, method, model, optimiser, aggregator, rounds, engine,
seed, and also precision, accelerator, devices, num_nodes and strategy, which change the floating-point
arithmetic (bf16 against fp32, the order of all-reduced sums).

Two sources of a configuration:

- the command line (``source: cli``): the YAML that jsonargparse resolved, every ``class_path`` rewritten
  to where the class is defined (``mas_lightning.federated.FedAvg`` and
  ``mas_lightning.federated.aggregation.FedAvg`` are one class);
- a Python call of ``fit`` (``source: python``): the arguments described in the same shape where they can
  be: dataclasses as their fields, ``functools.partial`` and jsonargparse's lazy instances as their class and
  keyword arguments (defaults filled in from the signature), objects as their class and the constructor
  parameters they keep as attributes of the same name, functions and classes by their dotted name. A
  constructor parameter an object does not keep (MAS keeps ``affinity`` inside its measurement callback)
  cannot be read back: it is recorded as :data:`NOT_RECORDED` and never counts as a difference; nor can what
  a lambda or closure computes with. So a Python call is checked on what it shows, no more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypedDict

import yaml

import mas_lightning
from mas_lightning.tasks import letters, parse_tasks

COSMETIC = ("logger", "wandb", "out", "name", "resume", "overwrite", "config", "__path__", "resolved_config",
            "data.init_args.cache_dir")
"""Keys (dotted for nested ones) left out of the identity: they name, place or show a run, never change its
numbers. ``logger`` (and ``wandb``, its W&B labels) only adds a live copy of the metrics; ``out``/``name``
place the run folder; ``resume`` and ``overwrite`` say what to do with an existing one; ``config`` lists the
YAML files the values came from; the data cache folder holds the same bytes wherever it is (the cache is keyed
by every generator parameter)."""

NOT_RECORDED = "(not recorded)"
"""The value of a constructor parameter that a Python object does not keep: matches any value."""

ABSENT = "(absent)"


class Identity(TypedDict):
    """What ``state["identity"]`` and ``summary.json``'s ``identity`` hold."""

    fingerprint: str
    version: str
    source: str
    config: dict[str, Any]


def identity_from_yaml(resolved_config: str) -> Identity:
    """The identity of a run configured on the command line (``fit``'s ``resolved_config``)."""
    config = yaml.safe_load(resolved_config) or {}
    return _identity(_canonical_paths(config), "cli")


def identity_from_arguments(arguments: Mapping[str, Any]) -> Identity:
    """The identity of a Python call of ``fit``, from its arguments (see the module docstring for the limits)."""
    return _identity({key: describe(value) for key, value in arguments.items()}, "python")


def _identity(config: dict[str, Any], source: str) -> Identity:
    config = _without_cosmetic(config)
    if isinstance(config.get("tasks"), (str, list)):
        with contextlib.suppress(ValueError):  # fit refuses a bad task set with its own message
            config["tasks"] = letters(parse_tasks(config["tasks"]))  # "all", "sdnkt", names: one task set
    config = _without_none(json.loads(json.dumps(config, default=str)))  # plain JSON: weights_only loads it
    return Identity(fingerprint=fingerprint(config), version=mas_lightning.__version__, source=source, config=config)


def _without_none(value: Any) -> Any:
    """Dicts without their ``null`` entries, as jsonargparse dumps them: an unset option is not a difference."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def fingerprint(config: Mapping[str, Any], version: str | None = None) -> str:
    """16 hex digits of the SHA-256 of the config (as sorted JSON) and the package version."""
    text = json.dumps({"config": config, "version": version or mas_lightning.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_cosmetic(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    for key in COSMETIC:
        *parents, last = key.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            if node is not config:  # copy the nested dicts on the way down before deleting from them
                node = _copy_path(config, parents)
            del node[last]
    return config


def _copy_path(config: dict[str, Any], parents: list[str]) -> dict[str, Any]:
    node = config
    for part in parents:
        node[part] = dict(node[part])
        node = node[part]
    return node


def _canonical_paths(value: Any) -> Any:
    """Every ``class_path`` (and dotted function name) rewritten to the module that defines it."""
    if isinstance(value, dict):
        return {k: (_canonical(v) if k == "class_path" else _canonical_paths(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_paths(v) for v in value]
    return value


def _canonical(path: Any) -> Any:
    if not isinstance(path, str) or "." not in path:
        return path
    module, _, name = path.rpartition(".")
    try:
        return _path(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError):
        return path


def _path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _class(path: str, init_args: dict[str, Any]) -> dict[str, Any]:
    return {"class_path": path, **({"init_args": init_args} if init_args else {})}


def _defaults(target: Any) -> dict[str, Any]:
    """The parameters of ``target``'s signature that have a default, with it."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters
            if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def describe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data in the shape of jsonargparse's resolved config (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 8:
        return _path(type(value))
    if isinstance(value, Enum):
        return describe(value.value, depth + 1)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [describe(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe(v, depth + 1) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: describe(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, functools.partial):
        arguments = {**_defaults(value.func), **value.keywords}
        described = _class(_path(value.func), {k: describe(v, depth + 1) for k, v in arguments.items()})
        if value.args:
            described["args"] = describe(value.args, depth + 1)
        return described
    lazy = getattr(value, "_lazy_class_type", None)
    if lazy is not None:  # jsonargparse.lazy_instance: built on first use, from these keyword arguments
        arguments = {**_defaults(lazy), **getattr(value, "_lazy_kwargs", {})}
        return _class(_path(lazy), {k: describe(v, depth + 1) for k, v in arguments.items()})
    if isinstance(value, type) or inspect.isroutine(value):
        return _path(value)
    kept = getattr(value, "__dict__", {})
    parameters = [p for p in _parameters(type(value)) if not p.startswith("_")]
    return _class(_path(type(value)),
                  {p: describe(kept[p], depth + 1) if p in kept else NOT_RECORDED for p in parameters})


def _parameters(cls: type) -> list[str]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values): ``{"data.init_args.resolution": 32, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys two identities differ in, as ``"key: old -> new"`` (the version first, if it changed).

    A value :data:`NOT_RECORDED` on either side matches anything, and so do the keys below it.
    """
    changes = []
    if old.get("version") != new.get("version"):
        changes.append(f"version: {old.get('version', ABSENT)} -> {new.get('version', ABSENT)}")
    before, after = flatten(old.get("config", {})), flatten(new.get("config", {}))
    for key in [*before, *(k for k in after if k not in before)]:
        was, now = before.get(key, ABSENT), after.get(key, ABSENT)
        if was == now or _unrecorded(before, key) or _unrecorded(after, key):
            continue
        changes.append(f"{key}: {_show(was)} -> {_show(now)}")
    return changes


def _unrecorded(flat: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` or a key above it is :data:`NOT_RECORDED` in ``flat``."""
    parts = key.split(".")
    return any(flat.get(".".join(parts[:n])) == NOT_RECORDED for n in range(1, len(parts) + 1))


def changed_keys(changes: list[str]) -> list[str]:
    """Just the keys of :func:`differences`' lines."""
    return [change.split(":", 1)[0] for change in changes]


def _show(value: Any, width: int = 40) -> str:
    """A value as a short YAML-like string (strings bare, null/true/false, long values cut)."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (bool, list, dict)) or \
        value is None else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
