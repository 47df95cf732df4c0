"""docs/python.md runs as written: every ```python block, in order, in one namespace (on the tiny model its first
block builds), and it shows every public name of `opsft` (its __all__)."""

import re
from pathlib import Path

import opsft

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_every_public_name_is_shown():
    code = "\n".join(blocks())
    missing = [name for name in opsft.__all__ if not re.search(rf"\b{name}\b", code)]
    assert not missing, f"docs/python.md shows no example of {missing}"


def test_the_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write under runs/
    namespace: dict = {}
    for number, block in enumerate(blocks(), 1):
        exec(compile(block, f"docs/python.md block {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "adapter-off" in printed and "row 1" in printed and "'solution'" in printed
