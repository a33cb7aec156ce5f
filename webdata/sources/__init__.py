"""Source converters for ``python -m webdata.build <source>``: one module per dataset format, plus those of installed
plugins.

``SOURCES`` maps the built-in command-line names to ``"module:Class"``; :data:`REGISTRY` (a
:class:`chexone.registry.Registry` on entry-point group ``chexone.sources``) adds the sources of installed
distributions, declared like::

    [project.entry-points."chexone.sources"]
    my-source = "my_plugin.source:MySource"      # a webdata.sources.common.Source subclass

Built-in names win over a plugin's (which is then ignored with a warning naming its distribution); two plugins with
one name are a conflict, reported when that name is selected. Modules are imported only when their source is used
(a plugin's, only when selected or listed with ``--help``). ``CHEXONE_DISABLE_PLUGIN_AUTOLOAD=1`` ignores plugin
sources. See docs/data.md and docs/plugins.md.
"""

from __future__ import annotations

from typing import Any

from chexone.registry import PluginInfo, PluginLoadError, Registry

SOURCES: dict[str, str] = {
    "chexone": "webdata.sources.chexone_json:CheXOneJSONSource",
    "chexinstruct": "webdata.sources.chexinstruct:CheXinstructSource",
    "jsonl": "webdata.sources.sample_jsonl:SampleJSONLSource",
    "mimic-cxr": "webdata.sources.mimic_cxr:MIMICCXRSource",
    "chexpert-plus": "webdata.sources.chexpert_plus:CheXpertPlusSource",
    "vindr-cxr": "webdata.sources.vindr_cxr:VinDrCXRSource",
    "nih-boxes": "webdata.sources.nih_boxes:NIHBoxesSource",
    "ms-cxr": "webdata.sources.ms_cxr:MSCXRSource",
}

#: Entry-point group of third-party shard sources.
SOURCE_GROUP = "chexone.sources"


def _source_problem(obj: Any) -> str | None:
    from webdata.sources.common import Source

    if isinstance(obj, type) and issubclass(obj, Source):
        return None
    what = f"class {obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else type(obj).__name__
    return f"must be a webdata.sources.common.Source subclass (plan, convert, add_arguments, version), got {what}"


#: Built-in sources and the ``chexone.sources`` entry points of installed distributions.
REGISTRY: Registry[type] = Registry(SOURCE_GROUP, SOURCES, kind="source", validator=_source_problem)

_PLUGIN_PREFIX = "Error importing plugin "


def get_source(name: str) -> type:
    """The converter class registered as ``name`` (imported on first use).

    Raises ``chexone.registry.UnknownNameError`` (a KeyError, with did-you-mean), ``PluginLoadError``
    (``Error importing source "name" (dist==version): ...``), ``PluginTypeError`` (not a Source subclass) or
    ``DuplicateNameError`` (two plugins, one name).
    """
    try:
        return REGISTRY.get(name)
    except PluginLoadError as e:
        msg = str(e)
        if msg.startswith(_PLUGIN_PREFIX):
            msg = "Error importing source " + msg[len(_PLUGIN_PREFIX):]
        raise PluginLoadError(msg, name=e.plugin_name, origin=e.origin) from e.__cause__


def source_names() -> list[str]:
    """Built-in source names (in their table's order), then plugin sources (sorted)."""
    return list(SOURCES) + [n for n in REGISTRY.names() if n not in SOURCES]


def source_rows() -> dict[str, PluginInfo]:
    """name -> PluginInfo (distribution, version, origin) of every source, without importing any."""
    return {r.name: r for r in REGISTRY.list_plugins(load=False) if not r.status.startswith("shadowed")}


def source_label(name: str) -> str:
    """Where a source comes from: "built-in" or "dist==version" (nothing is imported)."""
    if name in SOURCES:
        return "built-in"
    row = source_rows().get(name)
    if row is None:
        return "?"
    return f"{row.distribution}=={row.version}" if row.version else row.distribution


__all__ = ["REGISTRY", "SOURCES", "SOURCE_GROUP", "get_source", "source_label", "source_names", "source_rows"]
