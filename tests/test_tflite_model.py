"""The in-place flatbuffer edits of ``edgepack.tflite_model``."""

from __future__ import annotations

import numpy as np


def _model() -> bytes:
    import tensorflow as tf

    inp = tf.keras.Input((5,))
    hidden = tf.keras.layers.Dense(7, activation="relu")(inp)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(3)(hidden))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_graph_outputs_set_in_place_run_as_the_unpacked_model_does():
    """A new outputs vector appended and pointed at: LiteRT reads the model, the outputs are the tensors asked
    for, in that order, with the values an unpacked-and-packed copy gives; the signatures dropped on request."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.optimize.ptq.tflite_graph import TfliteGraph
    from edgepack.tflite_model import _outputs_unpacked, with_graph_outputs

    model = _model()
    g = TfliteGraph.read(model)
    hidden = next(o for op in g.ops for o in op.outputs if o not in g.outputs)
    wanted = [*g.outputs, hidden][::-1]
    fast = with_graph_outputs(model, wanted, drop_signatures=True)
    slow = _outputs_unpacked(model, wanted, True)
    assert len(fast) < len(model) + 64 and fast[:len(model)] != model  # appended, one field re-pointed
    x = np.random.default_rng(0).normal(size=(1, 5)).astype(np.float32)
    got = []
    for m in (fast, slow):
        it = Interpreter(model_content=m)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        assert [d["index"] for d in it.get_output_details()] == wanted
        assert it.get_signature_list() == {}
        got.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    assert all(np.array_equal(a, b) for a, b in zip(*got))
    kept = Interpreter(model_content=with_graph_outputs(model, wanted)).get_signature_list()
    assert kept == Interpreter(model_content=model).get_signature_list() and kept


def test_observed_outputs_are_added_after_the_models_own():
    """The one pass's observed model: the model's outputs first, then every asked-for tensor not an input, once."""
    from ai_edge_litert import schema_py_generated as schema

    from edgepack.converter.minmax import with_outputs

    model = _model()
    sg = schema.Model.GetRootAsModel(model, 0).Subgraphs(0)
    own, inp = [int(sg.Outputs(0))], int(sg.Inputs(0))
    others = [i for i in range(sg.TensorsLength()) if i not in own and i != inp][:3]
    observed = schema.Model.GetRootAsModel(with_outputs(model, [inp, *others, own[0]]), 0).Subgraphs(0)
    assert [int(observed.Outputs(j)) for j in range(observed.OutputsLength())] == own + others
