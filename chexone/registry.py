"""One generic name -> object registry for tasks, rewards and metrics, extended by installed plugin packages.

Three singletons, one per entry-point group::

    TASKS   = Registry("chexone.tasks", ...)    # Task subclasses (or instances)
    REWARDS = Registry("chexone.rewards", ...)  # reward(responses, samples, **kwargs) -> list[float | None]
    METRICS = Registry("chexone.metrics", ...)  # metric classes (torchmetrics.Metric) or callables

Where a name comes from, in order of precedence:

1. **Built-ins** (``chexone/builtin_plugins.py``), given as lazy ``"module:attr"`` strings and imported on first ``get``.
2. **Explicit registrations** (``REGISTRY.register(name, obj)`` or ``@REGISTRY.register(name)``) from code that runs
   in this process. Registering a name that is already built-in or registered raises ``DuplicateNameError`` naming
   both origins, unless it is the very same object (then it is a no-op).
3. **Plugins**: entry points of *installed distributions* in the registry's group, discovered lazily on the first
   lookup/listing and cached (``refresh()`` forgets them). Discovery reads metadata only; a plugin's module is imported
   when its name is selected (``get``). Set ``CHEXONE_DISABLE_PLUGIN_AUTOLOAD=1`` to ignore all entry points.

Clash policy (docs/plugins.md): a plugin that shadows a built-in name is ignored with a ``RegistryWarning`` naming the
plugin's distribution (built-ins win). Two different plugins (or a plugin and an explicit registration) with the same
name are a conflict: looking that name up raises ``DuplicateNameError`` naming both origins, and ``list_plugins()``
marks the rows. Entry points with the same target ``"module:attr"`` are the same object and never conflict.

Errors: an unknown name raises ``UnknownNameError`` with "did you mean" suggestions and the available names. A plugin
that fails to import raises ``PluginLoadError`` (``Error importing plugin "name" (dist==version): ...``, chained from
the original exception) when it is selected, and is only warned about when merely listed (``list_plugins``,
``load_all``). Nothing is swallowed silently.

Only names are ever looked up: a recipe can never make the registry import an arbitrary ``"module:attr"``; new code
enters only through installed distributions' entry points, built-ins or explicit ``register`` calls.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar, overload

from chexone.builtin_plugins import BUILTIN_METRICS, BUILTIN_REWARDS, BUILTIN_TASKS

#: The plugin API this chexone provides (docs/plugins.md, "Public API and versions"). A plugin declares the version
#: it was built for as ``CHEXONE_API_VERSION = 1`` in its package; another number is refused when selected.
API_VERSION = 1

__all__ = [
    "API_VERSION",
    "AUTOLOAD_ENV",
    "DuplicateNameError",
    "METRICS",
    "PluginInfo",
    "PluginIncompatibleError",
    "PluginLoadError",
    "PluginTypeError",
    "REGISTRIES",
    "REWARDS",
    "Registry",
    "RegistryError",
    "RegistryWarning",
    "TASKS",
    "UnknownNameError",
    "autoload_disabled",
    "list_plugins",
    "load_all",
    "refresh_plugins",
]

T = TypeVar("T")

#: Environment switch: "1"/"true"/"yes"/"on" disables entry-point discovery in every registry.
AUTOLOAD_ENV = "CHEXONE_DISABLE_PLUGIN_AUTOLOAD"

BUILTIN = "built-in"


def autoload_disabled() -> bool:
    """True when ``CHEXONE_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value (checked at every discovery)."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------------------------- errors
class RegistryError(KeyError):
    """Base of registry lookup/registration errors. ``str()`` is the plain message (not KeyError's repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownNameError(RegistryError):
    """A name that no built-in, registration or installed plugin provides."""

    def __init__(self, message: str, *, name: str, suggestions: list[str], available: list[str]):
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions
        self.available = available


class DuplicateNameError(RegistryError):
    """Two different objects claim one name; the message names both origins."""

    def __init__(self, message: str, *, name: str, origins: list[str]):
        super().__init__(message)
        self.name = name
        self.origins = origins


class PluginLoadError(ImportError):
    """A selected plugin (or lazy built-in) could not be imported; chained from the original exception."""

    def __init__(self, message: str, *, name: str, origin: str):
        super().__init__(message)
        self.plugin_name = name
        self.origin = origin

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginIncompatibleError(PluginLoadError):
    """A plugin built for another chexone: its distribution requires another chexone version, or it declares another
    plugin API version (``CHEXONE_API_VERSION``)."""


class PluginTypeError(TypeError):
    """A registered object is not of the registry's kind (e.g. a task that is not a ``Task`` subclass)."""


