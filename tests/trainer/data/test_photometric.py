import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from trainer.data.photometric import MEAN, STD, Photometric, PhotometricParams
from trainer.errors import UserError

BLUR_KERNEL = 13


def make_images(batch: int, height: int = 32, width: int = 40, seed: int = 0) -> torch.Tensor:
    """Random uint8 images with flat gray, saturated and black patches (hue undefined, clamping, zero max)."""
    images = torch.randint(0, 256, (batch, 3, height, width), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    images[:, :, :6, :6] = 128
    images[:, :, -6:, -6:] = 0
    images[:, 0, :6, -6:] = 255
    return images


def reference(image: torch.Tensor, params: PhotometricParams, i: int) -> torch.Tensor:
    """Sample i through torchvision's per-image functional ops with the same parameters."""
    x = TF.to_dtype(image, torch.float32, scale=True)
    brightness, contrast, saturation, hue = params.factors[i].tolist()
    ops = [lambda x: TF.adjust_brightness(x, brightness), lambda x: TF.adjust_contrast(x, contrast),
           lambda x: TF.adjust_saturation(x, saturation), lambda x: TF.adjust_hue(x, hue)]
    if params.jitter[i]:
        for op in params.order[i].tolist():
            x = ops[op](x)
    if params.grayscale[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params.blur[i]:
        sigma = float(params.sigma[i])
        x = TF.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma])
    return TF.normalize(x, list(MEAN), list(STD))


def test_parameters_follow_the_specified_distributions():
    params = Photometric().draw(40_000, torch.Generator().manual_seed(0))
    for column in range(3):  # brightness, contrast, saturation: U(0.2, 1.8)
        factor = params.factors[:, column]
        assert 0.2 <= factor.min() < 0.21 and 1.79 < factor.max() <= 1.8
        assert factor.mean() == pytest.approx(1.0, abs=0.01)
        assert (factor < 0.6).float().mean() == pytest.approx(0.25, abs=0.01)  # uniform, not just bounded
    hue = params.factors[:, 3]
    assert -0.2 <= hue.min() < -0.199 and 0.199 < hue.max() <= 0.2
    assert (hue > 0.1).float().mean() == pytest.approx(0.25, abs=0.01)
    assert params.jitter.float().mean() == pytest.approx(0.8, abs=0.01)
    assert params.grayscale.float().mean() == pytest.approx(0.2, abs=0.01)
    assert params.blur.float().mean() == pytest.approx(0.5, abs=0.01)
    assert 0.1 <= params.sigma.min() < 0.11 and 1.99 < params.sigma.max() <= 2.0
    assert params.sigma.mean() == pytest.approx(1.05, abs=0.01)
    # the four probabilities are independent of each other
    both = (params.jitter & params.grayscale).float().mean()
    assert both == pytest.approx(0.16, abs=0.01)


def test_jitter_order_is_a_uniform_random_permutation_per_sample():
    order = Photometric().draw(48_000, torch.Generator().manual_seed(1)).order
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand_as(order))
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    assert len(counts) == 24
    assert all(abs(count / len(order) - 1 / 24) < 0.005 for count in counts.values())


def test_each_sample_equals_torchvision_per_image_ops():
    images = make_images(48)
    photometric = Photometric()
    params = photometric.draw(len(images), torch.Generator().manual_seed(2))
    # the batch covers every branch: jittered or not, gray or not, blurred or not, hue at every position
    assert 0 < params.jitter.sum() < 48 and 0 < params.grayscale.sum() < 48 and 0 < params.blur.sum() < 48
    assert set(params.order[params.jitter, :].argmax(dim=1).tolist()) == {0, 1, 2, 3}
    out = photometric.apply_params(images, params)
    assert out.dtype == torch.float32 and out.shape == images.shape
    for i in range(len(images)):
        torch.testing.assert_close(out[i], reference(images[i], params, i), atol=5e-5, rtol=0)


def test_the_sampled_order_is_the_one_applied():
    images = make_images(16, seed=3)
    photometric = Photometric(jitter_prob=1.0, grayscale_prob=0.0, blur_prob=0.0)
    params = photometric.draw(len(images), torch.Generator().manual_seed(4))
    reversed_params = PhotometricParams(params.jitter, params.factors, params.order.flip(1),
                                        params.grayscale, params.blur, params.sigma)
    out = photometric.apply_params(images, reversed_params)
    for i in range(len(images)):
        torch.testing.assert_close(out[i], reference(images[i], reversed_params, i), atol=5e-5, rtol=0)
    assert not torch.allclose(out, photometric.apply_params(images, params), atol=1e-3)


def test_results_are_deterministic_per_sample_given_the_generator():
    images = make_images(12, seed=5)
    photometric = Photometric()
    first = photometric.apply(images, torch.Generator().manual_seed(7))
    again = photometric.apply(images, torch.Generator().manual_seed(7))
    other = photometric.apply(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # sample i's parameters depend on the generator and i only, not on the size of the batch
    prefix = photometric.apply(images[:5], torch.Generator().manual_seed(7))
    torch.testing.assert_close(prefix, first[:5], atol=1e-6, rtol=0)


def test_generator_advances_so_consecutive_calls_differ():
    photometric = Photometric()
    generator = torch.Generator().manual_seed(9)
    first, second = photometric.draw(64, generator), photometric.draw(64, generator)
    assert not torch.equal(first.factors, second.factors)


def test_without_augmentation_it_only_normalises():
    images = make_images(4)
    plain = Photometric(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    out = plain.apply(images, torch.Generator().manual_seed(0))
    expected = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_requested_dtype_and_grayscale_channels():
    images = make_images(32)
    photometric = Photometric(dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(11)
    params = photometric.draw(len(images), generator)
    out = photometric.apply_params(images, params)
    assert out.dtype == torch.bfloat16 and out.shape == images.shape
    pixels = out.float() * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    gray_spread = (pixels.max(dim=1).values - pixels.min(dim=1).values).amax(dim=(1, 2))
    assert params.grayscale.any() and (gray_spread[params.grayscale] < 0.02).all()
    assert (gray_spread[~params.grayscale] > 0.05).all()  # even saturation 0.2 keeps some colour


def test_rejects_inputs_it_cannot_handle():
    photometric = Photometric()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(UserError, match="uint8"):
        photometric.apply(torch.rand(2, 3, 32, 32), generator)
    with pytest.raises(UserError, match="too small"):
        Photometric(blur_prob=1.0).apply(torch.zeros(2, 3, 5, 5, dtype=torch.uint8), generator)
    with pytest.raises(UserError, match="hue"):
        Photometric(hue=0.7)


def test_memory_format_does_not_change_the_result():
    images = make_images(8, seed=12)
    photometric = Photometric()
    params = photometric.draw(len(images), torch.Generator().manual_seed(13))
    channels_last = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(photometric.apply_params(channels_last, params),
                               photometric.apply_params(images, params), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_result_equals_cpu_result():
    images = make_images(16, seed=14)
    photometric = Photometric()
    on_cpu = photometric.apply(images, torch.Generator().manual_seed(15))
    on_gpu = photometric.apply(images.cuda(), torch.Generator().manual_seed(15))
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
