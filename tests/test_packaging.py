"""Packaging: the version, the recipes shipped as package data, and declared == imported dependencies.

The dependency checks read pyproject.toml and scan the sources with ``ast``: every third-party module that
``chexone/`` or ``webdata/`` imports (or looks up by name with ``find_spec`` / ``require_package``) must be declared,
in the core dependencies or in the extra it belongs to, and every declared distribution must be used (by the
package, or by the tests for the ``dev`` extra), unless it is listed in ``INDIRECT`` with the reason.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import chexone
from chexone.config.load import find_recipe, list_groups, recipe_dirs

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
FIRST_PARTY = {"chexone", "webdata"}

#: import name -> distribution name, where they differ (other names: the import name, normalised)
DIST_OF = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bert_score": "bert-score",
    "huggingface_hub": "huggingface-hub",
    "RaTEScore": "ratescore",
    "flash_attn": "flash-attn",
    "pytest_timeout": "pytest-timeout",
    "sklearn": "scikit-learn",
}
#: distributions the package may only use from an optional extra (everything else it uses must be a core dependency)
EXTRA_OF = {
    "bert-score": "metrics",
    "pandas": "metrics",
    "radgraph": "radgraph",
    "appdirs": "radgraph",
    "ratescore": "ratescore",
    "flash-attn": "gpu",
    "scikit-learn": "reader-study",
    "pingouin": "reader-study",
    "wandb-workspaces": "dashboard",
    "boto3": "remote",
    "botocore": "remote",
    "fsspec": "remote",
    "trl": "bench",
    "datasets": "bench",
}
#: declared but never imported by name, and why
INDIRECT = {
    "safetensors": "model weights are read and written as safetensors through transformers (use_safetensors=True)",
    "requests": "radgraph imports it without declaring it",
    "pylibjpeg": "pydicom's decoder plugin for compressed transfer syntaxes",
    "pylibjpeg-openjpeg": "pydicom's JPEG 2000 decoder plugin",
    "pylibjpeg-libjpeg": "pydicom's JPEG / JPEG-LS decoder plugin",
    "pytest-timeout": "pytest plugin: the timeout in [tool.pytest.ini_options]",
    "flask": "moto's S3 server mode (ThreadedMotoServer, tests/test_remote_shards.py) imports it",
    "flask-cors": "moto's S3 server mode (ThreadedMotoServer, tests/test_remote_shards.py) imports it",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_of(module: str) -> str:
    return norm(DIST_OF.get(module, module))


def requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, req
    return norm(m.group(1))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    if not PYPROJECT.is_file():
        pytest.skip("not a source checkout")
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts)


def used_modules(*tops: str) -> dict[str, set[str]]:
    """Top-level third-party module -> files: ``import``/``from`` statements anywhere in the file (lazy ones too), plus
    the string arguments of ``find_spec("x")``, ``require_package("x", ...)`` and ``pytest.importorskip("x")``."""
    out: dict[str, set[str]] = {}
    for path in _sources(*tops):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("find_spec", "require_package", "importorskip"):
                    names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top and top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    out.setdefault(top, set()).add(rel)
    return out


def require_package_calls() -> list[tuple[str, str, str]]:
    """(file, module, extra) of every ``require_package("module", extra="name", ...)`` in the package."""
    out = []
    for path in _sources("chexone", "webdata"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) \
                    == "require_package" and node.args and isinstance(node.args[0], ast.Constant):
                extra = next((k.value.value for k in node.keywords if k.arg == "extra"
                              and isinstance(k.value, ast.Constant)), None)
                out.append((path.relative_to(REPO).as_posix(), node.args[0].value, extra))
    return out


# ----------------------------------------------------------------------------------------------------------- version


def test_version_is_the_installed_metadata_version():
    try:
        expected = importlib.metadata.version("chexone")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        expected = "0+unknown"
    assert chexone.__version__ == expected
    assert re.match(r"^\d+(\.\d+)*", chexone.__version__)


def test_import_chexone_is_light():
    code = "import sys, chexone; print(chexone.__version__); assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == chexone.__version__


# ----------------------------------------------------------------------------------------------------------- recipes


def packaged_recipes() -> Path:
    """Where the shipped recipes are: ``chexone/recipes`` of an installed wheel, else (a source checkout or an
    editable install) the top-level ``recipes/`` that pyproject.toml maps to the package ``chexone.recipes``."""
    installed = resources.files("chexone").joinpath("recipes")
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return Path(chexone.__file__).resolve().parents[1] / "recipes"


def test_packaged_recipes_come_first(tmp_path, monkeypatch):
    # a recipe directory in $CHEXONE_RECIPES and one in ./recipes must not shadow the shipped ones
    for d in (tmp_path / "env", tmp_path / "cwd" / "recipes"):
        (d / "model").mkdir(parents=True)
        (d / "stage1_sft.yaml").write_text("# shadow\n")
        (d / "model" / "tiny.yaml").write_text("# shadow\n")
    monkeypatch.setenv("CHEXONE_RECIPES", str(tmp_path / "env"))
    monkeypatch.setenv("CHEXONE_DISABLE_PLUGIN_AUTOLOAD", "1")  # installed plugins' recipe dirs would come second
    monkeypatch.chdir(tmp_path / "cwd")

    dirs = recipe_dirs()
    shipped = packaged_recipes()
    assert dirs[0].resolve() == shipped.resolve()
    assert [d.resolve() for d in dirs[1:]] == [(tmp_path / "env").resolve(), (tmp_path / "cwd" / "recipes").resolve()]
    for name in ("stage1_sft.yaml", "stage2_grpo.yaml"):
        assert (dirs[0] / name).is_file(), name
    assert (dirs[0] / "model" / "tiny.yaml").is_file() and (dirs[0] / "data" / "demo.yaml").is_file()
    assert find_recipe("stage1_sft").resolve() == (shipped / "stage1_sft.yaml").resolve()
    groups = list_groups()
    assert groups["model"]["tiny"].resolve() == (shipped / "model" / "tiny.yaml").resolve()
    assert groups["data"]["demo"].resolve() == (shipped / "data" / "demo.yaml").resolve()


def test_every_package_and_recipe_group_is_listed(pyproject):
    """The package list is explicit (recipes/ is mapped to chexone.recipes): a new package directory or config
    group must be added to it, or the wheel silently lacks it."""
    st = pyproject["tool"]["setuptools"]
    listed = set(st["packages"])
    assert st["package-dir"].get("chexone.recipes") == "recipes"
    # every directory is a package to setuptools, data-only ones too (the reader-study app's templates/, static/)
    found = {d.relative_to(REPO).as_posix().replace("/", ".") for top in FIRST_PARTY
             for d in [REPO / top, *(REPO / top).rglob("*")] if d.is_dir() and "__pycache__" not in d.parts}
    found |= {"chexone.recipes"} | {"chexone.recipes." + d.relative_to(REPO / "recipes").as_posix().replace("/", ".")
                                    for d in (REPO / "recipes").rglob("*") if d.is_dir()}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but absent: {sorted(listed - found)}"
    assert "*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["*"]


# ------------------------------------------------------------------------------------------------------ dependencies


def test_every_import_is_declared_in_core_or_its_extra(pyproject):
    project = pyproject["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {name: {requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    problems = []
    for module, files in sorted(used_modules("chexone", "webdata").items()):
        dist = dist_of(module)
        extra = EXTRA_OF.get(dist)
        if extra is None and dist not in core:
            problems.append(f"{module} ({dist}) imported by {sorted(files)} is not a core dependency")
        elif extra is not None and dist not in extras.get(extra, set()):
            problems.append(f"{module} ({dist}) imported by {sorted(files)} is not in the [{extra}] extra")
    assert not problems, "\n".join(problems)


def test_require_package_names_the_extra_that_declares_it(pyproject):
    extras = {name: {requirement_name(r) for r in reqs}
              for name, reqs in pyproject["project"]["optional-dependencies"].items()}
    calls = require_package_calls()
    assert calls, "no require_package call found: the scan is broken"
    for file, module, extra in calls:
        assert extra in extras and dist_of(module) in extras[extra], (file, module, extra)


def test_every_declared_dependency_is_used(pyproject):
    project = pyproject["project"]
    package_uses = {dist_of(m) for m in used_modules("chexone", "webdata")}
    test_uses = {dist_of(m) for m in used_modules("tests")}
    unused = []
    for group, reqs in [("dependencies", project["dependencies"]), *project["optional-dependencies"].items()]:
        uses = package_uses | (test_uses if group == "dev" else set())
        unused += [f"{requirement_name(r)} ({group})" for r in reqs
                   if requirement_name(r) not in uses and requirement_name(r) not in INDIRECT]
    assert not unused, f"declared but never imported (drop them, or say why in INDIRECT): {unused}"


def test_every_range_is_bounded(pyproject):
    """Both bounds on every requirement (docs/dependencies.md): an exact pin, or a lower bound and an upper bound."""
    project = pyproject["project"]
    reqs = list(project["dependencies"]) + [r for rs in project["optional-dependencies"].values() for r in rs]
    for req in reqs:
        spec = req.split(";")[0]
        assert "==" in spec or (">=" in spec and "<" in spec.replace("<=", "")), f"unbounded: {req}"


def test_constraints_pin_every_declared_dependency(pyproject):
    """constraints.txt (the tested set) pins every core, dev, metrics and radgraph requirement exactly, inside the
    range pyproject.toml declares."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"not an exact pin: {line}"
            pins[norm(name)] = ver.strip()
    project = pyproject["project"]
    groups = ["dev", "metrics", "radgraph", "dicom", "reader-study", "dashboard"]
    reqs = list(project["dependencies"]) + [r for g in groups for r in project["optional-dependencies"][g]]
    for req in reqs:
        name = requirement_name(req)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        for op, bound in re.findall(r"(>=|<|==)\s*([0-9][0-9A-Za-z.]*)", req.split(";")[0]):
            pinned, bound_t = _vtuple(pins[name]), _vtuple(bound)
            ok = {">=": pinned >= bound_t, "<": pinned < bound_t, "==": pinned == bound_t}[op]
            assert ok, f"constraints.txt pins {name}=={pins[name]} outside {req}"
    # webdataset is a test reference only: shards are read by chexone's own reader (docs/data.md)
    assert "webdataset" not in {requirement_name(r) for r in project["dependencies"]}


def _vtuple(v: str) -> tuple[int, ...]:
    """A release version as 4 numbers (``2.13`` == ``2.13.0``); the local part (``+cpu``) is ignored."""
    nums = [int(x) for x in re.findall(r"\d+", v.split("+")[0])[:4]]
    return tuple(nums + [0] * (4 - len(nums)))
