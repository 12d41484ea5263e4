"""Training recipes as data: what each competition's winners trained, and the kit's defaults under them.

``kitlib.stages.TrainConfig`` resolves a training run in layers, each one overriding the one before:

1. ``DEFAULT_RECIPE``: a value for every training parameter that 10_train leaves at None;
2. ``TRAIN_RECIPES[preset.name]``: the preset's recipe, with its source in ``recipe_source``;
3. ``PRESENCE_RECIPE`` when the model is a presence classifier (``kitlib.presets.model_preset``);
4. the notebook's parameters that are not None.

The vocabularies the training loop understands (``SCHEDULERS``, ``AMP_MODES``, ``OOF_DTYPES``) live here too, so a
config is checked without importing torch.
"""

from __future__ import annotations

from typing import Any

from kitlib.presets import Preset

__all__ = [
    "AMP_MODES",
    "DEFAULT_RECIPE",
    "OOF_DTYPES",
    "PRESENCE_RECIPE",
    "SCHEDULERS",
    "TRAIN_RECIPES",
    "recipe_for",
]

#: ``kitlib.optim.make_scheduler`` names.
SCHEDULERS = ("onecycle", "cosine", "constant")
#: ``kitlib.runtime.resolve_amp`` modes.
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: dtypes of a segmentation fold's ``oof_probs.npy``.
OOF_DTYPES = ("uint8", "float16", "float32")

#: The value of every training parameter that neither the preset's recipe nor the notebook sets.
DEFAULT_RECIPE: dict[str, Any] = dict(
    arch="unet",
    encoder_name="resnet34",
    model_name="resnet34",
    encoder_weights=None,
    aux_head=False,
    dropout=0.0,
    model_kwargs={},
    height=256,
    width=256,
    crop_height=0,
    crop_width=0,
    batch_size=8,
    epochs=10,
    encoder_lr=2.5e-5,
    decoder_lr=2.5e-4,
    weight_decay=0.01,
    scheduler="onecycle",
    warmup_epochs=0.0,
    pct_start=0.3,
    loss="clouds_6th",
    loss_kwargs={},
    accumulate=1,
    clip_grad_norm=0.0,
    amp="auto",
    channels_last=False,
    ema_decay=0.0,
    augment="light",
    monitor="",
    patience=0,
    num_workers=0,
    cache=True,
    oof_dtype="uint8",
)

# Each preset's default recipe: what its winners trained (with pretrained encoders, which a Kaggle kernel attaches
# as files), and, for the real-data check and the demo, recipes that train from scratch on a CPU in minutes.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "clouds": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        aux_head=True,
        height=320,
        width=480,
        batch_size=16,
        epochs=20,
        encoder_lr=2.5e-5,
        decoder_lr=2.5e-4,
        weight_decay=0.01,
        scheduler="onecycle",
        loss="clouds_1st",
        amp="auto",
        channels_last=True,
        recipe_source="Understanding Clouds 1st place (pudae): Unet with a classification head, BCE 0.75 + Dice 0.25 "
        "on masks + 0.1 BCE on the head, AdamW wd 0.01, encoder lr 2.5e-5 / decoder 2.5e-4, OneCycle; resnet34 and "
        "320x480 are the kit's defaults (the winners used several encoders at 384x576 and 320x640).",
    ),
    "severstal": dict(
        arch="unet",
        encoder_name="resnet34",
        encoder_weights="imagenet",
        height=256,
        width=1600,
        batch_size=8,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="clouds_6th",
        channels_last=True,
        recipe_source="Severstal top solutions: Unet resnet34 at full 256x1600, BCE + Dice.",
    ),
    "dacon_building": dict(
        arch="upernet",
        encoder_name="resnet50",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=8,
        epochs=20,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="building_bce",
        channels_last=True,
        recipe_source="Dacon building contest: UPerNet, BCE; resnet50 and 512x512 crops are the kit's defaults.",
    ),
    "coco": dict(
        arch="unetplusplus",
        encoder_name="efficientnet-b3",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=8,
        epochs=30,
        encoder_lr=1e-4,
        decoder_lr=1e-3,
        loss="trash_ce_dice",
        channels_last=True,
        recipe_source="Trash-sorting contest: Unet++ EfficientNet-B3 at 512x512, CE + Dice.",
    ),
    "cassava": dict(
        model_name="tf_efficientnet_b4.ns_jft_in1k",
        encoder_weights="imagenet",
        height=512,
        width=512,
        batch_size=16,
        epochs=10,
        encoder_lr=1e-4,
        decoder_lr=1e-4,
        weight_decay=1e-6,
        scheduler="cosine",
        warmup_epochs=1,
        loss="ce",
        loss_kwargs={"label_smoothing": 0.1},
        channels_last=True,
        recipe_source="Cassava top solutions: EfficientNet-B4 Noisy Student at 512, CE with label smoothing 0.1, "
        "cosine schedule with warmup.",
    ),
    "masks": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=256,
        width=256,
        batch_size=4,
        epochs=30,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        scheduler="onecycle",
        loss="bce",
        augment="flips",
        monitor="valid_pixel_error",
        recipe_source="ISBI 2012 membranes on a CPU: pixel-wise cross-entropy as in U-Net (Ronneberger et al. 2015), "
        "who trained from scratch with flips and elastic deformation at full resolution; here a slim Unet-resnet18 "
        "from scratch at half resolution (256x256), flips, OneCycle at 3e-3, 30 epochs: about 95 s a fold on 2 "
        "CPU cores. The best epoch is picked on validation pixel error.",
    ),
    "demo": dict(
        arch="unet",
        encoder_name="resnet18",
        encoder_weights=None,
        aux_head=True,
        model_kwargs={"decoder_channels": [128, 64, 32, 16, 8]},
        height=128,
        width=192,
        batch_size=8,
        epochs=8,
        encoder_lr=3e-3,
        decoder_lr=3e-3,
        weight_decay=1e-4,
        loss="clouds_1st",
        augment="flips",
        recipe_source="The demo: the Understanding Clouds 1st-place loss and head on a slim Unet from scratch.",
    ),
}

# What a presence classifier changes in a segmentation preset's recipe: a timm classifier (the recipe's encoder when
# timm knows it, else resnet34), plain BCE per class, no decoder settings, the best epoch on the loss.
PRESENCE_RECIPE: dict[str, Any] = dict(
    aux_head=False,
    model_kwargs={},
    loss="bce",
    loss_kwargs={},
    monitor="valid_loss",
    recipe_source="Presence classifier (Severstal top solutions: a multilabel classifier gates the masks): one "
    "sigmoid per class, BCE on whether the class has any pixel, the segmentation recipe's size and schedule.",
)


def recipe_for(preset: Preset, model_preset: Preset) -> tuple[dict[str, Any], str]:
    """The training values of layers 1-3 (module docstring) and where they come from.

    Args:
        preset: the competition.
        model_preset: what the model learns: ``preset``, or its presence task (``kitlib.presets.model_preset``).
    Returns:
        ``(values, recipe_source)``: every training parameter's value before the notebook's own.
    """
    recipe = {**DEFAULT_RECIPE, **TRAIN_RECIPES.get(preset.name, {})}
    if model_preset.task == "presence":
        import timm

        encoder = str(recipe.get("encoder_name", ""))
        recipe.update(PRESENCE_RECIPE, model_name=encoder if timm.is_model(encoder) else "resnet34")
    source = str(recipe.pop("recipe_source", "the kit's defaults (kitlib.recipes.DEFAULT_RECIPE)"))
    return recipe, source
