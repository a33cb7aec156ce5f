"""Source converters for ``python -m webdata.build <source>``: one module per dataset format.

``SOURCES`` maps the command-line name to ``"module:Class"``; modules are imported only when used.
"""

from __future__ import annotations

import importlib

SOURCES: dict[str, str] = {
    "chexone": "webdata.sources.chexone_json:CheXOneJSONSource",
    "chexinstruct": "webdata.sources.chexinstruct:CheXinstructSource",
    "mimic-cxr": "webdata.sources.mimic_cxr:MIMICCXRSource",
    "chexpert-plus": "webdata.sources.chexpert_plus:CheXpertPlusSource",
    "vindr-cxr": "webdata.sources.vindr_cxr:VinDrCXRSource",
    "nih-boxes": "webdata.sources.nih_boxes:NIHBoxesSource",
    "ms-cxr": "webdata.sources.ms_cxr:MSCXRSource",
}


def get_source(name: str) -> type:
    """The converter class registered as ``name``."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; choose from {sorted(SOURCES)}")
    module, _, attr = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["SOURCES", "get_source"]
