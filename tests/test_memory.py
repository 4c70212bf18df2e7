"""Memory limits: a conversion that will not fit is refused up front, with the estimate, not OOM-killed later.

(Whether the estimate bounds the real peak is measured by `benchmarks/convert.py`: peak / estimate.)"""

import pytest
from conftest import one_line_error, run

from xcit_edge.errors import UsageError
from xcit_edge.util.memory import GIB, Estimate, available_memory, check_fits, estimate, parse_size, tree_bytes


def test_sizes_in_binary_units():
    assert parse_size("8G") == 8 * GIB == parse_size("8GiB") == parse_size("8 gb")
    assert parse_size("512M") == 512 << 20 and parse_size("1.5G") == 3 * GIB // 2 and parse_size("4096") == 4096
    for bad in ("", "-1G", "0", "lots", "8X"):
        with pytest.raises(UsageError, match="--max-memory"):
            parse_size(bad)


def test_the_estimate_grows_with_the_model_and_the_images():
    small, big = estimate(10 << 20, (224, 224), 100), estimate(100 << 20, (224, 224), 100)
    assert big.model == 10 * small.model and big.calibration == small.calibration
    assert estimate(10 << 20, (224, 224), 400).calibration == 4 * small.calibration


def test_too_little_memory_is_one_line_with_the_estimate_and_what_to_do():
    est = Estimate(runtimes=GIB, model=2 * GIB, calibration=2 * GIB, images=100)
    check_fits(est, 6 * GIB)  # fits: no error
    with pytest.raises(UsageError) as e:
        check_fits(est, 4 * GIB)
    msg = str(e.value)
    assert "about 5.0 GiB" in msg and "model 2.0 GiB" in msg and "--max-memory (4.0 GiB)" in msg
    assert "use 50 images or fewer" in msg  # 1 GiB left for images at 2 GiB per 100
    with pytest.raises(UsageError, match="more memory"):
        check_fits(est, 2 * GIB)  # not even the model fits: fewer images would not help


def test_the_machine_reports_what_it_has():
    limit, what = available_memory()
    assert limit is not None and limit > 0 and what in ("available memory", "the cgroup memory limit")


def test_convert_over_max_memory_stops_before_loading_the_model(fixture_dir, tmp_path):
    line = one_line_error(run("convert", fixture_dir, "--target", "onnx", "--out", tmp_path / "out",
                              "--max-memory", "300M"))
    assert "needs about" in line and "--max-memory (0.3 GiB)" in line
    assert not (tmp_path / "out").exists()
    assert "--max-memory" in one_line_error(run("convert", fixture_dir, "--out", tmp_path / "o", "--max-memory", "x"))


def _just_over_the_model(fixture_dir) -> str:
    """A --max-memory the fixture's model part fits in with room for fewer than its 200 calibration images."""
    est = estimate(tree_bytes(fixture_dir), (64, 64), 0)
    return str(est.total + (20 << 20))


@pytest.mark.parametrize("command", ["reference", "validate"])
def test_too_many_images_are_refused_before_any_is_decoded(command, fixture_dir, fixture_artifacts, calib_npz,
                                                           tmp_path):
    limit = _just_over_the_model(fixture_dir)
    if command == "reference":
        args = ["reference", fixture_dir, "--calibration", calib_npz, "--out", tmp_path / "ref.npz"]
    else:
        args = ["validate", fixture_artifacts["onnx"]["path"], "--source", fixture_dir, "--calibration", calib_npz]
    line = one_line_error(run(*args, "--max-memory", limit))
    assert "200 calibration images" in line and "images or fewer" in line
    assert not (tmp_path / "ref.npz").exists()
    assert run(*args, "--max-memory", limit, "--max-images", 20).exit_code == 0  # what the message says to do


def test_convert_is_estimated_by_its_heaviest_backend_and_each_other_one():
    from xcit_edge.backends import all_backends
    from xcit_edge.convert import convert_memory_factor
    from xcit_edge.targets import all_targets
    from xcit_edge.util.memory import EXTRA_BACKEND_FACTOR, REFERENCE_FACTOR, check_model

    factors = {name: b.CONVERT_MEMORY_FACTOR for name, b in all_backends().items()}
    first = {}
    for spec in all_targets().values():
        first.setdefault(spec.backend, spec)
    onnx, openvino, tflite = first["onnx"], first["openvino"], first["tflite"]
    assert convert_memory_factor([onnx, onnx]) == factors["onnx"]  # one backend counts once
    assert convert_memory_factor([onnx, tflite]) == max(factors["onnx"], factors["tflite"]) + EXTRA_BACKEND_FACTOR
    assert convert_memory_factor([onnx, openvino, tflite]) == max(factors.values()) + 2 * EXTRA_BACKEND_FACTOR
    assert min(factors.values()) > REFERENCE_FACTOR  # converting holds more copies than running

    large = 762_000_000  # xcit_large_24_p16_224's SavedModel: refused on a 24 GiB machine by the old 48x estimate
    check_model(large, int(19.9 * GIB), convert_memory_factor([onnx]))
    check_model(large, int(19.9 * GIB), convert_memory_factor(list(all_targets().values())))  # all in one process
    with pytest.raises(UsageError, match="needs about"):
        check_model(large, 6 * GIB, convert_memory_factor([tflite]))
