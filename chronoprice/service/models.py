"""The models a process forecasts with: the configured one (`--model`), loaded on first use and
registered, and the registry's champion and shadows of each timeframe. A missing or damaged
artifact is kept as a reason for the status line and the API, never raised into a tick."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from chronoprice.config import PROJECT_ROOT
from chronoprice.model.artifact import ModelArtifact, ModelUnavailable
from chronoprice.model.forecasters import LSTMForecaster
from chronoprice.model.registry import DEFAULT_TIMEFRAME, model_timeframe, registry_details
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.registry import ModelEntry, change_status, read_models, register_model
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
REGISTRY_SECONDS = 5.0  # how stale a process's view of the registry may be (a promotion elsewhere reaches it this late)


class ModelSlot:
    def __init__(self, load: Callable[[], LSTMForecaster]):
        self._load = load
        self._forecaster: LSTMForecaster | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def get(self) -> LSTMForecaster | None:
        """The forecaster, loaded on the first call; None (with `error` set) if unavailable."""
        with self._lock:
            if self._forecaster is None and self.error is None:
                try:
                    self._forecaster = self._load()
                    log.info("model %s loaded on the %s engine", self._forecaster.version, self._forecaster.engine.name)
                except ModelUnavailable as error:
                    self.error = str(error)
                    log.error("model unavailable: %s", error)
            return self._forecaster

    @property
    def timeframe(self) -> str:
        """The timeframe the model was trained on (the default one until it has loaded)."""
        return model_timeframe(self._forecaster.metadata) if self._forecaster else DEFAULT_TIMEFRAME


class TimeframeModels:
    """The models shipped for timeframes other than the configured model's (model/artifact.py's
    timeframe_siblings), each loaded on first use and registered once, as the configured one is:
    a version the registry has not seen becomes its timeframe's champion."""

    def __init__(self, loads: Mapping[str, Callable[[], LSTMForecaster]]):
        self._slots = {timeframe: ModelSlot(load) for timeframe, load in loads.items()}
        self._registered: set[str] = set()

    def get(self, timeframe: str, register: Callable[[LSTMForecaster], bool]) -> LSTMForecaster | None:
        """The timeframe's shipped model (None without one, or if it cannot load); `register`
        returns False while the store cannot take it, so it is tried again on the next call."""
        slot = self._slots.get(timeframe)
        forecaster = slot.get() if slot else None
        if forecaster is not None and timeframe not in self._registered and register(forecaster):
            self._registered.add(timeframe)
        return forecaster

    def error(self, timeframe: str) -> str | None:
        slot = self._slots.get(timeframe)
        return slot.error if slot else None


def stored_path(artifact: ModelArtifact | None) -> str:
    """How the registry names an artifact: relative to the project when inside it, so every
    machine with a checkout of the project finds the shipped and trained models."""
    if artifact is None:
        return ""
    base = artifact.base.resolve()
    return str(base.relative_to(PROJECT_ROOT)) if base.is_relative_to(PROJECT_ROOT) else str(base)


def artifact_location(stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else PROJECT_ROOT / path


def _entry(metadata: dict, artifact: ModelArtifact | None, status: str, now_ms: int) -> ModelEntry:
    return ModelEntry(metadata["version"], model_timeframe(metadata), status, stored_path(artifact),
                      registry_details(metadata), now_ms, now_ms)


def register_configured(db: Database, forecaster: LSTMForecaster, now_ms: int) -> bool:
    """Register the model the process was started with. A version the registry has not seen
    becomes its timeframe's champion (someone deployed it on purpose); a known one keeps the
    status the registry gives it, so a promotion or rollback outlives restarts."""
    entry = _entry(forecaster.metadata, forecaster.artifact, "champion", now_ms)
    registered = register_model(db, entry, "deployed with --model")
    if registered:
        log.info("model %s registered as the %s champion", entry.version, entry.timeframe)
    return registered


def register_started(db: Callable[[], Database], forecaster: LSTMForecaster, now_ms: int, shelf: "ModelShelf") -> bool:
    """register_configured, and the shelf reads the registry again if it changed; False while the
    store cannot take it (the caller tries again on its next look)."""
    try:
        if register_configured(db(), forecaster, now_ms):
            shelf.refresh()
        return True
    except STORE_UNAVAILABLE as error:
        log.warning("model %s not registered yet: store unavailable (%s)", forecaster.version, error)
        return False


def register_shadow(db: Database, metadata: dict, artifact: ModelArtifact, reason: str, now_ms: int,
                    supersede: str | None = None) -> bool:
    """Register a newly trained model as a shadow of its timeframe; with `supersede` (a reason
    prefix), earlier shadows registered with that prefix are retired, so scheduled retraining
    keeps one challenger rather than a growing crowd. False if the version was registered."""
    entry = _entry(metadata, artifact, "shadow", now_ms)
    entry = dataclasses.replace(entry, details={**entry.details, "registered_as": reason})
    if supersede:
        for earlier in read_models(db, entry.timeframe, ("shadow",)):
            if earlier.version != entry.version and earlier.details.get("registered_as", "").startswith(supersede):
                change_status(db, earlier.version, "retired", f"superseded by {entry.version}", now_ms)
    return register_model(db, entry, reason)


class ModelShelf:
    """The registry as this process sees it (read again at most every REGISTRY_SECONDS), and the
    registered models it has loaded, each once; a model that cannot be loaded is skipped, its
    reason kept in `errors`."""

    def __init__(self, db: Callable[[], Database], load: Callable[[str], LSTMForecaster]):
        self._db, self._load = db, load
        self._entries: list[ModelEntry] = []
        self._read_at: float | None = None
        self._loaded: dict[str, LSTMForecaster] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the registry again on the next look (this process has just changed it)."""
        self._read_at = None

    def entries(self, timeframe: str) -> list[ModelEntry]:
        """The timeframe's champion (first, if it has one) and shadows."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at > REGISTRY_SECONDS:
                try:
                    self._entries = read_models(self._db(), statuses=("champion", "shadow"))
                except STORE_UNAVAILABLE as error:  # serve with what was last read; the store is retried next time
                    log.warning("model registry unreadable (%s); using the last one read", error)
                self._read_at = now
            return [entry for entry in self._entries if entry.timeframe == timeframe]

    def champion(self, timeframe: str) -> ModelEntry | None:
        return next((entry for entry in self.entries(timeframe) if entry.status == "champion"), None)

    def shadows(self, timeframe: str) -> list[tuple[ModelEntry, LSTMForecaster]]:
        """The timeframe's shadows that could be loaded, with their forecasters."""
        loaded = [(entry, self.forecaster(entry)) for entry in self.entries(timeframe) if entry.status == "shadow"]
        return [(entry, forecaster) for entry, forecaster in loaded if forecaster is not None]

    def forecaster(self, entry: ModelEntry) -> LSTMForecaster | None:
        """The registered model's forecaster, loaded on first use; None if its artifact cannot be
        (the reason in errors[version]) or holds another version than the registry's."""
        with self._lock:
            if entry.version in self._loaded or entry.version in self.errors:
                return self._loaded.get(entry.version)
            try:
                forecaster = self._load(str(artifact_location(entry.artifact)))
                if forecaster.version != entry.version:
                    raise ModelUnavailable(f"{entry.artifact} holds model {forecaster.version}, not the registered {entry.version}")
                self._loaded[entry.version] = forecaster
            except ModelUnavailable as error:
                self.errors[entry.version] = str(error)
                log.error("registered model %s unavailable: %s", entry.version, error)
            return self._loaded.get(entry.version)
