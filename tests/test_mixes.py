"""kitlib.mixes: the label mass of mixed targets is the share of each image's own pixels (MixUp's weight, CutMix's box
after timm's area correction, FMix's mask mean); the per-batch probability, odd batches, the parameters' checks; the
mix's switch-off epochs in TrainConfig."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kitlib.mixes import BatchMix, SegmentationMix, check_mix, fmix_mask, make_mix, mix_targets
from kitlib.runtime import seed_everything
from kitlib.stages import TrainConfig

LABELS = torch.tensor([0, 1, 2, 3])  # distinct: each sample's own mass is readable from its row


def _images(n: int = 4, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _mixed(kind: str, seed: int, images: torch.Tensor | None = None, labels: torch.Tensor = LABELS, **kwargs):
    seed_everything(seed)
    images = _images() if images is None else images
    mixed, targets = BatchMix(kind, num_classes=5, prob=1.0, **kwargs)(images, labels)
    return images, mixed, targets


def test_mix_targets_by_hand():
    targets = mix_targets(torch.tensor([0, 1, 2]), 3, 0.7)
    expected = [[0.7, 0.0, 0.3], [0.0, 1.0, 0.0], [0.3, 0.0, 0.7]]  # the middle sample mixes with itself
    np.testing.assert_allclose(targets.numpy(), expected, atol=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_images_are_the_targets_weighted_sum(seed):
    images, mixed, targets = _mixed("mixup", seed)
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, atol=1e-6)
    for i in range(4):
        j = 3 - i
        assert targets[i, LABELS[i]].item() == lam and targets[i, LABELS[j]].item() == pytest.approx(1 - lam, abs=1e-6)
        np.testing.assert_allclose(mixed[i].numpy(), (lam * images[i] + (1 - lam) * images[j]).numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_box_area_is_one_minus_lambda(seed):
    """The pasted pixels form one box of area (1 - lambda) H W, lambda corrected by timm for boxes clipped at the
    border (some of these seeds clip)."""
    images, mixed, targets = _mixed("cutmix", seed)
    lam = targets[0, 0].item()
    pasted = (mixed[0] != images[0]).any(0)
    assert torch.equal(pasted, (mixed[0] == images[3]).all(0) & pasted)  # pasted pixels come from image 3
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    if len(rows):
        box = torch.zeros_like(pasted)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(pasted, box)  # one rectangle
    assert pasted.sum().item() == pytest.approx((1 - lam) * 16 * 24, abs=1e-4)
    assert torch.equal(mixed[1] != images[1], pasted.expand(3, -1, -1))  # the same box in every image


def test_fmix_mask_mean_is_lambda_and_low_frequency():
    seed_everything(0)
    for lam in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        mask = fmix_mask(lam, (32, 48))
        assert mask.shape == (32, 48) and mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.mean() == pytest.approx(round(lam * 32 * 48) / (32 * 48))
    # low frequencies: few neighbours differ (about half of them would in white noise thresholded at 1/2)
    mask = fmix_mask(0.5, (64, 64))
    assert (mask[:, 1:] != mask[:, :-1]).mean() < 0.1 and (mask[1:] != mask[:-1]).mean() < 0.1
    with pytest.raises(ValueError, match="lam must be in"):
        fmix_mask(1.5, (8, 8))
    with pytest.raises(ValueError, match="decay_power"):
        fmix_mask(0.5, (8, 8), decay_power=0)


@pytest.mark.parametrize("seed", range(5))
def test_fmix_share_of_own_pixels_is_the_label_mass(seed):
    images, mixed, targets = _mixed("fmix", seed)
    lam = targets[0, 0].item()
    own = (mixed[0] == images[0]).all(0) & (mixed[0] != images[3]).any(0)
    other = (mixed[0] == images[3]).all(0) & (mixed[0] != images[0]).any(0)
    assert int(own.sum()) + int(other.sum()) == 16 * 24  # every pixel comes from one of the two images
    assert own.float().mean().item() == pytest.approx(lam, abs=1e-6)


def test_mixup_cutmix_switches_per_batch():
    kinds = set()
    for seed in range(12):
        images, mixed, _ = _mixed("mixup_cutmix", seed)
        changed = (mixed[0] != images[0]).any(0).float().mean().item()
        kinds.add("mixup" if changed == 1.0 else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_probability_and_unmixed_batches():
    images = _images()
    never = BatchMix("cutmix", 5, prob=0.0)
    out = never(images, LABELS)
    assert out[0] is images and out[1] is LABELS  # unmixed: the batch as it came, int64 labels
    seed_everything(0)
    half = BatchMix("mixup", 5, prob=0.5)
    mixed = sum(half(images, LABELS)[1].is_floating_point() for _ in range(400))
    assert 160 < mixed < 240  # Binomial(400, 1/2)
    seed_everything(1)
    a = half(images, LABELS)[1]
    seed_everything(1)
    assert torch.equal(a, half(images, LABELS)[1])  # draws from the (per-epoch seeded) global state only


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "fmix"])
def test_odd_batch_middle_sample_keeps_its_image_and_label(kind):
    images, mixed, targets = _mixed(kind, 3, images=_images(n=3), labels=torch.tensor([0, 1, 2]))
    assert targets[1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(mixed[1].numpy(), images[1].numpy(), atol=1e-6)


def test_mix_checks_name_the_parameter():
    assert make_mix("none", 5) is None
    assert isinstance(make_mix("fmix", 5, 0.5, 2.0), BatchMix)
    with pytest.raises(ValueError, match=r"unknown mix 'cutmx'; options: \['none', 'mixup', 'cutmix', 'fmix'"):
        check_mix("cutmx", 0.5, 1.0)
    with pytest.raises(ValueError, match="mix_prob must be in"):
        make_mix("none", 5, prob=1.5)
    with pytest.raises(ValueError, match="mix_alpha must be > 0"):
        make_mix("mixup", 5, alpha=0.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_mix("mixup", 1)
    with pytest.raises(ValueError, match=r"int64 labels \(N,\) or float soft targets \(N, 5\) for 4 images"):
        BatchMix("mixup", 5)(_images(), torch.zeros(4, 3))  # soft rows of another width
    with pytest.raises(ValueError, match=r"for 4 images, got torch.float32 \(4,\)"):
        BatchMix("mixup", 5)(_images(), torch.zeros(4))


def test_train_config_mix_parameters():
    cfg = TrainConfig.from_notebook(preset="cassava", mix="cutmix", epochs=5, mix_off_epochs=2)
    assert (cfg.mix, cfg.mix_prob, cfg.mix_alpha, cfg.mix_epochs) == ("cutmix", 0.5, 1.0, 3)
    assert TrainConfig.from_notebook(preset="cassava").mix_epochs == 0  # the recipes mix nothing by default
    assert cfg.replace(smoke=True, mix_off_epochs=1).mix_epochs == 1  # a smoke run trains 2 epochs
    assert cfg.replace(smoke=True).mix_epochs == 0
    assert cfg.replace(mix_off_epochs=0).mix_epochs == 5
    assert cfg.run_id() != cfg.replace(mix="fmix").run_id()
    for bad, match in [
        ({"mix": "cutmx"}, "10_train: unknown mix 'cutmx'"),
        ({"mix_prob": 1.5}, "10_train: mix_prob must be in"),
        ({"mix_alpha": 0.0}, "10_train: mix_alpha must be > 0"),
        ({"mix_off_epochs": -1}, "10_train: mix_off_epochs must be >= 0"),
        ({"mix_off_epochs": 5}, "mix_off_epochs 5 leaves none of the 5 epochs mixed"),
    ]:
        with pytest.raises(ValueError, match=match):
            cfg.replace(**bad)
    with pytest.raises(ValueError, match="mix 'mixup' mixes labels; a multilabel segmentation task takes"):
        TrainConfig.from_notebook(preset="demo", mix="mixup")
    with pytest.raises(ValueError, match="mix 'copy_paste' pastes segmentation objects"):
        cfg.replace(mix="copy_paste")


def _seg_batch(multiclass: bool, n: int = 4, h: int = 16, w: int = 20):
    """Images whose first channel encodes the class of each pixel (class c -> value c), so the masks must follow."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n, h, w), generator=g)
    images = torch.stack([labels.float(), torch.rand(n, h, w, generator=g), torch.rand(n, h, w, generator=g)], 1)
    masks = labels if multiclass else F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    return images, masks


