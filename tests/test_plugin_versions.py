"""A plugin built for another chexone is reported by listing and refused when selected: its distribution's requirement
on chexone (Requires-Dist) and the plugin API version it declares (CHEXONE_API_VERSION)."""

import importlib
import sys
import textwrap

import pytest

from chexone import registry as reg_mod
from chexone.registry import API_VERSION, PluginIncompatibleError, Registry

GROUP = "chexone_test.versioned"


@pytest.fixture
def install(tmp_path, monkeypatch):
    before = set(sys.modules)

    def _install(name, *, requires="", module_src="VALUE = 1\n", module="cxv_mod"):
        root = tmp_path / name
        info = root / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
        if requires:
            meta += f"Requires-Dist: {requires}\n"
        (info / "METADATA").write_text(meta)
        (info / "entry_points.txt").write_text(f"[{GROUP}]\nthing = {module}:VALUE\n")
        (root / f"{module}.py").write_text(textwrap.dedent(module_src))
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()

    yield _install
    for mod in set(sys.modules) - before:
        if mod.startswith("cxv_"):
            del sys.modules[mod]


def test_a_plugin_requiring_another_chexone_is_listed_incompatible_and_refused(install, monkeypatch):
    monkeypatch.setattr(reg_mod, "_chexone_version", lambda: "0.1.0")
    install("needs-future", requires="chexone>=99.0")
    reg = Registry(GROUP, {}, kind="widget")
    [row] = reg.list_plugins(load=False)
    assert row.status == ("incompatible: requires chexone>=99.0, but chexone 0.1.0 is installed; install a release "
                          "of the plugin made for this chexone")
    with pytest.raises(PluginIncompatibleError, match=r'Plugin "thing" \(needs-future==1.0\) requires chexone>=99.0'):
        reg.get("thing")
    assert "cxv_mod" not in sys.modules  # refused before its code ran


def test_a_plugin_requiring_this_chexone_loads(install, monkeypatch):
    monkeypatch.setattr(reg_mod, "_chexone_version", lambda: "0.1.0")
    install("fits", requires="chexone>=0.1,<0.2", module_src="CHEXONE_API_VERSION = 1\nVALUE = 7\n")
    reg = Registry(GROUP, {}, kind="widget")
    assert reg.get("thing") == 7
    [row] = reg.list_plugins()
    assert (row.status, row.api) == ("ok", str(API_VERSION))


def test_another_plugin_api_version_is_refused_and_undeclared_is_shown(install):
    install("api-two", module_src="CHEXONE_API_VERSION = 2\nVALUE = 1\n")
    reg = Registry(GROUP, {}, kind="widget")
    with pytest.raises(PluginIncompatibleError, match="was built for chexone plugin API 2; .* provides API 1"):
        reg.get("thing")
    with pytest.warns(reg_mod.RegistryWarning):
        [row] = reg.list_plugins()
    assert row.status.startswith("incompatible: ") and row.api == "2"


def test_undeclared_api_version_is_accepted_and_reported(install):
    install("no-api", module_src="VALUE = 3\n", module="cxv_plain")
    reg = Registry(GROUP, {}, kind="widget")
    assert reg.get("thing") == 3
    [row] = reg.list_plugins()
    assert (row.status, row.api) == ("ok", "undeclared")


def test_the_public_api_resolves_every_name_and_only_those():
    import chexone.plugin_api as api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.API_VERSION == API_VERSION
    from chexone.tasks.base import Task

    assert api.Task is Task
    with pytest.raises(AttributeError, match="the public API is"):
        api.hidden_helper  # noqa: B018
