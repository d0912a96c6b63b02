"""The fault catalogue (issue 15): every hostile or broken input ends in one line on stderr, a
nonzero exit, the old bundle byte-identical, nothing left behind, and no payload run.

    test_security.py        Lambda in .keras/.h5, zip+HDF5 polyglots, foreign modules in configs,
                            archive bombs and traversal names, SavedModel file/process ops, names in C
    test_onnx_external.py   ONNX external data cut short or pointing past its file
    test_bad_data.py        bad calibration / evaluation data (0-d, NaN, shape, pickles, truncation)
    test_corrupt_tflite.py  seeded byte flips and truncations through inspect; manifest sha256
    test_validate_faults.py corrupt models with matching hashes, a crashing interpreter, mismatched
                            references
    test_disk_faults.py     full disk, read-only output and bundle folders, SIGKILL mid-run,
                            stale staging and temporary folders of dead runs
    test_cli_values.py      bad option values and missing arguments
    test_fuzz.py            seeded fuzzing of the .tflite and manifest readers (more: benchmarks/fuzz.py)

Shared helpers (run_cli, one_line, snapshot, leftovers, small_fs, read_only) are in conftest.py.
"""
