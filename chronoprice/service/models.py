"""The models a process forecasts with: the configured one (`--model`), loaded on first use and
registered, and the registry's champion and shadows of each timeframe. A missing or damaged
artifact is kept as a reason for the status line and the API, never raised into a tick."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from chronoprice.model.artifact import ModelUnavailable
from chronoprice.model.forecasters import LSTMForecaster
from chronoprice.model.registry import DEFAULT_TIMEFRAME, model_timeframe, registry_details
from chronoprice.store.registry import ModelEntry, read_models, register_model
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
REGISTRY_SECONDS = 5.0  # how stale a process's view of the registry may be (a promotion elsewhere reaches it this late)


class ModelSlot:
    def __init__(self, load: Callable[[], LSTMForecaster], on_load: Callable[[LSTMForecaster], None] = lambda _: None):
        self._load, self._on_load = load, on_load
        self._forecaster: LSTMForecaster | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def get(self) -> LSTMForecaster | None:
        """The forecaster, loaded on the first call; None (with `error` set) if unavailable."""
        with self._lock:
            if self._forecaster is None and self.error is None:
                try:
                    forecaster = self._load()
                    log.info("model %s loaded on the %s engine", forecaster.version, forecaster.engine.name)
                    self._on_load(forecaster)
                    self._forecaster = forecaster
                except ModelUnavailable as error:
                    self.error = str(error)
                    log.error("model unavailable: %s", error)
            return self._forecaster

    @property
    def timeframe(self) -> str:
        """The timeframe the model was trained on (the default one until it has loaded)."""
        return model_timeframe(self._forecaster.metadata) if self._forecaster else DEFAULT_TIMEFRAME


def register_configured(db: Database, forecaster: LSTMForecaster, now_ms: int) -> bool:
    """Register the model the process was started with. A version the registry has not seen
    becomes its timeframe's champion (someone deployed it on purpose); a known one keeps the
    status the registry gives it, so a promotion or rollback outlives restarts."""
    artifact = forecaster.artifact
    entry = ModelEntry(forecaster.version, model_timeframe(forecaster.metadata), "champion",
                       str(artifact.base) if artifact else "", registry_details(forecaster.metadata), now_ms, now_ms)
    registered = register_model(db, entry, "deployed with --model")
    if registered:
        log.info("model %s registered as the %s champion", entry.version, entry.timeframe)
    return registered


class ModelShelf:
    """The registry as this process sees it (read again at most every REGISTRY_SECONDS), and the
    registered models it has loaded, each once; a model that cannot be loaded is skipped, its
    reason kept in `errors`."""

    def __init__(self, db: Callable[[], Database], load: Callable[[str], LSTMForecaster], clock: Callable[[], float] = time.monotonic):
        self._db, self._load, self._clock = db, load, clock
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
            now = self._clock()
            if self._read_at is None or now - self._read_at > REGISTRY_SECONDS:
                self._entries, self._read_at = read_models(self._db(), statuses=("champion", "shadow")), now
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
                forecaster = self._load(entry.artifact)
                if forecaster.version != entry.version:
                    raise ModelUnavailable(f"{entry.artifact} holds model {forecaster.version}, not the registered {entry.version}")
                self._loaded[entry.version] = forecaster
            except ModelUnavailable as error:
                self.errors[entry.version] = str(error)
                log.error("registered model %s unavailable: %s", entry.version, error)
            return self._loaded.get(entry.version)
