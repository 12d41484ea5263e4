"""HRNet + OCR: an object-contextual head on timm's HRNet features, and its auxiliary (soft object region) loss.

Yuan, Chen, Wang 2020, "Object-Contextual Representations for Semantic Segmentation" (ECCV 2020, arXiv:1909.11065),
the head of the official code (HRNet/HRNet-Semantic-Segmentation, branch ``HRNet-OCR``, ``lib/models/seg_hrnet_ocr.py``:
``SpatialGather_Module``, ``_ObjectAttentionBlock``, ``SpatialOCR_Module``). The trash-sorting contest's best single
model was HRNet-W48 + OCR.

- Backbone: ``timm.create_model(<hrnet>, features_only=True, feature_location="", out_indices=(1, 2, 3, 4))``: the
  four parallel branches of the last stage at strides 4, 8, 16, 32 (for ``hrnet_w18_small`` 16, 32, 64, 128 channels;
  ``hrnet_w18`` 18, 36, 72, 144), before timm's classification "incre" modules. As in the paper they are upsampled to
  stride 4 and concatenated.
- Soft object regions: an auxiliary head (1x1 conv, BN, ReLU, 1x1 conv) gives class logits at stride 4; their spatial
  softmax weights the pixels of each object region (``SpatialGather``).
- Object region representations: the per-class weighted sums of the pixel features (``SpatialGather``).
- Pixel-region relation and the augmented representation: attention of each pixel on the K region representations
  (``ObjectAttention``), its context concatenated with the pixel's own features, 1x1 conv, BN, ReLU, dropout 0.05
  (``SpatialOCR``), then the classifier.
- ``AuxSegLoss``: the main loss on the final logits plus ``aux_weight`` (0.4 in the paper) times the same loss on the
  soft object region logits.

``HRNetOCR`` takes smp's constructor words so that ``kitlib.models.create_model("hrnet_ocr", "tu-hrnet_w18_small",
...)`` builds it like any smp architecture (weights names, local weights files into ``model.encoder``, checkpoints).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AuxSegLoss", "HRNetOCR", "ObjectAttention", "SpatialGather", "SpatialOCR", "OCR_AUX_WEIGHT"]

#: Weight of the soft-object-region loss in the paper (Section 3.3, "Loss function": lambda = 0.4).
OCR_AUX_WEIGHT = 0.4


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SpatialGather(nn.Module):
    """Object region representations: for each class k, the pixel features weighted by the spatial softmax of the
    soft object region logits of k (the paper's Eq. 2; ``SpatialGather_Module`` of the official code, scale 1).

    Shape:
        feats: (N, C, H, W); region_logits: (N, K, H, W) -> (N, C, K, 1).
    """

    def forward(self, feats: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
        n, k = region_logits.shape[:2]
        weights = F.softmax(region_logits.reshape(n, k, -1), dim=2)  # (N, K, HW), sums to 1 over the pixels
        regions = torch.bmm(weights, feats.reshape(n, feats.size(1), -1).transpose(1, 2))  # (N, K, C)
        return regions.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Pixel-region relation and the object contextual representation (the paper's Eq. 3 and 4;
    ``_ObjectAttentionBlock``): queries from the pixels, keys and values from the region representations, scaled
    dot-product softmax over the K regions.

    Args:
        in_channels: C of the pixel and region features.
        key_channels: channels of the queries, keys and values (256 in the paper).
    Shape:
        feats: (N, C, H, W); regions: (N, C, K, 1) -> (N, C, H, W).
    """

    def __init__(self, in_channels: int, key_channels: int):
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(
            _conv_bn_relu(in_channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.f_object = nn.Sequential(
            _conv_bn_relu(in_channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.f_down = _conv_bn_relu(in_channels, key_channels)
        self.f_up = _conv_bn_relu(key_channels, in_channels)

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feats.shape
        query = self.f_pixel(feats).reshape(n, self.key_channels, -1).transpose(1, 2)  # (N, HW, Ck)
        key = self.f_object(regions).reshape(n, self.key_channels, -1)  # (N, Ck, K)
        value = self.f_down(regions).reshape(n, self.key_channels, -1).transpose(1, 2)  # (N, K, Ck)
        relation = F.softmax(torch.bmm(query, key) * self.key_channels**-0.5, dim=-1)  # (N, HW, K)
        context = torch.bmm(relation, value).transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """The augmented representation: the object context concatenated with the pixel features, 1x1 conv, BN, ReLU,
    dropout (the paper's Eq. 1; ``SpatialOCR_Module``).

    Args:
        in_channels, key_channels: as ``ObjectAttention``.
        out_channels: channels of the augmented representation (512 in the paper).
        dropout: dropout probability (0.05 in the official code).
    Shape:
        feats: (N, C, H, W); regions: (N, C, K, 1) -> (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05):
        super().__init__()
        self.attention = ObjectAttention(in_channels, key_channels)
        self.fuse = nn.Sequential(_conv_bn_relu(2 * in_channels, out_channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.attention(feats, regions), feats], dim=1))


class HRNetOCR(nn.Module):
    """HRNet features with the OCR head (module docstring); returns logits at the input resolution.

    Built through ``kitlib.models.create_model(arch="hrnet_ocr", encoder_name="tu-hrnet_w18_small", classes=K)``,
    which resolves weights names (offline checks) and loads local weights files into ``model.encoder``; the keywords
    are smp's so that the same checks and checkpoints apply.

    Args:
        encoder_name: ``"tu-" + <timm HRNet name>`` (``hrnet_w18_small``, ``hrnet_w18``, ``hrnet_w48``, ...),
            optionally with a pretrained tag.
        encoder_weights: None (random init) or a weights name already checked by ``create_model`` (timm then loads
            the tagged weights of ``encoder_name``).
        in_channels: input image channels.
        classes: K, logits per pixel.
        activation: must be None (logits).
        aux_params: must be None: no image-level classification head.
        ocr_mid_channels: channels of the pixel representation fed to OCR (512 in the paper).
        ocr_key_channels: channels of the attention (256 in the paper).
        ocr_dropout: dropout of the augmented representation (0.05).
        aux_weight: weight of the soft-object-region loss that ``kitlib.train.build_loss`` adds
            (``AuxSegLoss``; 0.4 in the paper); 0 trains the main logits alone.
        **encoder_kwargs: other ``timm.create_model`` keywords (``drop_path_rate`` is not used by HRNet).
    Shape:
        x: (N, in_channels, H, W) float32, H and W divisible by 32 (HRNet fuses its branches by 2x steps).
        Returns in eval mode logits (N, K, H, W); in train mode ``(logits, aux_logits)``, both (N, K, H, W), the
        second the soft object regions (bilinear from stride 4, like the main logits).
    Raises:
        ValueError: an encoder that is not a timm HRNet; ``activation`` or ``aux_params`` set.
    """

    def __init__(
        self,
        encoder_name: str = "tu-hrnet_w18_small",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | None = None,
        aux_params: dict[str, Any] | None = None,
        ocr_mid_channels: int = 512,
        ocr_key_channels: int = 256,
        ocr_dropout: float = 0.05,
        aux_weight: float = OCR_AUX_WEIGHT,
        **encoder_kwargs: Any,
    ):
        super().__init__()
        timm_name = encoder_name[3:] if encoder_name.startswith("tu-") else ""
        if not timm_name.startswith("hrnet"):
            raise ValueError(f"hrnet_ocr needs a timm HRNet encoder ('tu-hrnet_w18_small', ...), got {encoder_name!r}")
        if activation is not None or aux_params is not None:
            raise ValueError("hrnet_ocr returns logits and has no classification head: activation=None, aux_head=False")
        self.encoder = timm.create_model(
            timm_name, pretrained=encoder_weights is not None, features_only=True, feature_location="",
            out_indices=(1, 2, 3, 4), in_chans=in_channels, **encoder_kwargs,
        )  # fmt: skip
        channels = sum(self.encoder.feature_info.channels())
        self.aux_weight = float(aux_weight)
        self.aux_head = nn.Sequential(_conv_bn_relu(channels, channels), nn.Conv2d(channels, classes, 1))
        self.pixel_head = _conv_bn_relu(channels, ocr_mid_channels, 3)
        self.gather = SpatialGather()
        self.ocr = SpatialOCR(ocr_mid_channels, ocr_key_channels, ocr_mid_channels, ocr_dropout)
        self.classifier = nn.Conv2d(ocr_mid_channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        size = features[0].shape[-2:]
        feats = torch.cat(
            [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
            dim=1,
        )
        aux_logits = self.aux_head(feats)
        pixels = self.pixel_head(feats)
        augmented = self.ocr(pixels, self.gather(pixels, aux_logits))
        logits = F.interpolate(self.classifier(augmented), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if not self.training:
            return logits
        return logits, F.interpolate(aux_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class AuxSegLoss(nn.Module):
    """A segmentation loss on the main logits plus a weighted copy of it on auxiliary logits of the same shape
    (deep supervision; OCR's soft object regions, Yuan et al. 2020: ``loss = l(main) + 0.4 * l(aux)``; the paper uses
    cross-entropy for both, here the run's own loss).

        loss = mask_loss(logits, masks) + aux_weight * mask_loss(aux_logits, masks)

    Args:
        mask_loss: any loss of (logits, masks).
        aux_weight: weight of the auxiliary term, >= 0.
    Attributes:
        last_values: "main" and (when aux logits were given) "aux", unweighted, detached.
    Shape:
        logits, aux_logits: (N, K, H, W); aux_logits may be None (eval mode: the main loss alone).
        masks: what ``mask_loss`` takes.
    Raises:
        ValueError: a negative ``aux_weight``; aux logits of another shape than the logits.
    """

    def __init__(self, mask_loss: nn.Module, aux_weight: float = OCR_AUX_WEIGHT):
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.mask_loss, self.aux_weight = mask_loss, float(aux_weight)
        self.last_values: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, aux_logits: torch.Tensor | None, masks: torch.Tensor) -> torch.Tensor:
        loss = self.mask_loss(logits, masks)
        self.last_values = {"main": loss.detach()}
        if aux_logits is None:
            return loss
        if aux_logits.shape != logits.shape:
            raise ValueError(f"aux_logits {tuple(aux_logits.shape)} must have the logits' shape {tuple(logits.shape)}")
        aux = self.mask_loss(aux_logits, masks)
        self.last_values["aux"] = aux.detach()
        return loss + self.aux_weight * aux

    def extra_repr(self) -> str:
        return f"aux_weight={self.aux_weight}"