class RegistryWarning(UserWarning):
    """Problems with merely installed plugins: shadowed built-ins, import failures seen while listing."""


# ---------------------------------------------------------------------------------------------------------- entries
@dataclass
class _Entry:
    name: str
    #: "built-in" | "registered" | "plugin"
    source: str
    #: A lazy "module:attr" string, or the object itself.
    target: Any
    origin: str
    lazy: bool
    distribution: str = ""
    version: str = ""
    entry_point: md.EntryPoint | None = None
    loaded: bool = False
    value: Any = None
    #: Set on plugins ignored because a built-in has the name.
    shadowed: bool = field(default=False)
    #: The distribution's requirement on chexone (e.g. ">=0.1,<0.2"), "" when it states none.
    requires_chexone: str = ""
    #: ``CHEXONE_API_VERSION`` found in the plugin's module or package once loaded (None = not declared).
    api_version: int | None = None

    @property
    def dist_label(self) -> str:
        if self.source == "plugin":
            return f"{self.distribution}=={self.version}" if self.version else self.distribution
        if self.source == BUILTIN:
            return "chexone built-in"
        return self.origin

    def identity(self) -> str | None:
        """A "module:attr" string that identifies the target without importing it, when known."""
        if self.lazy:
            return str(self.target)
        obj = self.value if self.loaded else self.target
        mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        return f"{mod}:{qual}" if mod and qual else None


@dataclass(frozen=True)
class PluginInfo:
    """One row of ``list_plugins()``."""

    name: str
    #: "task" | "reward" | "metric"
    kind: str
    distribution: str
    version: str
    origin: str
    #: "ok", "not loaded", "shadowed by built-in", "conflict: ...", "error: ...", "incompatible: ..."
    status: str = "ok"
    #: The plugin API version the entry was built for: chexone's own for built-ins, the plugin's
    #: ``CHEXONE_API_VERSION`` once loaded, "undeclared" or "" (not loaded).
    api: str = ""


