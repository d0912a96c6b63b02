"""Running onnx2tf on a leash: offline, in a temporary working directory, its console output
captured, and its ``sys.exit`` calls and exceptions turned into one :class:`ConversionError` that
names the op types and nodes that failed and the reason TensorFlow gave."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgepack._native import capture_all_output
from edgepack.errors import ConversionError

log = logging.getLogger(__name__)

# The file onnx2tf's download_test_image_data() looks for in the working directory before it
# goes to GitHub: 20 images of 128x128x3, float32 in [0, 1].
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_SAMPLE_SHAPE = (20, 128, 128, 3)

# Wall-clock seconds one onnx2tf translation may take: the README's zoo runs convert VGG-19, the slowest,
# in 66 s, and benchmarks/model_zoo.py gives each converter run 900 s. The environment variable sets
# another bound for slow machines or tests.
TRANSLATE_SECONDS = 900.0
TIMEOUT_ENV = "EDGEPACK_ONNX2TF_TIMEOUT"


class TranslationTimeout(ConversionError):
    """onnx2tf ran past its time limit: not a translation failure another option set could fix."""


class _Expired(BaseException):
    """Raised by the alarm inside onnx2tf: a BaseException, so its ``except Exception`` blocks let it pass."""


def translate_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return TRANSLATE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        from edgepack.errors import UsageError

        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: not a positive number of seconds")
    return value


@contextlib.contextmanager
def _deadline(seconds: float, expired: list[bool]) -> Iterator[None]:
    """Raise :class:`_Expired` in this thread after ``seconds`` and every second after that (a bare
    ``except:`` in the translator may swallow one), and note it in ``expired``. SIGALRM: only on the
    main thread, where Python runs signal handlers; native code that never returns to Python delays it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame) -> None:
        expired.append(True)
        raise _Expired()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ops_message(ops: dict[str, list[str]]) -> str:
    parts = []
    for op, nodes in sorted(ops.items()):
        more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
        parts.append(f"{op} (node{'s' if len(nodes) > 1 else ''} {', '.join(nodes[:3])}{more})")
    return "; ".join(parts)


def write_sample_images(folder: Path) -> Path:
    """The sample file onnx2tf would download, seeded and local (it only feeds onnx2tf's self-check)."""
    path = folder / SAMPLE_FILE
    np.save(path, np.random.default_rng(0).random(_SAMPLE_SHAPE, dtype=np.float32), allow_pickle=False)
    return path


@contextlib.contextmanager
def offline_onnx2tf(workdir: Path) -> Iterator[None]:
    """cwd = ``workdir`` (where onnx2tf looks for its sample file) and its downloader made local."""
    import onnx2tf.onnx2tf as core
    import onnx2tf.utils.common_functions as common

    sample = write_sample_images(workdir)

    def local_sample() -> np.ndarray:
        return np.load(sample, allow_pickle=False)

    saved = {mod: getattr(mod, "download_test_image_data", None) for mod in (core, common)}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for mod in saved:
            mod.download_test_image_data = local_sample
        yield
    finally:
        os.chdir(cwd)
        for mod, fn in saved.items():
            if fn is not None:
                mod.download_test_image_data = fn


def run_onnx2tf(onnx_path: Path, workdir: Path, names: dict[str, str], verbose: bool,
                options: dict[str, Any] | None = None):
    """onnx2tf's tf_keras model for ``onnx_path`` (extra onnx2tf.convert keywords in ``options``);
    failures become one ConversionError."""
    import tensorflow  # noqa: F401  (imported outside the capture so its start-up noise is handled once)

    seconds = translate_seconds()
    expired: list[bool] = []
    failure: BaseException | None = None
    start = time.monotonic()
    try:
        with capture_all_output(not verbose) as cap:
            import onnx2tf

            start = time.monotonic()  # the limit is on the translation, as the alarm's: the import is not in it
            try:
                with offline_onnx2tf(workdir), _deadline(seconds, expired):
                    model = onnx2tf.convert(
                        input_onnx_file_path=str(onnx_path.resolve()),
                        output_folder_path=str(workdir.resolve() / "onnx2tf_out"),
                        disable_model_save=True, not_use_onnxsim=True, not_use_opname_auto_generate=True,
                        non_verbose=not verbose, verbosity="info" if verbose else "error", **(options or {}))
            except KeyboardInterrupt:
                raise
            except (SystemExit, Exception) as err:  # onnx2tf calls sys.exit(1) or raises anything at all
                failure = err
    except _Expired:
        expired.append(True)
    # the clock too: an alarm that a bare ``except:`` swallowed, or that came due in native code and
    # was cleared with the timer, must not let a translation past its limit through
    if expired or time.monotonic() - start > seconds:
        raise TranslationTimeout(f"onnx2tf did not finish translating the model within {seconds:g} s (edgepack's "
                                 f"limit, set by {TIMEOUT_ENV})",
                                 hint=f"simplify the model, or allow more time with {TIMEOUT_ENV}=SECONDS")
    text = cap.text
    if failure is not None:
        raise _onnx2tf_error(failure, text, names) from failure
    if model is None:
        raise _onnx2tf_error(RuntimeError("onnx2tf returned no model"), text, names)
    return model


_BOILERPLATE = ("trace log", "input_onnx_file_path:", "onnx_op_name:", "Read this", "Alternatively",
                "If the input OP", "Also, for models")


def _onnx2tf_error(err: BaseException, text: str, names: dict[str, str]) -> ConversionError:
    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    failing = {getattr(err, "onnx_op_name", None)} | set(re.findall(r"onnx_op_name: (\S+)", clean))
    ops: dict[str, list[str]] = {}
    for node in sorted(n for n in failing if n):
        # onnx2tf writes ':' in node names as '__' (OpenVINO-style "F2::If_0..." names)
        sanitized = {n.replace(":", "__"): n for n in names} if node not in names else {}
        original = sanitized.get(node, node)
        ops.setdefault(names.get(original, "?"), []).append(original)
    for op in re.findall(r"(\S+) OP is not yet implemented", clean):
        ops.setdefault(op, [])
    if isinstance(err, SystemExit):  # onnx2tf logs its reason as "ERROR: ..." right before exiting
        said = [ln.split("ERROR:", 1)[-1].strip() for ln in clean.splitlines() if "ERROR:" in ln]
        reason = next((s for s in said if s and not s.startswith(_BOILERPLATE)), f"exit status {err.code}")
    else:
        reason = f"{type(err).__name__}: {_exception_reason(str(err))}"
    where = f" at {ops_message(ops)}" if ops else ""
    return ConversionError(f"onnx2tf failed{where}: {reason[:300]}",
                           hint="run with -v to see onnx2tf's log; fixing dynamic shapes with --input-shape "
                                "often helps")


def _exception_reason(text: str) -> str:
    """The informative line of an exception: Keras wraps TensorFlow's reason as 'Exception
    encountered when calling layer "tf.nn.convolution" ...' followed by the reason itself."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0]
    if first.startswith("Exception encountered when calling layer") and len(lines) > 1:
        layer = re.search(r'layer ["\']([^"\']+)["\']', first)
        detail = re.sub(r" for '\{\{node .*?\}\}.*?'", "", lines[1])
        return f"in {layer.group(1) if layer else 'a layer'}: {detail}"
    return first