@pytest.mark.parametrize("multiclass", [True, False])
@pytest.mark.parametrize("kind", ["cutmix", "copy_paste"])
def test_segmentation_mixes_keep_images_and_masks_aligned(kind, multiclass):
    """After either mix, every pixel's label is still the class its image encodes, and pixels came from the image
    itself or from its partner (N-1-i) at the same place."""
    seed_everything(3)
    images, masks = _seg_batch(multiclass)
    classes = [2, 3] if kind == "copy_paste" else None
    mixed, mixed_masks = SegmentationMix(kind, multiclass, classes=classes)(images, masks)
    labels = mixed_masks if multiclass else mixed_masks.argmax(1)
    assert torch.equal(mixed[:, 0].long(), labels)
    own, partner = (mixed == images).all(1), (mixed == images.flip(0)).all(1)
    assert (own | partner).all() and (~own).any()
    if kind == "copy_paste":  # exactly the partner's pixels of classes 2 and 3 were pasted
        source = images.flip(0)[:, 0].long()
        assert torch.equal(torch.where(torch.isin(source, torch.tensor([2, 3])), source, images[:, 0].long()), labels)


def test_cutmix_box_of_masks_by_hand():
    """CutMix pastes one box of the partner's image and masks: nothing changes outside it."""
    seed_everything(0)
    images, masks = _seg_batch(True, n=2)
    mixed, mixed_masks = SegmentationMix("cutmix", True)(images, masks)
    changed = (mixed != images).any(1)[0] | (mixed_masks != masks)[0]
    ys, xs = torch.nonzero((mixed == images.flip(0)).all(1)[0] & ~(images == images.flip(0)).all(1)[0], as_tuple=True)
    assert changed.any() and ys.numel()
    box = torch.zeros_like(changed)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert not (changed & ~box).any()  # nothing changed outside one box


