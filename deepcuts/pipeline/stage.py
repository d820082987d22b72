"""A stage of a run: the settings it reads (its spec), how it builds its files, how they load.

A :class:`Stage` is a dataclass. Every field is part of its cache key unless it is marked
``runtime()``: live objects (the model, the data module, a folder for logs) built from keyed
fields, with the reason beside each. The key also holds the digest of the code the stage runs:
the import closure of the module that defines it (:mod:`deepcuts.cache.code`). So a stage can
only read what its key holds, and a new field is keyed unless someone writes why it need not be.

:class:`StageRunner` is the one place that goes through the cache, times each stage and records
builds, hits and the key of every stage a run used (``results.json`` ``stage_keys``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from deepcuts.cache.code import code_digest
from deepcuts.cache.store import StageCache, config_key


def runtime(why: str) -> Any:
    """A field that is not part of the key: a live object derived from keyed fields (say which)."""
    return dataclasses.field(default=None, repr=False, compare=False, metadata={"key": False, "why": why})


def plain(value: Any) -> Any:
    """JSON-able form of a keyed value (dataclasses with a ``spec()`` give that)."""
    if hasattr(value, "spec") and callable(value.spec):
        return value.spec()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclasses.dataclass
class Stage:
    """Base class; subclasses set ``name`` (the cache folder) and implement build and load."""

    name: ClassVar[str]
    timing: ClassVar[str | None] = None  # its name in results.json timings_s (default: name)

    def spec(self) -> dict:
        keyed = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata.get("key", True)}
        return {**keyed, "code": code_digest(*self.code())}

    def code(self) -> tuple:
        """What the stage runs, for the code digest: its own class (the import closure of its
        module); a stage that runs other code it is given (a strategy) adds its class."""
        return (type(self),)

    def key(self) -> str:
        return config_key({"stage": self.name, **self.spec()})

    def build(self, folder: Path, **upstream: Any) -> None:
        raise NotImplementedError

    def load(self, folder: Path) -> Any:
        raise NotImplementedError


class StageRunner:
    """Runs stages through the cache: ``runner(stage, **upstream)`` returns the stage's loaded
    output, building it (into the cache, or into ``work/<name>`` with the cache off) when missing."""

    def __init__(self, cache: StageCache, work: Path) -> None:
        self.cache, self.work = cache, Path(work)
        self.timings: dict[str, float] = {}
        self.keys: dict[str, str] = {}
        self.folders: dict[str, Path] = {}

    def __call__(self, stage: Stage, **upstream: Any) -> Any:
        start = time.perf_counter()
        folder = self.cache.get_or_build(stage.name, stage.spec(), lambda d: stage.build(d, **upstream),
                                         work=self.work / stage.name)
        self.keys[stage.name], self.folders[stage.name] = stage.key(), folder
        value = stage.load(folder)
        self.time(stage.timing or stage.name, time.perf_counter() - start)
        return value

    def skip(self, stage: Stage, stand_in: Callable[[Path | None], Any]) -> Any:
        """A stage the run does not need: ``stand_in`` of the cached entry's ``metrics.json``, if
        any (unchecked, bookkeeping only), instead of building it."""
        start = time.perf_counter()
        value = stand_in(self.cache.peek(stage.name, stage.spec(), "metrics.json"))
        self.time(stage.timing or stage.name, time.perf_counter() - start)
        return value

    def time(self, name: str, seconds: float) -> None:
        """Record the time of a step that is not cached (k-shot rounds, the masked fine-tune)."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds
