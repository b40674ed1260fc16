"""The runnable docstring examples of the package are run (doctest)."""

import doctest
import importlib

import pytest

MODULES = [
    "monai_contreg.methods.config",
    "monai_contreg.optim.schedule",
    "monai_contreg.losses.mind_loss",
    "monai_contreg.losses.similarity",
    "monai_contreg.workflow",  # none left: its usage block needs a dataset and is no doctest
]
# not run: monai_contreg.data.learn2reg, monai_contreg.data.download and monai_contreg.distributed show usage on a
# downloaded dataset / a network download / several processes


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
