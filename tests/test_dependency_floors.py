"""pyproject's dependency floors and constraints-min.txt (the versions .ci/run's second run installs) agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floors():
    text = (ROOT / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = ["): text.index("]", text.index("dependencies = ["))]
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', deps)}


def test_constraints_pin_every_floor():
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    floors = _floors()
    assert set(floors) <= set(pins)
    for name, floor in floors.items():
        if name == "torch":  # the one CPU wheel here is 2.13.0 (see constraints-min.txt)
            continue
        assert pins[name] == floor, name
    assert floors["pytorch-ignite"] == "0.5.4"  # ParamScheduler.attach; 0.4.13 was declared before


def _extra_floors(extra: str) -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{extra} = ["))
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?>=([0-9.]+)"', line)}


def test_constraints_pin_the_floors_of_the_extras():
    """The test and docs extras' floors are pinned too (the docs floors: the versions the strict build passed with)."""
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    docs = _extra_floors("docs")
    assert {"mkdocs", "mkdocstrings", "mkdocstrings-python"} <= set(docs)
    for name, floor in {**_extra_floors("test"), **docs}.items():
        assert pins.get(name) == floor, name
