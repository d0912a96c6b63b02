"""Seeded hostile recipes and manifests: no payload runs, no exception outside EdgepackError
(more cases: benchmarks/fuzz.py --recipes N --reproduce N)."""

from __future__ import annotations

from tests.faults.fuzz_requests import base_recipe, fuzz_recipes, fuzz_reproduce, make_payloads, mutate_recipe


def test_recipe_mutations_are_seeded_and_varied(tmp_path):
    base = base_recipe(tmp_path / "m.keras", tmp_path / "p.py", tmp_path / "c.npy")
    assert mutate_recipe(base, 3) == mutate_recipe(base, 3)
    assert len({mutate_recipe(base, s) for s in range(50)}) > 40


def test_hostile_recipes_run_no_payload(tmp_path, calib_npy):
    marker = tmp_path / "PAYLOAD_RAN"
    model, metric = make_payloads(tmp_path, marker)
    outcomes, findings = fuzz_recipes(tmp_path, base_recipe(model, metric, calib_npy), marker, range(100))
    assert findings == [] and outcomes["payload ran"] == 0, findings[:5]
    assert outcomes["accepted"] + outcomes["rejected"] == 100, outcomes
    assert outcomes["rejected: UnsafeModelError"] >= 3 and outcomes["rejected: UsageError"] > 20, outcomes


def test_hostile_manifests_run_no_payload(int8_bundle, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    outcomes, findings = fuzz_reproduce(int8_bundle, tmp_path, marker, range(150))
    assert findings == [] and outcomes["payload ran"] == 0, findings[:5]
    assert outcomes["rejected"] > 50 and outcomes["accepted (reached convert)"] > 5, outcomes


def test_the_payloads_are_real(tmp_path, calib_npy):
    """Positive control: the same recipe with --trust-model on the command line does run the Lambda
    payload, so the fuzzers' count of payload runs can fail."""
    from edgepack import api
    from tests.faults.fuzz_requests import _prepare_and_load, to_toml

    marker = tmp_path / "PAYLOAD_RAN"
    model, metric = make_payloads(tmp_path, marker)
    recipe = base_recipe(model, metric, calib_npy)
    recipe.pop("_metric")
    recipe["model"]["trust"] = True
    (tmp_path / "r.toml").write_text(to_toml(recipe))
    try:
        _prepare_and_load(api.convert_request(recipe=tmp_path / "r.toml", output=tmp_path / "out", trust_model=True))
    except Exception:  # noqa: BLE001 - what happens after the load does not matter here
        pass
    assert marker.exists()
