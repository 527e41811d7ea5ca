"""The norm registry: names, aliases, implementation choice and fresh layers per call."""

from __future__ import annotations

import pytest

from normbench import norms, spec as specs
from normbench.errors import NormbenchError


def norm_spec(**fields) -> specs.NormSpec:
    return specs.Spec.model_validate({"name": "t", "model": {"norm": fields}}).model.norm


@pytest.mark.parametrize("name,expected", [("GN", "group"), (" instance ", "instance"),
                                           ("bn", "batch"), ("identity", "none"), ("Layer", "layer")])
def test_canonical_names_and_aliases(name, expected):
    assert norms.canonical(name) == expected


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown norm 'weight'; choose from none, batch, layer, group, instance"):
        norms.canonical("weight")


def test_effective_groups():
    types = ("layer", "group", "instance", "batch", "ws_group", "frn")
    assert [norms.effective_groups(t, 5, 10) for t in types] == [1, 5, 10, None, 5, None]


@pytest.mark.parametrize("norm_type", list(norms.NORMS))
def test_factory_makes_a_new_layer_per_call(norm_type):
    import tensorflow  # noqa: F401 - a hard dependency
    made = norms.make(norm_spec(type=norm_type))
    factory, impl = made.norm, made.impl
    assert made.conv(4, 3) is not made.conv(4, 3)
    if norm_type == "none":
        assert factory is None and impl == "none"
        return
    assert factory() is not factory()
    assert impl in norms.NORMS[norm_type].impls


def test_auto_uses_tfa_only_when_it_works():
    import tensorflow  # noqa: F401 - a hard dependency
    usable, reason = norms.tfa_status()
    impl = norms.resolve_impl("group", "auto")
    assert impl == ("tfa" if usable else "native")
    if not usable:
        assert "tensorflow-addons" in reason
        with pytest.raises(NormbenchError, match="'tfa' is unusable here: tensorflow-addons"):
            norms.resolve_impl("group", "tfa")


@pytest.mark.parametrize("norm_type,impl,cls", [
    ("group", "native", "normbench.layers.GroupNormalization"),
    ("instance", "native", "normbench.layers.InstanceNormalization"),
    ("layer", "native", "normbench.layers.GroupNormalization"),
    ("group", "keras", "GroupNormalization"),
    ("batch", "keras", "BatchNormalization"),
])
def test_implementation_classes(norm_type, impl, cls):
    import tensorflow  # noqa: F401 - a hard dependency
    made = norms.make(norm_spec(type=norm_type, impl=impl))
    layer, used = made.norm(), made.impl
    assert used == impl
    assert f"{type(layer).__module__}.{type(layer).__name__}".endswith(cls)
    if norm_type == "layer":
        assert layer.groups == 1


def test_factory_passes_every_spec_field():
    import tensorflow  # noqa: F401 - a hard dependency
    spec = norm_spec(type="group", groups=2, epsilon=1e-5, center=False, scale=True,
                     gamma_initializer="he_normal", impl="native")
    layer = norms.make(spec).norm()
    config = layer.get_config()
    assert (config["groups"], config["epsilon"], config["center"], config["scale"]) == (2, 1e-5, False, True)
    assert "HeNormal" in str(config["gamma_initializer"])


def test_instance_and_layer_via_keras_match_native():
    np = pytest.importorskip("numpy")
    import tensorflow  # noqa: F401 - a hard dependency
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    for norm_type in ("instance", "layer"):
        native = norms.make(norm_spec(type=norm_type, impl="native")).norm()
        builtin = norms.make(norm_spec(type=norm_type, impl="keras")).norm()
        np.testing.assert_allclose(np.asarray(native(x)), np.asarray(builtin(x)), rtol=1e-5, atol=1e-5)


def _family_spec(norm_type, **norm):
    return specs.Spec.model_validate({"name": "t", "model": {"norm": {"type": norm_type, **norm}}})


def test_layer_channels_normalizes_each_pixel_over_channels():
    import numpy as np

    from normbench.verify import rel_error

    layer = norms.make(_family_spec("layer_channels").model.norm).norm()
    x = np.random.default_rng(1).normal(0.5, 2.0, (2, 5, 5, 6)).astype(np.float32)
    y = np.asarray(layer(x))
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-3)
    assert rel_error(y, want) < 1e-5


def test_batch_renorm_is_keras_bn_with_renorm():
    import keras
    import numpy as np

    from normbench.verify import rel_error

    layer = norms.make(_family_spec("batch_renorm").model.norm).norm()
    assert type(layer).__name__ == "BatchNormalization" and layer.get_config()["renorm"] is True
    x = np.random.default_rng(1).normal(0.5, 2.0, (2, 5, 5, 6)).astype(np.float32)
    layer.build(x.shape)
    y = np.asarray(layer(x, training=False))  # inference: moving statistics (0, 1) at start
    assert rel_error(y, x / np.sqrt(1 + 1e-3)) < 1e-5
    # Training: (x - mu_B)/sigma_B * r + d with r = sigma_B/sigma, d = (mu_B - mu)/sigma (no
    # clipping) equals (x - mu)/sigma in value, the point of renorm (only gradients differ). The
    # moving stddev starts at 1 and the batch epsilon cancels, so the output is x itself.
    yt = np.asarray(layer(x, training=True))
    assert rel_error(yt, x) < 1e-5
    plain = keras.layers.BatchNormalization()
    assert rel_error(np.asarray(plain(x, training=True)), yt) > 0.1  # plain BN: batch statistics
