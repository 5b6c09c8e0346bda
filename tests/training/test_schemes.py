"""The registries are the one place a scheme, loss or network is added: the config schema's
choices must name exactly what the registries hold, and every scheme must have a label."""

from __future__ import annotations

import pytest

from adseg.config import schema
from adseg.training.losses import ADVERSARIAL_LOSSES, D_LOSSES, G_LOSSES, GAN_LOSSES
from adseg.training.networks import DISCRIMINATOR_INPUTS, REAL_MAPS, SEGMENTORS
from adseg.training.schemes import ADDA_VARIANTS, ADVERSARIAL_SCHEMES, SCHEMES


def _enum(*path: str) -> list:
    node = schema()
    for key in path:
        node = node["$defs"][key] if key == "gan_recipe" else node["properties"][key]
    return node["items"]["enum"] if "items" in node else node["enum"]


@pytest.mark.parametrize(
    ("path", "registry"),
    [
        (("schemes",), list(SCHEMES)),
        (("adversarial", "loss"), list(ADVERSARIAL_LOSSES)),
        (("adversarial", "d_input"), list(DISCRIMINATOR_INPUTS)),
        (("adversarial", "real_maps"), list(REAL_MAPS)),
        (("adda", "loss"), list(ADVERSARIAL_LOSSES)),
        (("adda", "variants"), list(ADDA_VARIANTS)),
        (("train", "network", "name"), list(SEGMENTORS)),
        (("gan_recipe", "loss"), list(GAN_LOSSES)),
        (("gan", "modes", "losses"), list(GAN_LOSSES)),
    ],
)
def test_schema_choices_are_the_registry(path, registry):
    assert _enum(*path) == registry, path


def test_adda_source_schemes_are_registered_schemes_with_a_supervised_loss():
    sources = _enum("adda", "source_scheme")
    assert set(sources) <= set(SCHEMES)
    # a source model must learn from labels: the adversarial-only scheme cannot be one
    assert all(not SCHEMES[s].adversarial or SCHEMES[s].hybrid for s in sources)


def test_every_scheme_has_a_label_and_a_consistent_update():
    for name, scheme in SCHEMES.items():
        assert scheme.label and scheme.loss, name
        assert scheme.supervised in ("ce", "wce", "dicece"), name
        assert not scheme.hybrid or scheme.adversarial, name
        assert not scheme.frozen_discriminator or scheme.adversarial, name
    assert ADVERSARIAL_SCHEMES == ("adversarial", "hybrid", "hybrid-frozen")


def test_every_adversarial_loss_has_both_updates():
    assert set(D_LOSSES) == set(G_LOSSES) == set(ADVERSARIAL_LOSSES)
