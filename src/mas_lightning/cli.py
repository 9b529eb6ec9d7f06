"""Command line: ``python -m mas_lightning <command> -c config.yaml --dotted.key=value``.

Each command is a typed function; jsonargparse turns its signature (types, defaults, docstring) into
options, YAML config files (``-c``/``--config``, repeatable, later wins), ``--print_config`` and
dependency injection of classes with ``class_path``/``init_args``. Bad input (unknown key, wrong type,
value rejected by a constructor, a YAML syntax error) ends with one line naming the problem and exit code 2,
without jsonargparse's usage block (``--help`` shows it); Ctrl-C ends with one line saying where the run
stopped and the command that resumes it, and exit code 130.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import sys
from argparse import Action, ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from mas_lightning.errors import ConfigError, RunError

# Dataclass options (``--engine.*``, ``--method.affinity.*``) document themselves with attribute docstrings.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

# name -> "module:function"; imported when the parser is built so each command's signature is its CLI.
RESOLVED_CONFIG = "resolved_config"
"""A command parameter of this name is hidden from the CLI and receives the resolved config as YAML."""

COMMANDS: dict[str, str] = {
    "data": "mas_lightning.commands.preview:data",
    "check-data": "mas_lightning.commands.check_data:check_data",
    "prepare-data": "mas_lightning.commands.prepare_data:prepare_data",
    "fit": "mas_lightning.commands.fit:fit",
    "central": "mas_lightning.commands.central:central",
    "compare": "mas_lightning.commands.compare:compare",
    "test": "mas_lightning.commands.evaluate_run:evaluate_run",
    "export": "mas_lightning.commands.export:export",
}

PROG = "python -m mas_lightning"
INTERRUPTED = 130
"""Exit code after Ctrl-C: the shell's 128 + SIGINT."""


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _help_line(name: str, target: str) -> str:
    """First docstring line of a command's function, read from its source without importing the module
    (importing ``fit`` takes seconds: torch, Lightning); falls back to importing it."""
    module, function_name = target.split(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text()) if spec and spec.origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        tree = None
    for node in tree.body if tree is not None else []:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function_name:
            doc = ast.get_docstring(node)
            if doc:
                return doc.strip().splitlines()[0]
    return (_load(target).__doc__ or name).strip().splitlines()[0]


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the type and default of factory options written for people.

    A factory option (``optimizer``, ``model``) is typed ``Callable[[arguments], Class]``: the user gives a
    class with ``class_path``/``init_args`` and the command supplies the arguments. Its type reads
    "Class class (class_path, init_args; ... given by the command)", and a function default reads as the
    first line of the function's docstring instead of its dotted import path.
    """

    def _get_type_str(self, action: Action) -> str | None:
        text = super()._get_type_str(action)
        return None if text is None else readable_type(text)

    def _expand_help(self, action: Action) -> str:
        text = super()._expand_help(action)
        function = _function_default(action.default)
        if function is not None:
            doc = (function.__doc__ or "").strip()
            readable = doc.splitlines()[0].rstrip(".") if doc else f"{function.__name__}()"
            text = text.replace(f"default: {function.__module__}.{function.__qualname__}", f"default: {readable}")
        return text


def _function_default(default: object) -> Callable[..., Any] | None:
    """The function a default names (jsonargparse keeps a function default as its dotted path)."""
    if inspect.isfunction(default):
        return default
    if isinstance(default, str) and "." in default:
        module, _, name = default.rpartition(".")
        found = getattr(sys.modules.get(module), name, None)
        return found if inspect.isfunction(found) else None
    return None


_CALLABLE = re.compile(r"^Callable\[\[(?P<args>.*)\], (?P<result>[\w.]+)\]$")


def readable_type(text: str) -> str:
    """``Callable[[Unvalidated<Iterator[Parameter]>], Optimizer]`` -> ``Optimizer class (class_path,
    init_args; Iterator[Parameter] given by the command)``; other type strings lose only ``Unvalidated<>``."""
    text = re.sub(r"Unvalidated<([^<>]*)>", r"\1", text)
    match = _CALLABLE.match(text)
    if match is None:
        return text
    return f"{match['result']} class (class_path, init_args; {match['args']} given by the command)"


def _class_help_epilog(parser: ArgumentParser) -> str | None:
    """The line that tells where the options of each class-valued option are (``--method.help MAS``)."""
    names = [a.option_strings[0] for a in parser._actions
             if a.option_strings and a.option_strings[0].endswith(".help")]
    if not names:
        return None
    example = "--method.help MAS" if "--method.help" in names else f"{names[0]} CLASS"
    return ("Options of the chosen classes (method, model, data, ...) have their own help: "
            + ", ".join(f"{name} CLASS" for name in names) + f"; e.g. {example}.")


def build_parser(commands: dict[str, str] | None = None, *, only: str | None = None,
                 lazy: bool = False) -> ArgumentParser:
    """The parser with one subcommand per entry of ``commands`` (default: :data:`COMMANDS`).

    With ``lazy``, only the command ``only`` (none when None) gets its full parser; the others get an empty
    one with their help line: building a command's parser imports its module and everything its signature
    names, so ``--help`` and one command's parse skip the other commands' imports.

    ``exit_on_error=False``: a parse error raises ``ArgumentError`` for :func:`main` to print as one line,
    instead of jsonargparse printing its ~30-line usage block first.
    """
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], exit_on_error=False,
                            formatter_class=HelpFormatter,
                            epilog=f"Each command's options: {PROG} COMMAND --help; the options of a class "
                                   f"chosen for an option: {PROG} COMMAND --method.help MAS (--model.help, "
                                   f"--data.help, ...).")
    subcommands = parser.add_subcommands(dest="command")
    for name, target in (commands or COMMANDS).items():
        if lazy and name != only:
            help_line = _help_line(name, target)
            stub = ArgumentParser(description=help_line, exit_on_error=False, formatter_class=HelpFormatter)
            subcommands.add_subcommand(name, stub, help=help_line)
            continue
        function = _load(target)
        help_line = (function.__doc__ or name).strip().splitlines()[0]
        subcommands.add_subcommand(name, command_parser(function), help=help_line)
    return parser


def command_parser(function: Callable[..., Any]) -> ArgumentParser:
    """The parser of one command: ``-c/--config`` plus one option per parameter of ``function``."""
    sub = ArgumentParser(description=(function.__doc__ or "").strip().split("\n\n")[0], exit_on_error=False,
                         formatter_class=HelpFormatter)
    sub.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file(s); later ones win.")
    sub.add_function_arguments(function, fail_untyped=True, skip={RESOLVED_CONFIG})
    sub.epilog = _class_help_epilog(sub)
    return sub


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> NoReturn:
    print(_one_line(message), file=sys.stderr)
    raise SystemExit(code)


def config_files(args: Sequence[str]) -> list[Path]:
    """The files given with ``-c``/``--config`` (``-c X``, ``--config X``, ``--config=X``, ``-c=X``)."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            files.append(arg.split("=", 1)[1])
    return [Path(f) for f in files if Path(f).is_file()]


