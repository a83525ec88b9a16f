"""The examples in docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

SUBPACKAGES = ("models", "data_gen", "infer", "train")


def _modules() -> list[str]:
    names = []
    for sub in SUBPACKAGES:
        package = importlib.import_module(f"dislotrack.{sub}")
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")]
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


#: The notebook API (README › From Python): each documents every parameter it takes.
NOTEBOOK_API = ("infer.pipeline:analyze", "infer.tracking:track_detections", "infer.outputs:write_tables",
                "infer.run:infer_one", "infer.result:AnalysisResult.relink",
                "infer.figures:trajectories_figure", "infer.figures:displacement_figure",
                "infer.figures:counts_figure", "infer.event_figure:events_figure",
                "infer.readers:open_movie", "infer.readers:movie_from_array")


@pytest.mark.parametrize("name", NOTEBOOK_API)
def test_the_notebook_api_documents_every_parameter(name):
    import inspect
    import re

    module, attr = name.split(":")
    obj = importlib.import_module(f"dislotrack.{module}")
    for part in attr.split("."):
        obj = getattr(obj, part)
    doc = inspect.getdoc(obj) or ""
    section = re.search(r"^Parameters\n-+\n(.*?)(?:^\w[\w ]*\n-+\n|\Z)", doc, re.M | re.S)
    assert section, f"{name} has no Parameters section"
    # numpy style: "name : type", or "a, b : type" for several
    documented = {n.strip().lstrip("*") for line in section.group(1).splitlines()
                  if re.match(r"^\**\w", line) for n in line.split(" : ")[0].split(",")}
    taken = {p.name for p in inspect.signature(obj).parameters.values() if p.name != "self"}
    assert taken <= documented, f"{name} leaves undocumented: {sorted(taken - documented)}"
