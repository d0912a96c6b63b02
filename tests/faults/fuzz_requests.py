"""Seeded hostile recipes (``convert --recipe``) and manifests (``reproduce``): no payload ever runs,
every case ends in a result or one :class:`~edgepack.errors.EdgepackError`.

The payloads are real: a Keras model whose Lambda layer writes a marker file when it is loaded with
safe mode off, and a task-metric module that writes one when it is imported. Recipes are mutated
from one that names both; manifests from a real bundle's, with the payloads shipped inside the
bundle and recorded with their correct sha256 (what a crafted bundle would do).

Each case runs what reads permission-bearing data: the request is built, then the pipeline's
``prepare`` (where ``--metric`` is imported) and ``load`` (where the model is loaded) stages. Later
stages run no user code, so a case that gets past ``load`` counts as accepted without converting.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.faults.fuzzing import mutate_json

_HOSTILE = (True, False, None, -1, 0, 10 ** 30, 1e308, "", "../../outside", "/etc/passwd", "payload.py:f", [], {},
            ["a.keras"], {"path": "x"}, "x" * 300, 1.5, "9" * 5000)


def make_payloads(folder: Path, marker: Path) -> tuple[Path, Path]:
    """(a Lambda model that writes ``marker`` when loaded unsafely, a metric module that writes it on import)."""
    import keras

    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(fn), keras.layers.Dense(2)])
    model_path = folder / "lambda.keras"
    model.save(model_path)
    metric = folder / "payload.py"
    metric.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\n"
                      "def f(outputs, references, labels):\n    return 1.0\n")
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    return model_path, metric


# -- recipes ------------------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return '""'


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer: top-level values, then one [table] per dict (nested dicts inline)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def base_recipe(model: Path, metric: Path, calib: Path) -> dict[str, Any]:
    return {"model": {"path": str(model)}, "target": "generic", "seed": 0,
            "quantize": {"mode": "int8"}, "calibration": {"data": str(calib), "samples": 10},
            "budget": {"max_drop": 1.0}, "optimize": {"epochs": 1},
            "inputs": {"x": {"mean": 0.0, "std": 1.0}}, "_metric": str(metric)}


def mutate_recipe(base: dict[str, Any], seed: int) -> str:
    """One hostile recipe: asks for trust or a metric, swaps values for others of any type, adds
    unknown keys, or corrupts the TOML text."""
    rng = random.Random(seed)
    doc = json.loads(json.dumps(base))
    metric = doc.pop("_metric")
    for _ in range(rng.randrange(1, 4)):
        kind = rng.random()
        if kind < 0.25 and isinstance(doc.get("model"), dict):
            doc["model"]["trust"] = rng.choice((True, True, "yes", 1))
        elif kind < 0.5 and isinstance(doc.get("budget"), dict):
            doc["budget"]["metric"] = rng.choice((f"{metric}:f", "payload.py:f", f"{metric}:nope", metric))
        elif kind < 0.85:
            table = rng.choice([k for k, v in doc.items() if isinstance(v, dict)] + [None])
            target = doc if table is None else doc[table]
            key = rng.choice([*target, "unknown", "trust", "metric", "force", "recipe", "path"])
            target[key] = rng.choice(_HOSTILE)
        else:
            doc[rng.choice(list(doc))] = rng.choice(_HOSTILE)
    text = to_toml(doc)
    if rng.random() < 0.1:  # corrupt the text itself
        raw = bytearray(text.encode())
        for _ in range(rng.choice((1, 4))):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        text = raw.decode("latin-1")
    return text


def _prepare_and_load(request) -> None:
    """Run the stages where user code could run (metric import, model load) and stop there."""
    from edgepack.pipeline.run import STAGES, run_pipeline

    run_pipeline(request, stages=[s for s in STAGES if s[0] in ("prepare", "load")])


def fuzz_recipes(work: Path, base: dict[str, Any], marker: Path, seeds: Iterable[int]) -> tuple[Counter, list]:
    """``convert --recipe`` (through the API: request, then prepare and load) on each mutated recipe."""
    from edgepack import api
    from edgepack.errors import EdgepackError, InternalError

    outcomes: Counter = Counter()
    findings: list[tuple[int, str]] = []
    recipe = work / "recipe.toml"
    for seed in seeds:
        recipe.write_text(mutate_recipe(base, seed), "utf-8", errors="surrogateescape")
        try:
            _prepare_and_load(api.convert_request(recipe=recipe, output=work / "out"))
            outcomes["accepted"] += 1
        except InternalError as err:  # an EdgepackError, but "failed unexpectedly": a finding
            findings.append((seed, str(err)[:300]))
        except EdgepackError as err:
            outcomes["rejected"] += 1
            outcomes[f"rejected: {type(err).__name__}"] += 1
        except Exception as err:  # noqa: BLE001 - any other exception is a finding
            findings.append((seed, f"{type(err).__name__}: {err}"[:300]))
        if marker.exists():
            outcomes["payload ran"] += 1
            findings.append((seed, "payload ran"))
            marker.unlink()
    return outcomes, findings


# -- manifests given to reproduce ------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hostile_manifest(doc: dict[str, Any], bundle: Path, seed: int) -> dict[str, Any]:
    """One of the crafted bundles issue 20 found, at random, with the payloads recorded correctly."""
    rng = random.Random(seed)
    req = doc["request"]
    model, metric = bundle / "lambda.keras", bundle / "payload.py"
    for _ in range(rng.randrange(1, 3)):
        kind = rng.randrange(8)
        if kind == 0:  # trust a Lambda model shipped inside the bundle
            req["settings"]["model"].update(path=str(model), trust=rng.choice((True, "yes", 1)))
            req["files"]["model"] = {"path": str(model), "sha256": _sha(model)}
        elif kind == 1:  # the same model, no trust asked (the load must refuse it)
            req["settings"]["model"]["path"] = str(model)
            req["files"]["model"] = {"path": str(model), "sha256": _sha(model)}
        elif kind == 2:  # a metric module shipped inside the bundle
            req["settings"]["budget"].update(metric=f"{metric}:f", max_drop=1.0)
            if rng.random() < 0.8:
                req["files"]["metric"] = {"path": str(metric), "sha256": _sha(metric)}
        elif kind == 3:
            req["files"] = {}
        elif kind == 4:
            doc["artifacts"][0]["path"] = rng.choice(("../../../../etc/passwd", "/etc/passwd", "a/../../x"))
        elif kind == 5:  # an input moved to a file the request did not record
            role = rng.choice(list(req["files"]) or ["model"])
            req["files"].setdefault(role, {})["path"] = rng.choice(("/etc/hostname", "/dev/zero", "relative.npy"))
        elif kind == 6:
            req["settings"]["calibration"]["path"] = rng.choice(("/dev/zero", "/etc/passwd", str(bundle / "x.npy")))
        else:
            doc["inputs"][0]["scale"] = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e-3))
    return doc


def fuzz_reproduce(bundle: Path, work: Path, marker: Path, seeds: Iterable[int]) -> tuple[Counter, list]:
    """``api.reproduce`` on a copy of ``bundle`` per mutation (half crafted, half random JSON damage);
    the pipeline stops after ``load``."""
    import edgepack.pipeline.run as pipeline_run
    from edgepack import api
    from edgepack.errors import EdgepackError, InternalError

    shutil.copytree(bundle, work / "b", dirs_exist_ok=True)
    make_payloads(work / "b", marker)
    text = (bundle / "manifest.json").read_text("utf-8")
    outcomes: Counter = Counter()
    findings: list[tuple[int, str]] = []
    real = pipeline_run.run_pipeline

    class Reached(Exception):
        pass

    def stop_after_load(request, stages=None, progress=None, on_epoch=None):
        real(request, stages=[s for s in pipeline_run.STAGES if s[0] in ("prepare", "load")])
        raise Reached

    pipeline_run.run_pipeline = stop_after_load
    try:
        for seed in seeds:
            rng = random.Random(seed)
            if rng.random() < 0.5:
                mutated = json.dumps(hostile_manifest(json.loads(text), work / "b", seed))
            else:
                mutated = mutate_json(text, seed)
            (work / "b" / "manifest.json").write_text(mutated, "utf-8", errors="surrogateescape")
            shutil.rmtree(work / "out", ignore_errors=True)
            try:
                api.reproduce(bundle=work / "b", output=work / "out")
                outcomes["accepted"] += 1
            except Reached:
                outcomes["accepted (reached convert)"] += 1
            except InternalError as err:
                findings.append((seed, str(err)[:300]))
            except EdgepackError as err:
                outcomes["rejected"] += 1
                outcomes[f"rejected: {type(err).__name__}"] += 1
            except Exception as err:  # noqa: BLE001
                findings.append((seed, f"{type(err).__name__}: {err}"[:300]))
            if marker.exists():
                outcomes["payload ran"] += 1
                findings.append((seed, "payload ran"))
                marker.unlink()
    finally:
        pipeline_run.run_pipeline = real
    return outcomes, findings
