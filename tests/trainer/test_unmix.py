import pytest
import torch

from trainer.seeding import generator
from trainer.unmix import MixDraw, draw_mix, mix_batch, mix_crops, unmix_loss_inputs


def test_global_mixture_is_convex_combination_with_reversed_batch():
    x = torch.randn(4, 3, 8, 8)
    before = x.clone()
    mixed, lam = mix_batch(x, 0.3, "global")
    assert lam == 0.3
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x.flip(0))
    assert torch.equal(x, before)


def test_region_mixture_pastes_a_box_of_the_reversed_batch():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
    before = x.clone()
    mixed, lam_eff = mix_batch(x, 0.75, "region", generator(0, 0, 0))
    assert torch.equal(x, before)
    from_reversed = (mixed != x)[0, 0]  # sample 0 holds value 0; the reversed batch gives it value 3
    assert torch.equal(mixed[0, 0][from_reversed], torch.full((int(from_reversed.sum()),), 3.0))
    assert lam_eff == pytest.approx(1 - from_reversed.float().mean().item())
    ys, xs = torch.nonzero(from_reversed, as_tuple=True)
    assert from_reversed.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one rectangle


def test_region_box_area_follows_lam_when_inside():
    areas = []
    for step in range(200):
        _, lam_eff = mix_batch(torch.zeros(2, 1, 64, 64), 0.75, "region", generator(0, 0, step))
        areas.append(1 - lam_eff)
    assert max(areas) == pytest.approx(0.25, abs=0.02)  # the unclipped box: (1 - lam) of the crop
    assert min(areas) < 0.2  # clipped at the border sometimes


def test_draws_differ_per_rank_and_repeat_per_step():
    draws = {rank: draw_mix(0.5, 1.0, generator(7, rank, 3)) for rank in range(4)}
    assert len({d.lam for d in draws.values()}) == 4
    assert draw_mix(0.5, 1.0, generator(7, 1, 3)) == draws[1]


def test_draw_distribution_beta_and_mode_rate():
    draws = [draw_mix(0.5, 1.0, generator(1, 0, step)) for step in range(2000)]
    lams = torch.tensor([d.lam for d in draws])
    assert 0.47 < lams.mean() < 0.53 and lams.min() >= 0 and lams.max() <= 1  # Beta(1, 1) = U(0, 1)
    global_rate = sum(d.mode == "global" for d in draws) / len(draws)
    assert 0.45 < global_rate < 0.55
    assert all(d.mode == "region" for d in (draw_mix(0.0, 1.0, generator(2, 0, s)) for s in range(50)))


def test_mix_crops_pairs_and_odd_count():
    crops = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    mixtures, lam = mix_crops(crops, MixDraw("global", 0.6), generator(0, 0, 0))
    assert [m.shape for m in mixtures] == [crops[0].shape, crops[2].shape]
    assert torch.allclose(mixtures[1], 0.6 * crops[2] + 0.4 * crops[2].flip(0))
    assert lam == pytest.approx(0.6)
    with pytest.raises(ValueError, match="even"):
        mix_crops(crops[:3], MixDraw("global", 0.6), generator(0, 0, 0))


def test_every_pair_sizes_its_box_from_the_drawn_lam(monkeypatch):
    # The seed overwrote lam with the first pair's effective value; each pair must get the drawn 0.75.
    import trainer.unmix as unmix

    seen = []
    real = unmix.mix_batch

    def recording(x, lam, mode, gen=None):
        seen.append(lam)
        return real(x, lam, mode, gen)

    monkeypatch.setattr(unmix, "mix_batch", recording)
    crops = [torch.zeros(2, 1, 64, 64)] * 6
    _, lam_mean = unmix.mix_crops(crops, MixDraw("region", 0.75), generator(3, 0, 0))
    assert seen == [0.75, 0.75, 0.75]
    assert lam_mean >= 0.75


def test_loss_inputs_replace_first_of_pair_and_reverse():
    scores = [torch.randn(3, 5) for _ in range(4)]
    mixes = [torch.randn(3, 5) for _ in range(2)]
    mixed, reversed_ = unmix_loss_inputs(scores, mixes)
    assert mixed[0] is mixes[0] and mixed[2] is mixes[1] and mixed[1] is scores[1] and mixed[3] is scores[3]
    assert torch.equal(reversed_[0], mixes[0].flip(0)) and torch.equal(reversed_[2], mixes[1].flip(0))
    assert reversed_[1] is scores[1]
