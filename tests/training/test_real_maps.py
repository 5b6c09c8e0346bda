"""The expert maps D sees as real: one-hot, Luc et al.'s scaling, or label smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc

from adseg.training.networks import REAL_MAPS, LabelMapDiscriminator, real_label_maps
from adseg.training.steps import discriminator_step


def _onehot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).movedim(-1, 1).float()


def _case(classes: int = 3, shape=(4, 6, 6), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (2, *shape), generator=g)
    fake = torch.softmax(3 * torch.randn(2, classes, *shape, generator=g), dim=1)
    return _onehot(labels, classes), fake


@pytest.mark.parametrize("mode", REAL_MAPS)
def test_real_maps_are_distributions_over_classes(mode):
    onehot, fake = _case()
    real = real_label_maps(mode, onehot, fake)
    assert real.shape == onehot.shape
    assert (real >= 0).all()
    torch.testing.assert_close(real.sum(dim=1), torch.ones_like(real[:, 0]))


def test_onehot_is_the_expert_map_and_smoothing_spreads_epsilon():
    onehot, fake = _case(classes=2)
    assert torch.equal(real_label_maps("onehot", onehot, fake), onehot)
    smoothed = real_label_maps("smoothing", onehot, fake, epsilon=0.1)
    assert smoothed.unique().tolist() == pytest.approx([0.05, 0.95])
    torch.testing.assert_close(smoothed, 0.9 * onehot + 0.05)


def test_scaling_raises_the_true_class_to_tau_and_keeps_the_rest_in_proportion():
    onehot = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    # Luc et al.: ȳ_l = max(τ, s_l) = 0.9; ȳ_c = s_c · 0.1 / 0.5
    fake = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1)
    real = real_label_maps("scaling", onehot, fake, tau=0.9)
    torch.testing.assert_close(real.flatten(), torch.tensor([0.9, 0.06, 0.04]))
    # S wrong: the true class gets τ, the wrong winner most of the rest
    fake = torch.tensor([0.1, 0.7, 0.2]).view(1, 3, 1, 1)
    real = real_label_maps("scaling", onehot, fake, tau=0.8)
    expected = torch.tensor([0.8, 0.7 / 0.9 * 0.2, 0.2 / 0.9 * 0.2])
    torch.testing.assert_close(real.flatten(), expected)


def test_scaling_is_the_segmentors_own_map_where_it_is_sure_and_right():
    onehot, fake = _case()
    tau = 0.7
    real = real_label_maps("scaling", onehot, fake, tau=tau)
    true = (real * onehot).sum(dim=1)
    assert (true >= tau - 1e-6).all()
    sure = (fake * onehot).sum(dim=1) >= tau
    assert sure.any() and (~sure).any()
    torch.testing.assert_close(real.movedim(1, -1)[sure], fake.movedim(1, -1)[sure])
    torch.testing.assert_close(true[~sure], torch.full_like(true[~sure], tau))


def test_scaling_is_finite_where_the_segmentor_is_certain():
    onehot, _ = _case(classes=3)
    # s_l = 1 exactly (1 − s_l = 0), from saturated logits, and a map that sums to just below 1
    for fake in (onehot.clone(), torch.softmax(200 * onehot, dim=1), onehot * (1 - 1e-7)):
        real = real_label_maps("scaling", onehot, fake)
        assert torch.isfinite(real).all()
        torch.testing.assert_close(real, onehot)


def test_real_maps_send_no_gradient_into_the_segmentor():
    onehot, _ = _case(classes=2)
    logits = torch.randn(onehot.shape, requires_grad=True)
    fake = torch.softmax(logits, dim=1)
    for mode in REAL_MAPS:
        real = real_label_maps(mode, onehot, fake)
        assert not real.requires_grad, mode
        assert real.grad_fn is None, mode
    with pytest.raises(ValueError, match="real maps 'soft' unknown; choose from onehot, scaling"):
        real_label_maps("soft", onehot, fake)


# --- D learns the real/fake difference, not the softness --------------------------------------


def _blobs(n: int, g: torch.Generator, size: int = 32) -> torch.Tensor:
    """Random smooth 2-class label maps ``(n, size, size)``: thresholded smoothed noise."""
    field = torch.randn(n, 1, size, size, generator=g)
    for _ in range(2):
        field = F.avg_pool2d(field, 7, stride=1, padding=3, count_include_pad=False)
    return (field[:, 0] > 0).long()


def _segmentor_maps(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """S's softmax for the expert maps ``labels``: the right shapes, only soft. The true class
    has probability in [0.9, 1] everywhere, except a patch where a quarter of the maps are
    unsure (0.6 to 0.9)."""
    n = labels.shape[0]
    true = 1 - 0.1 * torch.rand(labels.shape, generator=g)
    unsure = torch.rand(n, generator=g) < 0.25
    true[unsure, 8:16, 8:16] = 0.6 + 0.3 * torch.rand(int(unsure.sum()), 8, 8, generator=g)
    onehot = _onehot(labels, 2)
    return onehot * true[:, None] + (1 - onehot) * (1 - true[:, None])


def _separation(mode: str, seed: int, steps: int = 300, batch: int = 16) -> float:
    """AUROC of a labels-only D telling expert from S's maps on fresh maps, after training
    it ``steps`` D steps (non-saturating loss) on (real, fake) of the same maps."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # no normalisation: the D that most easily learns a global softness offset
    d = LabelMapDiscriminator(2, 2, features=(8, 16, 32), norm="none")
    opt = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def pair(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = _blobs(n, g)
        fake = _segmentor_maps(labels, g)
        return real_label_maps(mode, _onehot(labels, 2), fake), fake

    for _ in range(steps):
        discriminator_step(d, opt, *pair(batch), "nonsaturating")
    with torch.no_grad():
        real, fake = pair(256)
        scores = torch.cat([d(real), d(fake)])
    truth = torch.cat([torch.ones(256), torch.zeros(256)])
    return float(compute_roc_auc(scores, truth))


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread; two contend on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_scaled_real_maps_leave_d_no_softness_to_win_on():
    """Luc et al. 2016, §3.2: against one-hot expert maps D separates S's perfectly shaped but
    soft maps outright; against scaled ones it is near chance. Where S is right and sure the
    two are equal, so the unsure patches of a quarter of the fakes are all D can learn from,
    which caps its AUROC at 0.5 + 0.25 / 2 (measured, seeds 0-4: 1.0 against 0.59-0.61)."""
    assert _separation("onehot", seed=0) > 0.95
    assert _separation("scaling", seed=0) < 0.7
