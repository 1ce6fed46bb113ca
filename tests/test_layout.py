"""The house keeps its plan: the public surface stays as it was, no import circle, small rooms.

The snapshots were taken before the package was split into folders; a change to either is a
change to what users see and belongs in its own commit with a reason.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import polars_embed
from polars_embed.cli import build_parser

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "src" / "polars_embed"
SNAPSHOTS = Path(__file__).parent / "snapshots"


def cli_tree() -> dict:
    """Every command of ``polars-embed`` with its description and every option as declared."""

    def describe(parser) -> dict:
        entry: dict = {"description": parser.description, "epilog": parser.epilog, "options": [], "commands": {}}
        for action in parser._actions:
            if action.choices is not None and hasattr(action, "_name_parser_map"):
                helps = {c.dest: c.help for c in action._choices_actions}
                for name, child in action.choices.items():
                    entry["commands"][name] = {"help": helps.get(name), **describe(child)}
                continue
            entry["options"].append({
                "flags": list(action.option_strings) or [action.dest], "dest": action.dest,
                "help": action.help, "metavar": action.metavar, "nargs": action.nargs,
                "default": repr(action.default), "choices": list(action.choices) if action.choices else None,
                "required": action.required, "type": getattr(action.type, "__name__", None),
            })
        return entry

    return describe(build_parser())


def test_public_api_is_as_it_was():
    assert polars_embed.__all__ == json.loads((SNAPSHOTS / "all.json").read_text())
    assert polars_embed.__all__ == sorted(polars_embed.__all__)


def test_cli_help_tree_is_as_it_was():
    """Every command, flag, default and help text of ``polars-embed --help`` and below."""
    assert cli_tree() == json.loads((SNAPSHOTS / "cli.json").read_text())


def runtime_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports when it runs, lazy imports inside functions
    included (they close a circle all the same); ``if TYPE_CHECKING:`` imports left out."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update([target, *names])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != module}


def test_no_import_circle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = runtime_imports(path)
    # a package's __init__ re-exporting its members is not a circle: importing a member runs it first
    def edges(m: str) -> set[str]:
        return {t for t in graph[m] if not (m.startswith(t + ".") or t == m)}

    circles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges(m)):
            if state.get(t) == "open":
                circles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_rooms_stay_small():
    """No module over 400 lines outside ``testing/``, no function over 80 lines."""
    big, long = [], []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith("testing/") and len(source.splitlines()) > 400:
            big.append(rel)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{rel}:{node.lineno} {node.name}")
    assert big == [] and long == []


def test_every_folder_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), init


def test_architecture_names_only_folders_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:src/polars_embed/)?[a-z_]+/)`", text))
    assert named, "docs/architecture.md names no folder"
    for folder in named:
        assert (PACKAGE / folder.removeprefix("src/polars_embed/")).is_dir(), folder
    for folder in PACKAGE.iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            assert f"`{folder.name}/`" in text, f"docs/architecture.md does not describe {folder.name}/"
