"""Layering rules (STYLE.md): core and protocol do no I/O, dits never imports remote."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {
    "os",
    "io",
    "socket",
    "subprocess",
    "pathlib",
    "shutil",
    "time",
    "lmdb",
    "boto3",
    "asyncio",
    "tempfile",
    "mmap",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_and_protocol_do_no_io() -> None:
    paths = [*(ROOT / "dits" / "core").glob("*.py"), *(ROOT / "dits" / "protocol").glob("*.py")]
    for path in paths:
        bad = {n for n in imports(path) if n.split(".")[0] in IO_MODULES}
        assert not bad, f"{path.name} imports {bad}"


def test_dits_never_imports_remote() -> None:
    for path in (ROOT / "dits").rglob("*.py"):
        assert not any(n.split(".")[0] == "remote" for n in imports(path)), path


def test_lmdb_only_inside_store() -> None:
    for path in (ROOT / "dits").rglob("*.py"):
        if "store" in path.parts:
            continue
        assert "lmdb" not in {n.split(".")[0] for n in imports(path)}, path


def test_staging_sits_below_ops_and_its_decisions_do_no_io() -> None:
    # STYLE.md: core <- (protocol, store) <- (transport, repository, staging) <- ops <- cli.
    for path in (ROOT / "dits" / "staging").glob("*.py"):
        names = {n for n in imports(path) if n.startswith("dits.")}
        bad = {n for n in names if n.split(".")[1] in ("ops", "cli", "speculative", "net")}
        assert not bad, f"{path.name} imports {bad}"
    for name in ("analysis.py", "network.py", "config.py"):
        bad = {
            n for n in imports(ROOT / "dits" / "staging" / name) if n.split(".")[0] in IO_MODULES
        }
        assert not bad, f"staging/{name} imports {bad}"
