"""The serving model, loaded on first use: a missing or damaged artifact is kept as a reason for
the status line and the API, never raised into a tick."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from chronoprice.model.artifact import ModelUnavailable
from chronoprice.model.forecasters import LSTMForecaster

log = logging.getLogger(__name__)


MODEL_TIMEFRAME = "1m"  # of models whose metadata names none: the shipped one is trained on 1-minute candles


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
        return self._forecaster.metadata.get("timeframe", MODEL_TIMEFRAME) if self._forecaster else MODEL_TIMEFRAME