def test_segmentation_mix_checks():
    images, masks = _seg_batch(True)
    with pytest.raises(ValueError, match="does not mix segmentation masks"):
        SegmentationMix("mixup", True)
    with pytest.raises(ValueError, match=r"do not fit images"):
        SegmentationMix("cutmix", False)(images, masks)
    assert SegmentationMix("copy_paste", True, prob=0.0)(images, masks)[1] is masks  # not mixed: the inputs
    with pytest.raises(ValueError, match="BatchMix mixes classification batches, not 'copy_paste'"):
        BatchMix("copy_paste", 5)


def test_train_config_segmentation_mix_and_oversampling():
    cfg = TrainConfig.from_notebook(preset="coco", mix="copy_paste", mix_classes=["Battery", "Clothing"],
                                    oversample_classes=["Battery"], oversample_factor=3.0)  # fmt: skip
    assert cfg.mix_epochs == cfg.n_epochs and cfg.preset.class_indices(cfg.mix_classes) == [
        cfg.preset.classes.index("Battery"), cfg.preset.classes.index("Clothing")]  # fmt: skip
    for bad, match in [({"mix_classes": ["Batery"]}, "mix_classes: preset 'coco': unknown class 'Batery'"),
                       ({"oversample_classes": [0]}, "oversample_classes: .* is the background"),
                       ({"oversample_factor": 0.0}, "oversample_factor must be > 0"),
                       ({"mix": "fmix"}, "mix 'fmix' mixes labels")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            cfg.replace(**bad)
