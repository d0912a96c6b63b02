"""Fine-tuning and QAT under tf.distribute.MirroredStrategy on two logical CPU devices (own process: the
device split must happen before TensorFlow initialises)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from edgepack import api
    model, calib, data, out = sys.argv[1:5]
    api.convert(model=model, output=out, calibration=calib, prune="channels:0.5", qat=True, train_data=data,
                epochs=1, distribute="mirrored")
""")


def test_mirrored_fine_tuning_uses_both_devices(tmp_path, keras3_model, calib_npy, labelled_npz):
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(keras3_model), str(calib_npy), str(labelled_npz),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    optimize = json.loads((out / "manifest.json").read_text())["extras"]["optimize"]
    finetune, qat = optimize["channels"]["finetune"], optimize["qat"]
    assert finetune["replicas"] == 2 and finetune["epochs"] == 1
    # QAT's range calibration runs inside the strategy scope too
    assert qat["replicas"] == 2 and qat["epochs"] == 1 and qat["calibrated_ranges"] > 0