def yaml_error(files: Sequence[Path], seen: set[Path] | None = None) -> str | None:
    """The first YAML syntax error in ``files`` or the files they include (``config: other.yaml``), as
    "file, line L, column C: problem"; jsonargparse names only "<unicode string>"."""
    seen = set() if seen is None else seen
    for path in files:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
            context = ""
            if error.context and error.context_mark and error.context_mark is not mark:
                context = f" ({error.context} at line {error.context_mark.line + 1}, column " \
                          f"{error.context_mark.column + 1})"
            return f"{where}: YAML syntax error: {error.problem or error.context}{context}"
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        included = _included(node, path.parent)
        if included and (found := yaml_error(included, seen)) is not None:
            return found
    return None


def _included(node: Any, folder: Path) -> list[Path]:
    """Files a config includes with a top-level ``config:`` key (one path or a list), relative to it."""
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if getattr(key, "value", None) == "config":
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            names = [item.value for item in items if isinstance(item, yaml.ScalarNode)]
            return [p for p in (folder / n for n in names) if p.is_file()]
    return []


def resume_command(args: Sequence[str], overwrite: bool) -> str:
    """The command that continues this run: the same command line with ``--resume auto`` (and no overwrite)."""
    script = Path(sys.argv[0]).name if sys.argv else ""
    if script == "mas-lightning":
        prog = [script if shutil.which(script) == os.path.abspath(sys.argv[0]) else sys.argv[0]]
    else:
        prog = ["python" if shutil.which("python") == sys.executable else sys.executable, "-m", "mas_lightning"]
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--resume", "--overwrite"):
            skip = True
        elif not arg.startswith(("--resume=", "--overwrite=")):
            kept.append(arg)
    extra = ["--overwrite", "false"] if overwrite else []
    return shlex.join([*prog, *kept, *extra, "--resume", "auto"])


def main(argv: Sequence[str] | None = None, commands: dict[str, str] | None = None) -> Any:
    """Parse ``argv``, build the configured objects and run the chosen command; returns its result."""
    commands = commands or COMMANDS
    args = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in args if a in commands), None)
    parser = build_parser(commands, only=name, lazy=True)
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as error:
        message = _one_line(error)
        if "<unicode string>" in message:
            message = yaml_error(config_files(args)) or message
        where, hint = (f"invalid configuration for '{name}'", f"{PROG} {name} --help") if name else \
            ("invalid command line", f"{PROG} --help")
        _fail(f"error: {where}: {message} (see: {hint})", 2)
    name = cfg.command
    function = _load(commands[name])
    resumable = "resume" in inspect.signature(function).parameters
    try:
        return _run(parser, cfg, name, function)
    except KeyboardInterrupt:
        # Outside a training loop (parsing, data, Fabric, the summary): nothing new was trained.
        then = f"; run it again with: {resume_command(args, bool(cfg[name].get('overwrite')))}" if resumable else ""
        _fail(f"{name} interrupted before or after its training loop{then}", INTERRUPTED)
    except RunError as error:
        if error.exit_code == INTERRUPTED and resumable:
            _fail(f"{name} {error}; resume with: {resume_command(args, bool(cfg[name].get('overwrite')))}",
                  INTERRUPTED)
        # The run stopped for a reason the message explains (where, and what to do next): no traceback.
        _fail(f"error: {name} stopped: {error}", error.exit_code)


def _run(parser: ArgumentParser, cfg: Any, name: str, function: Callable[..., Any]) -> Any:
    try:
        init = parser.instantiate(cfg)
    except (ValueError, TypeError, FileNotFoundError) as error:
        # A constructor rejected a value: one clear line, no traceback, same exit code as a parse error.
        _fail(f"error: invalid configuration for '{name}': {error}", 2)
    kwargs = {k: v for k, v in vars(init[name]).items() if k != "config"}
    if RESOLVED_CONFIG in inspect.signature(function).parameters:
        # Commands that keep a record of their run receive the full resolved config as YAML.
        kwargs[RESOLVED_CONFIG] = command_parser(function).dump(cfg[name])
    try:
        return function(**kwargs)
    except ConfigError as error:
        # Checks that need several values together (tasks vs data, split round vs rounds) fail here.
        _fail(f"error: invalid configuration for '{name}': {error}", error.exit_code)
