"""``--help`` a person can read, and cheap to reach: the engine options carry their attribute docstrings, the
factory options read as classes, the class-valued options point to their own help, and building the
parsers imports no plotting or logging library of ours."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mas_lightning import cli

ROOT = Path(__file__).parents[1]


def _attribute_docstrings(path: Path, class_name: str) -> dict[str, str]:
    """``attribute -> docstring`` of a dataclass, read from its source (the string right after each field)."""
    tree = ast.parse(path.read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name).body
    docs = {}
    for field, after in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def _fit_help(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: no wrapping inside the docstrings
    parser = cli.build_parser({"fit": cli.COMMANDS["fit"]})
    fit_parser = parser._subcommands_action._name_parser_map["fit"]
    return " ".join(fit_parser.format_help().split())


def test_fit_help_shows_engine_docstrings_and_no_type_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _attribute_docstrings(ROOT / "src/mas_lightning/federated/config.py", "FederatedConfig")
    assert len(docs) >= 8, docs  # the source has them; the test reads what it checks
    text = _fit_help(monkeypatch)
    for attribute, doc in docs.items():
        assert f"--engine.{attribute}" in text
        assert doc in text, f"--engine.{attribute}: its docstring is missing from fit --help"
    assert "Unvalidated<" not in text
    assert "mas_lightning.commands.fit._sgd" not in text
    assert "Optimizer class (class_path, init_args; Iterator[Parameter] given by the command)" in text
    # The class-valued options name their own help in the epilog.
    for option in ("--method.help CLASS", "--model.help CLASS", "--data.help CLASS"):
        assert option in text
    assert "e.g. --method.help MAS" in text


def test_readable_type_keeps_plain_types() -> None:
    assert cli.readable_type("int | None") == "int | None"
    assert cli.readable_type("Callable[[tuple[str, ...]], MultiTaskModel]") == \
        "MultiTaskModel class (class_path, init_args; tuple[str, ...] given by the command)"


def test_main_help_lists_every_command_with_its_docstring(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, target in cli.COMMANDS.items():
        doc = (cli._load(target).__doc__ or "").strip().splitlines()[0]  # imported here, read by ast there
        assert f"{name} " in out and " ".join(doc.split()) in " ".join(out.split())


_PROBE = """
import json, sys
from mas_lightning import cli
what = sys.argv[1]
if what == "main":
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
elif what == "fit":
    parser = cli.build_parser(only="fit", lazy=True)
    parser._subcommands_action._name_parser_map["fit"].format_help()
else:
    import lightning  # noqa: F401
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(what: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, what], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=300)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _top(modules: set[str], name: str) -> set[str]:
    return {m for m in modules if m == name or m.startswith(name + ".")}


def test_main_help_imports_no_command() -> None:
    loaded = _modules_after("main")
    for heavy in ("torch", "lightning", "matplotlib", "wandb", "mas_lightning.commands.fit"):
        assert not _top(loaded, heavy), heavy


def test_fit_parser_imports_no_plotting_or_logging_library() -> None:
    loaded = _modules_after("fit")
    assert "mas_lightning.commands.fit" in loaded  # the probe did build fit's parser
    for heavy in ("wandb", "timm", "segmentation_models_pytorch", "tensorboard", "mas_lightning.data.contact_sheet",
                  "mas_lightning.report.pareto"):
        assert not _top(loaded, heavy), heavy
    # Lightning's torchmetrics imports matplotlib when it is installed; the parser must add none of its own.
    assert _top(loaded, "matplotlib") <= _top(_modules_after("lightning"), "matplotlib")