def _import_target(spec: str) -> Any:
    """Resolve a lazy "module:attr.sub" reference (only ever called on built-in or entry-point values)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"lazy reference {spec!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    return obj


def _caller_location(skip_files: Iterable[str]) -> str:
    skip = {os.path.abspath(f) for f in skip_files}
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in skip:
        frame = frame.f_back
    if frame is None:  # pragma: no cover - defensive
        return "registered at <unknown>"
    return f"registered at {frame.f_code.co_filename}:{frame.f_lineno}"


# ---------------------------------------------------------------------------------------------------------- registry
class Registry(Generic[T]):
    """Names -> objects of one kind, from built-ins, explicit registrations and installed plugins' entry points.

    Args:
        group: entry-point group scanned for plugins (e.g. ``"chexone.tasks"``).
        builtins: built-in names -> lazy ``"module:attr"`` strings (or objects).
        kind: singular noun used in messages and listings ("task", "reward", "metric").
        validator: ``validator(obj) -> str | None``; returns a description of what is wrong (or None if fine).
            Called on every resolved object; a failure raises ``PluginTypeError`` naming the origin.
    """

    def __init__(
        self,
        group: str,
        builtins: Mapping[str, Any] | None = None,
        *,
        kind: str = "object",
        validator: Callable[[Any], str | None] | None = None,
    ):
        self.group = group
        self.kind = kind
        self._validator = validator
        self._lock = threading.RLock()
        #: built-in and explicitly registered entries, by name
        self._local: dict[str, _Entry] = {}
        #: discovered plugin entries, by name (several on a conflict); None until discovered
        self._plugins: dict[str, list[_Entry]] | None = None
        for name, target in (builtins or {}).items():
            self._check_name(name)
            self._local[name] = _Entry(name, BUILTIN, target, BUILTIN, lazy=isinstance(target, str))

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, kind={self.kind!r})"

    # ------------------------------------------------------------------ registration
    @overload
    def register(self, name: str, obj: None = None, *, origin: str | None = None) -> Callable[[Any], Any]: ...

    @overload
    def register(self, name: str, obj: Any, *, origin: str | None = None) -> Any: ...

    def register(self, name: str, obj: Any = None, *, origin: str | None = None) -> Any:
        """Register ``obj`` (an object or a lazy ``"module:attr"`` string) under ``name``.

        Without ``obj`` it returns a decorator: ``@REWARDS.register("my_reward")``. ``origin`` defaults to
        "registered at file.py:line" of the caller. Re-registering the same object is a no-op; registering a different
        object under a built-in or already registered name raises ``DuplicateNameError`` naming both origins.
        """
        self._check_name(name)
        where = origin or _caller_location([__file__])
        if obj is None:

            def decorator(o: Any) -> Any:
                self._add(name, o, where)
                return o

            return decorator
        self._add(name, obj, where)
        return obj

    def _add(self, name: str, obj: Any, origin: str) -> None:
        lazy = isinstance(obj, str)
        if lazy:
            module_name, sep, attr = obj.partition(":")
            if not sep or not module_name or not attr:
                raise ValueError(f"lazy reference {obj!r} for {self.kind} {name!r} must look like 'module:attr'")
        else:
            self._validate(name, obj, origin)
        new = _Entry(name, "registered", obj, origin, lazy=lazy)
        with self._lock:
            old = self._local.get(name)
            if old is not None:
                if self._same(old, new):
                    return
                raise DuplicateNameError(
                    f'{self.kind} "{name}" is already registered in {self.group} ({old.origin}); '
                    f"cannot register it again ({origin}). Pick another name.",
                    name=name,
                    origins=[old.origin, origin],
                )
            self._local[name] = new

    @staticmethod
    def _same(a: _Entry, b: _Entry) -> bool:
        """Whether two entries are the same object: by identity once both are resolved, else by "module:attr"."""
        if (a.loaded or not a.lazy) and (b.loaded or not b.lazy):
            return (a.value if a.loaded else a.target) is (b.value if b.loaded else b.target)
        ia, ib = a.identity(), b.identity()
        return ia is not None and ia == ib

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"registry names must be non-empty strings, got {name!r}")
        if ":" in name:
            raise ValueError(f"registry name {name!r} must not contain ':' (names are not import paths)")

    # ------------------------------------------------------------------ discovery
    def refresh(self) -> None:
        """Forget discovered plugins (and their loaded objects); the next lookup scans entry points again.

        Call after installing a package in a running process (``importlib.invalidate_caches()`` is called too).
        """
        with self._lock:
            self._plugins = None
        importlib.invalidate_caches()

    def _discovered(self) -> dict[str, list[_Entry]]:
        """Plugin entries by name (discovering them on first use). Empty when autoload is disabled."""
        if autoload_disabled():
            return {}
        with self._lock:
            if self._plugins is None:
                self._plugins = self._discover()
            return self._plugins

    def _discover(self) -> dict[str, list[_Entry]]:
        found: dict[str, list[_Entry]] = {}
        for ep in md.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = (dist.metadata["Name"] if dist is not None else None) or "<unknown distribution>"
            version = (dist.version if dist is not None else "") or ""
            label = f"{dist_name}=={version}" if version else dist_name
            origin = f"{label} (entry point {ep.name} = {ep.value})"
            entry = _Entry(ep.name, "plugin", ep.value, origin, lazy=True, distribution=dist_name, version=version,
                           entry_point=ep, requires_chexone=_chexone_requirement(dist))
            builtin = self._local.get(ep.name)
            if builtin is not None and builtin.source == BUILTIN:
                entry.shadowed = True
                if not self._same(builtin, entry):
                    warnings.warn(
                        f'Plugin {self.kind} "{ep.name}" from distribution {label} (entry point {ep.name} = '
                        f"{ep.value}, group {self.group}) is ignored: {ep.name!r} is a chexone built-in and built-ins "
                        f"win over plugins. Ask the plugin's authors to rename it.",
                        RegistryWarning,
                        stacklevel=4,
                    )
            peers = found.setdefault(ep.name, [])
            if not any(p.identity() == entry.identity() for p in peers):  # same target twice: one entry
                peers.append(entry)
        return found

    # ------------------------------------------------------------------ lookup
    def _candidates(self, name: str) -> list[_Entry]:
        """Entries competing for ``name``; a built-in alone if there is one."""
        discovered = self._discovered()  # always scan on first lookup, so shadowing plugins are warned about
        local = self._local.get(name)
        if local is not None and local.source == BUILTIN:
            return [local]
        plugins = [e for e in discovered.get(name, []) if not e.shadowed]
        return ([local] if local is not None else []) + plugins

    def names(self) -> list[str]:
        """All known names (built-in, registered, plugins; conflicting names included), sorted."""
        with self._lock:
            names = set(self._local) | {n for n, es in self._discovered().items() if any(not e.shadowed for e in es)}
        return sorted(names)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        with self._lock:
            return name in self._local or any(not e.shadowed for e in self._discovered().get(name, []))

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self):
        return iter(self.names())

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: "built-in", "dist==ver (entry point n = mod:attr)" or "registered at f.py:12".

        Several origins are joined with " | " when the name is in conflict. Does not import anything.
        """
        with self._lock:
            entries = self._candidates(name)
        if not entries:
            raise self._unknown(name)
        return " | ".join(e.origin for e in entries)

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing it on first use (cached).

        Raises ``UnknownNameError`` (with suggestions), ``DuplicateNameError`` (conflicting plugins, naming both
        origins), ``PluginLoadError`` (import failure, chained) or ``PluginTypeError`` (wrong kind).
        """
        with self._lock:
            entries = self._candidates(name)
            if not entries:
                raise self._unknown(name)
            if len(entries) == 1:
                return self._load(entries[0])
            plugins = [e for e in entries if e.source == "plugin"]
            if len(plugins) > 1:  # different targets (same targets were merged at discovery)
                raise self._conflict(name, entries)
            # An explicit registration plus one plugin: fine only if they are the same object (a plugin module that
            # also registers itself with a decorator). Import the plugin to compare; it was selected anyway.
            local, plugin = entries[0], plugins[0]
            if self._same(local, plugin):
                return self._load(local)
            value = self._load(plugin)
            local_value = self._load(local)
            if value is local_value:
                return value
            raise self._conflict(name, entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def _load(self, entry: _Entry) -> Any:
        if entry.loaded:
            return entry.value
        if entry.source == "plugin":
            problem = version_problem(entry.requires_chexone)
            if problem:
                raise PluginIncompatibleError(
                    f'Plugin "{entry.name}" ({entry.dist_label}) {problem} [entry point {entry.name} = '
                    f"{entry.target} in group {self.group}]", name=entry.name, origin=entry.origin)
        if entry.lazy:
            try:
                value = entry.entry_point.load() if entry.entry_point is not None else _import_target(entry.target)
            except Exception as exc:  # noqa: BLE001 - re-raised, chained, with the plugin named
                if entry.source == "plugin":
                    msg = (f'Error importing plugin "{entry.name}" ({entry.dist_label}): {type(exc).__name__}: {exc}'
                           f" [entry point {entry.name} = {entry.target} in group {self.group}]")
                elif entry.source == BUILTIN:
                    msg = (f'Error importing built-in {self.kind} "{entry.name}" ({entry.target}): '
                           f"{type(exc).__name__}: {exc}")
                else:
                    msg = (f'Error importing {self.kind} "{entry.name}" ({entry.target}, {entry.origin}): '
                           f"{type(exc).__name__}: {exc}")
                raise PluginLoadError(msg, name=entry.name, origin=entry.origin) from exc
        else:
            value = entry.target
        if entry.source == "plugin":
            entry.api_version = declared_api_version(str(entry.target))
            if entry.api_version is not None and entry.api_version != API_VERSION:
                raise PluginIncompatibleError(
                    f'Plugin "{entry.name}" ({entry.dist_label}) was built for chexone plugin API '
                    f"{entry.api_version}; this chexone ({_chexone_version() or 'source checkout'}) provides API "
                    f"{API_VERSION}. Install a release of the plugin built for API {API_VERSION} (docs/plugins.md).",
                    name=entry.name, origin=entry.origin)
        self._validate(entry.name, value, entry.origin)
        entry.value, entry.loaded = value, True
        return value

    def _validate(self, name: str, obj: Any, origin: str) -> None:
        if self._validator is None:
            return
        problem = self._validator(obj)
        if problem:
            raise PluginTypeError(f'{self.kind} "{name}" in {self.group} ({origin}) {problem}')

    def _unknown(self, name: str) -> UnknownNameError:
        available = self.names()
        suggestions = difflib.get_close_matches(str(name), available, n=3, cutoff=0.6)
        msg = f'Unknown {self.kind} "{name}" (registry {self.group}).'
        if suggestions:
            msg += " Did you mean " + " or ".join(f'"{s}"' for s in suggestions) + "?"
        msg += f" Available: {', '.join(available) if available else '(none)'}."
        if autoload_disabled():
            msg += f" Plugin entry points are ignored because {AUTOLOAD_ENV} is set."
        else:
            msg += f' Plugins add names through entry-point group "{self.group}" (see docs/plugins.md).'
        return UnknownNameError(msg, name=name, suggestions=suggestions, available=available)

    def _conflict(self, name: str, entries: list[_Entry]) -> DuplicateNameError:
        origins = [e.origin for e in entries]
        return DuplicateNameError(
            f'{self.kind} "{name}" is provided by more than one source in {self.group}: '
            + " and ".join(origins)
            + ". Uninstall one of them or ask its authors to rename the entry point.",
            name=name,
            origins=origins,
        )

    # ------------------------------------------------------------------ listing / validation
    def list_plugins(self, *, load: bool = True, include_builtins: bool = True) -> list[PluginInfo]:
        """Rows (name, kind, distribution, version, origin, status) for every entry, sorted by name.

        With ``load`` (default) each entry is imported to report its status; failures only warn
        (``RegistryWarning``), since merely installed plugins must not break a run.
        """
        rows: list[PluginInfo] = []
        with self._lock:
            plugins = self._discovered()
            local = dict(self._local)
        for name in sorted(set(local) | set(plugins)):
            entries: list[_Entry] = []
            if name in local and (include_builtins or local[name].source != BUILTIN):
                entries.append(local[name])
            entries += plugins.get(name, [])
            live = [e for e in entries if not e.shadowed]
            distinct: list[_Entry] = []
            for e in live:
                if not any(self._same(e, d) for d in distinct):
                    distinct.append(e)
            conflict = len(distinct) > 1 and not any(e.source == BUILTIN for e in live)
            for e in entries:
                if e.shadowed:
                    status = "shadowed by built-in (ignored)"
                elif conflict:
                    others = [o.origin for o in live if o is not e]
                    status = "conflict with " + " and ".join(others)
                elif load:
                    status = self._try_load(e)
                elif e.source == "plugin" and (problem := version_problem(e.requires_chexone)):
                    status = f"incompatible: {problem}"
                else:
                    status = "ok" if e.loaded else "not loaded"
                if e.source == "plugin":
                    dist, ver = e.distribution, e.version
                else:
                    dist, ver = "chexone", _chexone_version()
                if e.source != "plugin":
                    api = str(API_VERSION)
                elif e.api_version is not None:
                    api = str(e.api_version)
                else:
                    api = "undeclared" if e.loaded else ""
                rows.append(PluginInfo(name, self.kind, dist, ver, e.origin, status, api))
        if any(r.status.startswith("conflict") for r in rows):
            names = sorted({r.name for r in rows if r.status.startswith("conflict")})
            warnings.warn(f"{self.group}: conflicting plugin names {names}; looking them up will fail.",
                          RegistryWarning, stacklevel=2)
        return rows

    def _try_load(self, entry: _Entry) -> str:
        try:
            self._load(entry)
        except PluginIncompatibleError as exc:
            warnings.warn(f"{exc} (installed but not selected: ignored)", RegistryWarning, stacklevel=3)
            return f"incompatible: {exc}"
        except (PluginLoadError, PluginTypeError) as exc:
            warnings.warn(f"{exc} (installed but not selected: ignored)", RegistryWarning, stacklevel=3)
            return f"error: {exc.__cause__ or exc}"
        return "ok"

    def load_all(self) -> dict[str, Exception]:
        """Import every known name (a validation pass). Failures are warned about and returned, never raised."""
        errors: dict[str, Exception] = {}
        for name in self.names():
            try:
                self.get(name)
            except (PluginLoadError, PluginTypeError, DuplicateNameError) as exc:
                warnings.warn(f"{exc} (installed but not selected: ignored)", RegistryWarning, stacklevel=2)
                errors[name] = exc
        return errors


def _chexone_version() -> str:
    try:
        return md.version("chexone")
    except md.PackageNotFoundError:
        return ""


def _chexone_requirement(dist: Any) -> str:
    """The version specifier a distribution puts on chexone in its requirements ("" when none or unknown)."""
    from packaging.requirements import InvalidRequirement, Requirement

    for line in (getattr(dist, "requires", None) or []):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower().replace("_", "-") == "chexone" and not req.marker:
            return str(req.specifier)
    return ""


def version_problem(specifier: str, version: str | None = None) -> str | None:
    """Why a distribution requiring chexone ``specifier`` cannot run on the installed chexone, or None."""
    if not specifier:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    version = version if version is not None else _chexone_version()
    if not version:
        return None  # a source checkout without metadata: nothing to compare
    try:
        ok = SpecifierSet(specifier).contains(version, prereleases=True)
    except InvalidSpecifier:
        return None
    return None if ok else (f"requires chexone{specifier}, but chexone {version} is installed; install a release of "
                            "the plugin made for this chexone")


def declared_api_version(target: str) -> int | None:
    """``CHEXONE_API_VERSION`` of a loaded plugin: in the module of its ``module:attr`` target, else in that module's
    top-level package (None when neither declares it)."""
    module_name = target.partition(":")[0].strip()
    for name in (module_name, module_name.split(".")[0]):
        module = sys.modules.get(name)
        value = getattr(module, "CHEXONE_API_VERSION", None) if module is not None else None
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return -1  # not a version number: treated as incompatible
    return None


# ---------------------------------------------------------------------------------------------------------- validators
def _task_problem(obj: Any) -> str | None:
    from chexone.tasks.base import Task

    if isinstance(obj, Task) or (isinstance(obj, type) and issubclass(obj, Task)):
        return None
    return f"must be a chexone.tasks.base.Task subclass or instance, got {_describe(obj)}"


def _reward_problem(obj: Any) -> str | None:
    if callable(obj):
        return None
    return (f"must be callable as reward(responses: list[str], samples: list[Sample], **kwargs) -> "
            f"list[float | None], got {_describe(obj)}")


def _metric_problem(obj: Any) -> str | None:
    if callable(obj):  # classes (torchmetrics.Metric subclasses) are callable too
        return None
    return f"must be a metric class (e.g. a torchmetrics.Metric subclass) or a callable, got {_describe(obj)}"


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r:.60}"


# ---------------------------------------------------------------------------------------------------------- singletons
TASKS: Registry[Any] = Registry("chexone.tasks", BUILTIN_TASKS, kind="task", validator=_task_problem)
REWARDS: Registry[Callable[..., list]] = Registry("chexone.rewards", BUILTIN_REWARDS, kind="reward",
                                                  validator=_reward_problem)
METRICS: Registry[Any] = Registry("chexone.metrics", BUILTIN_METRICS, kind="metric", validator=_metric_problem)

#: The three registries by entry-point group.
REGISTRIES: dict[str, Registry[Any]] = {r.group: r for r in (TASKS, REWARDS, METRICS)}


def list_plugins(*, load: bool = True, include_builtins: bool = True) -> list[PluginInfo]:
    """``list_plugins`` of all three registries (tasks, rewards, metrics)."""
    rows: list[PluginInfo] = []
    for reg in REGISTRIES.values():
        rows += reg.list_plugins(load=load, include_builtins=include_builtins)
    return rows


def load_all() -> dict[str, Exception]:
    """``load_all`` of all three registries; keys are "group:name"."""
    errors: dict[str, Exception] = {}
    for reg in REGISTRIES.values():
        errors.update({f"{reg.group}:{k}": v for k, v in reg.load_all().items()})
    return errors


def refresh_plugins() -> None:
    """``refresh`` all three registries (after installing or removing a plugin in a running process)."""
    for reg in REGISTRIES.values():
        reg.refresh()
    from chexone.config.load import forget_plugin_recipes  # the recipe directories plugins ship (chexone.recipes)

    forget_plugin_recipes()
