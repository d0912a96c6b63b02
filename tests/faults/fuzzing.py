"""Seeded mutations of ``.tflite`` files and manifests, and the readers' outcome on each.

Shared by the suite's fuzz test (a few hundred cases) and ``benchmarks/fuzz.py`` (many more). A
reader passes a case when it returns, or raises an :class:`~edgepack.errors.EdgepackError`; any
other exception is a finding.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# uint32 values that break offsets and lengths in interesting ways
_INTERESTING = (0, 1, 3, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFC)


def mutate_bytes(data: bytes, seed: int) -> bytes:
    """One corrupted copy of ``data``: truncation, byte flips, or a clobbered aligned word."""
    rng = random.Random(seed)
    buf = bytearray(data)
    kind = rng.random()
    if kind < 0.25:
        return bytes(buf[:rng.randrange(0, len(buf))])
    if kind < 0.65:
        for _ in range(rng.choice((1, 2, 4, 16))):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind < 0.9:
        pos = rng.randrange(0, len(buf) - 4) // 4 * 4
        value = rng.choice((*_INTERESTING, len(buf), len(buf) - pos, rng.randrange(1 << 32)))
        struct.pack_into("<I", buf, pos, value)
        return bytes(buf)
    start = rng.randrange(len(buf))  # a run of random bytes
    end = min(len(buf), start + rng.randrange(1, 64))
    buf[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    return bytes(buf)


def mutate_json(text: str, seed: int) -> str:
    """One corrupted manifest: bytes flipped or cut, or a value swapped for one of another type."""
    rng = random.Random(seed)
    if rng.random() < 0.4:
        raw = bytearray(text.encode())
        if rng.random() < 0.5:
            return raw[:rng.randrange(len(raw))].decode("utf-8", "replace")
        for _ in range(rng.choice((1, 2, 8))):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return raw.decode("latin-1")
    doc = json.loads(text)
    node = doc
    for _ in range(rng.randrange(1, 5)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
        elif isinstance(node, list) and node:
            key = rng.randrange(len(node))
        else:
            break
        if rng.random() < 0.5 or not isinstance(node[key], (dict, list)):
            node[key] = rng.choice((None, -1, 0, 1e308, "", "../../outside", "/abs", [], {}, True, "x" * 300))
            break
        node = node[key]
    return json.dumps(doc)


def fuzz_tflite(data: bytes, seeds: Iterable[int]) -> tuple[Counter, list[tuple[int, str]]]:
    """``read_tflite`` on each mutation: outcome counts and the findings (seed, exception)."""
    from edgepack.errors import EdgepackError
    from edgepack.tflite_model import read_tflite

    outcomes: Counter = Counter()
    findings = []
    for seed in seeds:
        try:
            read_tflite(mutate_bytes(data, seed))
            outcomes["accepted"] += 1
        except EdgepackError:
            outcomes["rejected"] += 1
        except Exception as err:  # noqa: BLE001 - any other exception is what the fuzzer looks for
            findings.append((seed, f"{type(err).__name__}: {err}"))
    return outcomes, findings


def fuzz_manifest(bundle: Path, work: Path, seeds: Iterable[int]) -> tuple[Counter, list[tuple[int, str]]]:
    """``api.inspect`` (which reads and checks the manifest) on a copy of ``bundle`` per mutation."""
    from edgepack import api
    from edgepack.errors import EdgepackError

    shutil.copytree(bundle, work, dirs_exist_ok=True)
    text = (bundle / "manifest.json").read_text("utf-8")
    outcomes: Counter = Counter()
    findings = []
    for seed in seeds:
        (work / "manifest.json").write_text(mutate_json(text, seed), "utf-8", errors="surrogateescape")
        try:
            api.inspect(path=work)
            outcomes["accepted"] += 1
        except EdgepackError:
            outcomes["rejected"] += 1
        except Exception as err:  # noqa: BLE001
            findings.append((seed, f"{type(err).__name__}: {err}"))
    return outcomes, findings
