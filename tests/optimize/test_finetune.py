"""Fine-tuning streams its data from the calibration Dataset and shows a progress bar per epoch."""

from __future__ import annotations

import functools
import io

import numpy as np

from tests.conftest import CLASSES, INPUT_SHAPE, build_tf_keras


def test_training_streams_in_chunks_with_a_seeded_split_and_a_bar_per_epoch(monkeypatch):
    from rich.console import Console

    from edgepack.calibration import Dataset, progress
    from edgepack.calibration.dataset import InputSpec
    from edgepack.optimize.finetune import FinetuneOptions, TrainingData, finetune
    from edgepack.optimize.traindata import CHUNK

    rng = np.random.default_rng(0)
    reads: list[int] = []
    ds = Dataset({"image": rng.random((200, *INPUT_SHAPE), dtype=np.float32)}, rng.integers(0, CLASSES, 200))
    data = TrainingData(ds.observe(lambda batch: reads.append(len(batch["image"]))),
                        [InputSpec("image", INPUT_SHAPE)])
    train, val = data.split(0.1, seed=0)
    again, _ = data.split(0.1, seed=0)
    assert len(val) == 20 and np.array_equal(train.data.indices, again.data.indices)
    assert not set(train.data.indices) & set(val.data.indices)

    buf = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=buf, force_terminal=True, width=100))
    monkeypatch.setattr(progress, "progress_bar", functools.partial(progress.progress_bar, delay=0.0))
    teacher = build_tf_keras()
    model, result = finetune(build_tf_keras, teacher, data, FinetuneOptions(epochs=2, patience=5), label="tune")

    assert result.epochs == 2 and result.metric == "accuracy" and result.target == "labels"
    # read a chunk at a time, never the whole set; both epochs saw every training sample
    assert max(reads) <= CHUNK < len(data)
    assert sum(reads) >= 2 * len(train) + len(val)
    out = buf.getvalue()
    assert "tune epoch 1/2" in out and "tune epoch 2/2" in out
