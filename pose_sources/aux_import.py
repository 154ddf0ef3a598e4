"""controlnet_aux, imported only when needed.

`import controlnet_aux` takes seconds (it pulls in timm and every annotator) and prints timm
"Overwriting ... in registry" warnings that mean nothing here; only drawing and detection
need it, so they import it through this module.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def import_quietly(name: str) -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return importlib.import_module(name)
