"""Device side of the split augmentation: SwAV's photometric transforms, batched, per-sample random.

Loader workers only decode and crop/flip on uint8 (trainer/data/multicrop.py); the float work (colour
jitter in a random order per sample, grayscale, Gaussian blur, normalisation) runs here, on whatever
device the uint8 batch lives on, with no Python loop over samples.

Definitions follow torchvision's functional ops on float images in [0, 1] (transforms.v2.functional
adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue (HSV), rgb_to_grayscale,
gaussian_blur, normalize), so every sample equals torchvision applied to that image with the same
factors. Working in float end to end skips the uint8 rounding torchvision/PIL do between ops.

Blur kernel: SwAV's PILRandomGaussianBlur uses PIL's GaussianBlur(radius=sigma), sigma ~ U(0.1, 2.0), whose
support is about 3 sigma. We use torchvision's Gaussian kernel with one size for every sample,
13 = 2 * ceil(3 * 2.0) + 1 (3 sigma at the largest sigma), with reflect padding as torchvision does.

Every parameter is drawn on the CPU from the caller's generator, one row of `PARAMS_PER_SAMPLE` uniforms per
sample, so sample i's parameters depend only on the generator state and i (not on the batch size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.errors import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's (ITU-R 601-2 luma)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op ids, as torchvision's ColorJitter numbers them
PARAMS_PER_SAMPLE = 12


@dataclass(frozen=True)
class PhotometricParams:
    """Per-sample parameters of one batch, on the CPU. B = batch size."""

    jitter: torch.Tensor  # (B,) bool: colour jitter applied
    factors: torch.Tensor  # (B, 4) float: brightness, contrast, saturation factors and hue shift
    order: torch.Tensor  # (B, 4) int64: op ids in the order they are applied (a permutation of 0..3)
    grayscale: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,) float: blur sigma (drawn for every sample, used where blur is True)


class Photometric:
    """SwAV's photometric augmentation on uint8 (B, 3, H, W) batches: `apply(images, generator)`."""

    def __init__(self, brightness: float = 0.8, contrast: float = 0.8, saturation: float = 0.8,
                 hue: float = 0.2, jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                 blur_prob: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 mean: tuple[float, float, float] = MEAN, std: tuple[float, float, float] = STD,
                 dtype: torch.dtype = torch.float32) -> None:
        if not 0 <= hue <= 0.5:
            raise UserError(f"hue jitter {hue} is out of range; use a value in [0, 0.5]")
        if min(brightness, contrast, saturation) < 0:
            raise UserError("brightness, contrast and saturation jitter must be >= 0")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise UserError(f"blur sigma range {blur_sigma} is invalid; use 0 < low <= high, e.g. (0.1, 2.0)")
        self.low = torch.tensor([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation),
                                 -hue])
        self.high = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue])
        self.jitter_prob, self.grayscale_prob, self.blur_prob = jitter_prob, grayscale_prob, blur_prob
        self.blur_sigma = blur_sigma
        self.blur_radius = math.ceil(3 * blur_sigma[1])
        self.mean, self.std, self.dtype = mean, std, dtype

    def draw(self, batch_size: int, generator: torch.Generator) -> PhotometricParams:
        """The parameters of `batch_size` samples, drawn on the CPU from `generator`."""
        u = torch.rand(batch_size, PARAMS_PER_SAMPLE, generator=generator)
        sigma_low, sigma_high = self.blur_sigma
        return PhotometricParams(
            jitter=u[:, 0] < self.jitter_prob,
            factors=self.low + (self.high - self.low) * u[:, 1:5],
            order=u[:, 5:9].argsort(dim=1),  # argsort of iid uniforms: a uniformly random permutation
            grayscale=u[:, 9] < self.grayscale_prob,
            blur=u[:, 10] < self.blur_prob,
            sigma=sigma_low + (sigma_high - sigma_low) * u[:, 11],
        )

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment and normalise a uint8 (B, 3, H, W) batch on its own device; returns `self.dtype`."""
        return self.apply_params(images, self.draw(images.shape[0], generator))

    def apply_params(self, images: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"photometric augmentation needs uint8 (B, 3, H, W) images, got {images.dtype} "
                            f"{tuple(images.shape)}; feed it the worker-side uint8 crops")
        if params.blur.any() and min(images.shape[-2:]) <= self.blur_radius:
            raise UserError(f"crops of {tuple(images.shape[-2:])} px are too small for the blur kernel; "
                            f"use crops of at least {self.blur_radius + 1} px")
        device = images.device
        x = images.to(torch.float32).div_(255)
        x = self._jitter(x, params)
        grayed = params.grayscale.nonzero().flatten()
        if len(grayed):
            index = _to_device(grayed, device)
            x.index_copy_(0, index, _gray(x.index_select(0, index)).expand(-1, 3, -1, -1))
        blurred = params.blur.nonzero().flatten()
        if len(blurred):
            index, sigma = _to_device(blurred, device), _to_device(params.sigma[blurred], device)
            x.index_copy_(0, index, _gaussian_blur(x.index_select(0, index), sigma, self.blur_radius))
        mean = _to_device(torch.tensor(self.mean), device).view(1, 3, 1, 1)
        inv_std = _to_device(1 / torch.tensor(self.std), device).view(1, 3, 1, 1)
        return x.sub_(mean).mul_(inv_std).to(self.dtype)

    def _jitter(self, x: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
        """ColorJitter with p = jitter_prob: at each of the 4 positions every sample applies its own op.

        Brightness, contrast and saturation are one blend x * r + target * (1 - r) with target 0, the mean
        gray level or the per-pixel gray: computed for the whole batch at once, identity (r = 1) where the
        sample's op at this position is hue or it is not jittered. Hue, the costly one, runs only on the
        samples whose op at this position is hue (indices known on the host: no device sync).
        """
        if not params.jitter.any():
            return x
        device = x.device
        selected = params.order.T.unsqueeze(1) == torch.arange(4).view(1, 4, 1)  # (position, op, sample)
        selected &= params.jitter.view(1, 1, -1)
        ratio = torch.where(selected[:, :3], params.factors.T[:3], 1.0).prod(dim=1)  # (position, sample)
        use_mean, use_gray = selected[:, CONTRAST].float(), selected[:, SATURATION].float()
        blend = _to_device(torch.stack([ratio, use_mean, use_gray], dim=1), device)
        hue = _to_device(params.factors[:, HUE], device)
        for position in range(4):
            r, w_mean, w_gray = (v.view(-1, 1, 1, 1) for v in blend[position])
            gray = _gray(x)
            mean_gray = gray.mean(dim=(-2, -1), keepdim=True)
            target = gray.mul_(w_gray).add_(mean_gray.mul_(w_mean))
            x.mul_(r).add_(target.mul_(1 - r)).clamp_(0, 1)
            hued = selected[position, HUE].nonzero().flatten()
            if len(hued):
                index = _to_device(hued, device)
                x.index_copy_(0, index, _shift_hue(x.index_select(0, index), hue.index_select(0, index)))
        return x


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device` without stalling the host: a copy from pageable memory would wait for
    the GPU stream to drain (the previous step), so it goes through pinned memory."""
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of float RGB (B, 3, H, W)."""
    r, g, b = x.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of float RGB (N, 3, H, W) in [0, 1] by `shift` (N,) turns; S and V are kept.

    RGB -> (hue, chroma, max) -> RGB with the closed form channel = max - chroma * clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 * hue) mod 6 for n = 5, 3, 1 (R, G, B): the same values as the sector table of HSV -> RGB.
    """
    r, g, b = x.unbind(dim=1)
    max_c = torch.maximum(torch.maximum(r, g), b)  # elementwise: much faster on CPU than aminmax over dim 1
    chroma = torch.minimum(r, g)
    torch.minimum(chroma, b, out=chroma)
    torch.sub(max_c, chroma, out=chroma)
    inv_chroma = torch.where(chroma > 0, chroma, 1.0).reciprocal_()  # hue is irrelevant at chroma 0
    hue6 = torch.where(max_c == r, (g - b).mul_(inv_chroma),
                       torch.where(max_c == g, (b - r).mul_(inv_chroma).add_(2), (r - g).mul_(inv_chroma).add_(4)))
    hue6.add_(6 * shift.view(-1, 1, 1))
    sector = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # made there: no host copy
    k = (hue6.unsqueeze(1) + sector).remainder_(6)
    torch.minimum(k, torch.rsub(k, 4), out=k)  # in place: these (N, 3, H, W) temporaries dominate the cost
    return k.clamp_(0, 1).mul_(chroma.unsqueeze(1)).neg_().add_(max_c.unsqueeze(1))


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), one sigma per sample, kernel 2 * radius + 1, reflect pad."""
    n, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-(offsets.view(1, -1) / sigma.view(-1, 1)) ** 2 / 2, dim=1)  # (N, 2r+1), sums to 1
    weight = kernel.repeat_interleave(c, dim=0)  # one depthwise filter per (sample, channel)
    planes = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, weight.view(n * c, 1, 1, -1), groups=n * c)
    planes = F.conv2d(planes, weight.view(n * c, 1, -1, 1), groups=n * c)
    return planes.view(n, c, h, w)
