"""The shared typed config: strict, one policy at a time, string forms the CLI and API send."""

from __future__ import annotations

import pytest

from converter import DEFAULT_ENERGY, ConversionConfig, InvalidOptionsError


def test_defaults_and_policy():
    c = ConversionConfig()
    assert c.policy == ("energy", DEFAULT_ENERGY)
    assert (c.order, c.lowering, c.verify, c.force) == ("auto", "auto", True, False)
    assert (c.threads, c.measure, c.default_policy) == (1, True, True)
    assert ConversionConfig(target_macs=0.4).policy == ("target_macs", 0.4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 2, "energy": 0.5}, "choose one rank policy, not rank and energy"),
        ({"rnak": 2}, "rnak: unknown option"),
        ({"rank": 0}, "rank: Input should be greater than or equal to 1"),
        ({"energy": 1.5}, "energy: Input should be less than or equal to 1"),
        ({"target_params": 0}, "target_params: Input should be greater than 0"),
        ({"order": "sideways"}, "order: Input should be 'dw-pw', 'pw-dw' or 'auto'"),
        ({"input_shape": ["x=1x3xAx4"]}, "input shape 'x=1x3xAx4' is not of the form NAME=1x3x224x224"),
        ({"input_shape": ["x=1x0x4"]}, "every dimension must be positive"),
        ({"layer_rank": ["conv1"]}, "is not of the form NAME=K"),
        ({"energy": float("nan")}, "energy"),
    ],
)
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(InvalidOptionsError) as e:
        ConversionConfig.from_options(**options)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_string_forms_from_cli_and_api():
    c = ConversionConfig.from_options(input_shape=["x=1x3x224x224", "mask = 1×1×224×224"], layer_rank=["stem.*=4"],
                                      exclude="head*")
    assert c.input_shape == {"x": (1, 3, 224, 224), "mask": (1, 1, 224, 224)}
    assert c.layer_rank == {"stem.*": 4}
    assert c.exclude == ["head*"]
    assert ConversionConfig.model_validate_json(c.model_dump_json()) == c  # the stored job record round-trips


def test_from_options_layers_on_a_config():
    base = ConversionConfig(rank=3, order="dw-pw")
    c = ConversionConfig.from_options(base, threads=2)
    assert (c.rank, c.order, c.threads) == (3, "dw-pw", 2)
    with pytest.raises(InvalidOptionsError, match="choose one rank policy"):
        ConversionConfig.from_options(base, energy=0.9)


def test_config_is_immutable():
    c = ConversionConfig()
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen-instance error type)
        c.rank = 3


def test_device_is_a_config_field():
    from converter._device import resolve_device

    assert ConversionConfig().device == "cpu"
    assert ConversionConfig.from_options(device="cuda").device == "cuda"
    with pytest.raises(InvalidOptionsError, match="device"):
        ConversionConfig.from_options(device="tpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    # One resolution for every stage: cuda where the runtime has none is refused up front, for both runtimes.
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(InvalidOptionsError, match="onnxruntime sees no CUDA GPU"):
            resolve_device("cuda")


def test_map_errors_wraps_lower_level_errors_once():
    from converter import ConversionError, SepconvError
    from converter._errors import map_errors

    with (pytest.raises(ConversionError, match=r"^saving failed: OSError: disk full$") as info,
          map_errors("saving failed", ConversionError)):
        raise OSError("disk full\nand a second line")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(InvalidOptionsError, match="already ours"), map_errors("x", ConversionError):
        raise InvalidOptionsError("already ours")
    with pytest.raises(SepconvError, match=r"^reading: bad$"), map_errors("reading", ConversionError,
                                                                         type_name=False):
        raise ValueError("bad")


def test_map_errors_serves_other_boundaries():
    from converter._errors import map_errors

    class BrokerDown(Exception):
        pass

    with pytest.raises(BrokerDown, match=r"^queue unavailable: refused$"), map_errors(
            "queue unavailable", BrokerDown, keep=(), type_name=False):
        raise ConnectionError("refused")
    with pytest.raises(BrokerDown, match=r"^as is$"), map_errors("x", BrokerDown, keep=()):
        raise BrokerDown("as is")
