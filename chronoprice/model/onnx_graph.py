"""The whole recursive forecast as one ONNX graph, for the `onnx` engine (ONNX Runtime).

Built from the Keras weights with onnx's helpers alone: no TensorFlow, so a model can be
exported wherever its weights can be read. The graph takes features.recursive_windows (the
`horizon` recursive windows, time-major, every predicted close still 0) and returns the path,
[B, horizon] scaled log returns from the origin, as network.recursive_path does.

Log-return models share one timeline (see `_shared_prefix`): 69 sequential LSTM steps instead
of 600, on ONNX's fused LSTM operator. Relative closes re-reference every window to its newest
(predicted) close, so each window waits for the one before it and runs whole (`_window_by_window`).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chronoprice.model.features import parse_feature

OPSET = 17
INPUT, OUTPUT = "windows", "path"


def _onnx_gates(keras_gates: np.ndarray) -> np.ndarray:
    """Keras gate blocks i, f, c, o along the last axis -> ONNX's i, o, f, c, transposed."""
    i, f, c, o = np.split(np.asarray(keras_gates, dtype="float32"), 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1).T


class _Graph:
    """Nodes and constants of a graph under construction, each named once."""

    def __init__(self):
        self.nodes, self.constants = [], []
        self._names = itertools.count()

    def name(self, prefix: str) -> str:
        return f"{prefix}_{next(self._names)}"

    def constant(self, value, prefix: str = "constant") -> str:
        name = self.name(prefix)
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, **attributes) -> str | list[str]:
        names = [self.name(kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    def ints(self, *values: int) -> str:
        return self.constant(np.array(values, dtype="int64"), "ints")


class _Network:
    """The Keras layers as ONNX operators: two LSTMs and the dense head."""

    def __init__(self, graph: _Graph, weights: list[np.ndarray]):
        kernel1, recurrent1, bias1, kernel2, recurrent2, bias2, dense1, dense_bias1, dense2, dense_bias2 = weights
        self.graph = graph
        self.units = (recurrent1.shape[0], recurrent2.shape[0])
        self.layers = [
            [graph.constant(_onnx_gates(kernel)[None]), graph.constant(_onnx_gates(recurrent)[None]),
             graph.constant(np.concatenate([_onnx_gates(bias[None])[:, 0], np.zeros(len(bias), "float32")])[None])]
            for kernel, recurrent, bias in ((kernel1, recurrent1, bias1), (kernel2, recurrent2, bias2))
        ]
        self.head = [graph.constant(np.asarray(value, dtype="float32")) for value in (dense1, dense_bias1, dense2, dense_bias2)]

    def lstm(self, layer: int, sequence: str, lengths: str = "", state: tuple[str, str] | None = None) -> list[str]:
        """[T, N, in] -> sequence [T, 1, N, units], last h [1, N, units], last c [1, N, units]
        (the last valid step of each row when `lengths` is given)."""
        inputs = [sequence, *self.layers[layer], lengths, *(state or ())]
        return self.graph.op("LSTM", *inputs, outputs=3, hidden_size=self.units[layer])

    def both_layers(self, sequence: str, lengths: str = "", state: list[str] | None = None) -> list[str]:
        """Both LSTMs over `sequence`; returns the new state [h1, c1, h2, c2], each [1, N, units]."""
        first, h1, c1 = self.lstm(0, sequence, lengths, state and (state[0], state[1]))
        first = self.graph.op("Squeeze", first, self.graph.ints(1))  # [T, 1 direction, N, units] -> [T, N, units]
        _, h2, c2 = self.lstm(1, first, lengths, state and (state[2], state[3]))
        return [h1, c1, h2, c2]

    def next_return(self, hidden: str) -> str:
        """[N, units2] -> [N, 1]: Dense(16, relu) -> Dense(1)."""
        graph, (weight1, bias1, weight2, bias2) = self.graph, self.head
        hidden = graph.op("Relu", graph.op("Add", graph.op("MatMul", hidden, weight1), bias1))
        return graph.op("Add", graph.op("MatMul", hidden, weight2), bias2)


def _shared_prefix(graph: _Graph, network: _Network, window: int, horizon: int, channels: int) -> list[str]:
    """Log returns: window k is window 0 moved on by k candles, and each window starts from a
    zero state, so window k's real candles need nothing predicted. Phase one runs every window
    over its real candles as one batch (row k has window - k of them: `sequence_lens`); then
    each step predicts from the window that has just finished and feeds the prediction to the
    windows still open, one LSTM step each. Rows are kept window-major, [rows, B, units]."""
    batch = graph.op("Slice", graph.op("Shape", INPUT), graph.ints(2), graph.ints(3))
    lengths = graph.op("Reshape", graph.op("Expand", graph.constant((window - np.arange(horizon, dtype="int32"))[:, None]),
                                           graph.op("Concat", graph.ints(horizon), batch, axis=0)), graph.ints(-1))
    prefix = graph.op("Reshape", graph.op("Transpose", INPUT, perm=[1, 0, 2, 3]), graph.ints(window, -1, channels))
    state = network.both_layers(prefix, lengths)
    pending = [(k, window - k + step) if k > step else (0, 0) for step in range(horizon - 1) for k in range(1, horizon)]
    fed = graph.op("GatherND", INPUT, graph.constant(np.array(pending, dtype="int64").reshape(horizon - 1, horizon - 1, 2)))
    close = graph.constant(np.eye(channels, dtype="float32")[0])

    def rows(tensor: str, count: int, units: int) -> str:
        return graph.op("Reshape", tensor, graph.ints(count, -1, units))

    def flat(tensor: str, units: int) -> str:
        return graph.op("Reshape", tensor, graph.ints(1, -1, units))

    units = [network.units[0], network.units[0], network.units[1], network.units[1]]
    state = [rows(part, horizon, size) for part, size in zip(state, units)]
    steps = []
    for step in range(horizon):
        open_rows = horizon - step
        finished = graph.op("Gather", state[2], graph.constant(np.array(0, dtype="int64")), axis=0)
        steps.append(network.next_return(finished))
        if open_rows == 1:
            break
        state = [graph.op("Slice", part, graph.ints(1), graph.ints(open_rows), graph.ints(0)) for part in state]
        inputs = graph.op("Slice", graph.op("Gather", fed, graph.constant(np.array(step, dtype="int64")), axis=0),
                          graph.ints(step), graph.ints(horizon - 1), graph.ints(0))
        inputs = graph.op("Add", inputs, graph.op("Mul", steps[-1], close))
        state = network.both_layers(flat(inputs, channels), state=[flat(part, size) for part, size in zip(state, units)])
        state = [rows(part, open_rows - 1, size) for part, size in zip(state, units)]
    return steps


def _window_by_window(graph: _Graph, network: _Network, window: int, horizon: int, channels: int) -> list[str]:
    """Relative closes: window k's closes are window 0's minus the k-th cumulative predicted
    return, its predicted candles the cumulative returns before that, so each waits for the last."""
    close = graph.constant(np.eye(channels, dtype="float32")[0])
    steps, cumulative = [], []
    for k in range(horizon):
        inputs = graph.op("Gather", INPUT, graph.constant(np.array(k, dtype="int64")), axis=0)  # [W, B, C]
        if k:
            known = graph.op("Pad", graph.op("Concat", *cumulative, axis=1), graph.ints(0, window - k, 0, 0))  # [B, W]
            offsets = graph.op("Transpose", graph.op("Sub", known, cumulative[-1]), perm=[1, 0])
            inputs = graph.op("Add", inputs, graph.op("Mul", graph.op("Unsqueeze", offsets, graph.ints(2)), close))
        _, _, last_h, _ = network.both_layers(inputs)
        steps.append(network.next_return(graph.op("Squeeze", last_h, graph.ints(0))))
        cumulative.append(graph.op("Add", cumulative[-1], steps[-1]) if cumulative else steps[-1])
    return steps


def export_onnx(weights: list[np.ndarray], window: int, horizon: int, feature: str) -> bytes:
    """The recursion of the network with `weights` (Keras model.get_weights() order) as ONNX:
    input `windows` [horizon, window, B, channels] (recursive_windows, time-major), output
    `path` [B, horizon]."""
    form, extras = parse_feature(feature)
    channels = 1 + len(extras)
    graph = _Graph()
    network = _Network(graph, [np.asarray(value, dtype="float32") for value in weights])
    build = _shared_prefix if form == "log_returns" else _window_by_window
    steps = build(graph, network, window, horizon, channels)
    graph.nodes.append(helper.make_node("CumSum", [graph.op("Concat", *steps, axis=1), graph.constant(np.array(1, dtype="int64"))], [OUTPUT]))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, "chronoprice_recursive_forecast",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [horizon, window, None, channels])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, horizon])],
            initializer=graph.constants,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="chronoprice",
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
