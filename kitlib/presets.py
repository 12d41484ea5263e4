"""Competition presets: each competition's conventions as data, not code paths.

A preset says what kind of task a competition is, how its labels are stored, how its RLE is ordered,
what an empty mask looks like in a submission, at which resolution it is scored and with which metric.
Code that needs a competition-specific behaviour reads a field here; nothing branches on a preset's name.

The label formats name loaders in ``kitlib.formats.LOADERS``:

- ``image_label_csv``: long CSV ``Image_Label,EncodedPixels`` with ``<image>_<class>`` keys (Understanding Clouds).
- ``class_id_csv``: ``ImageId,ClassId,EncodedPixels``, one row per non-empty (image, class) (Severstal).
- ``img_rle_csv``: ``img_id,img_path,mask_rle``, one binary mask per image (Dacon building).
- ``mask_folder``: ``train/image/*`` with masks of the same name in ``train/label/*`` (ISBI 2012, Carvana).
- ``coco_json``: a COCO instance file whose polygons become a multiclass semantic mask (trash sorting).
- ``label_csv``: ``image_id,label`` image classification (Cassava).

A user's own competition is a preset file (``get_preset("path/to/competition.yaml")``, ``load_preset_file``): a YAML
mapping of the ``Preset`` fields, checked field by field (an unknown field names its close matches, a wrong value
names the field, the value and the file). Its ``classes`` may be left out for ``coco_json``: the stage configs read
them from the label file (``kitlib.formats.with_label_classes``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kitlib._private import lookup
from kitlib.io import project_path
from kitlib.params import ParameterError, canonical_type, check_value

__all__ = [
    "Preset",
    "PRESETS",
    "PRESENCE_ARCH",
    "IGNORE_INDEX",
    "PRESET_FILE_SUFFIXES",
    "PresetFileError",
    "get_preset",
    "is_preset_file",
    "load_preset_file",
    "model_preset",
    "preset_fields",
    "preset_file_digest",
    "preset_from_fields",
    "TASKS",
    "LABEL_FORMATS",
    "SUBMISSION_FORMATS",
]

#: "presence" is derived, never a competition's own task: ``Preset.presence()``.
TASKS = ("binary", "multilabel", "multiclass", "classification", "presence")
LABEL_FORMATS = ("image_label_csv", "class_id_csv", "img_rle_csv", "mask_folder", "coco_json", "label_csv")
SUBMISSION_FORMATS = ("rle", "class_ids", "label")

Task = Literal["binary", "multilabel", "multiclass", "classification", "presence"]
#: ``arch`` of a presence classifier (``10_train -p arch classifier`` on a binary/multilabel preset): a timm
#: classifier with one sigmoid per class whose probabilities gate another experiment's masks.
PRESENCE_ARCH = "classifier"
#: The mask value of a pixel the loss ignores (pseudo masks' low-confidence pixels, ``kitlib.pseudo``): no class takes
#: it (multiclass masks hold class indices < 255, binary / multilabel masks {0, 1}); ``kitlib.pseudo.ignore_pixels``
#: cuts those pixels out of every loss's gradient.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Preset:
    """One competition's conventions.

    Attributes:
        name: key in ``PRESETS``.
        task: "binary" (one foreground class), "multilabel" (K independent masks, may overlap),
            "multiclass" (one class per pixel; ``classes[0]`` is the background) or "classification"; "presence"
            (which of the K classes of a binary/multilabel preset's masks have any pixel: image-level multilabel
            classification) only in a preset derived with ``presence()``.
        classes: class names in the competition's order. Multiclass presets list the background first. Empty only
            in a preset file of a ``coco_json`` competition, until the stage configs read the classes from its label
            file (``kitlib.formats.with_label_classes``).
        label_format: key of the loader in ``kitlib.formats.LOADERS``.
        label_file: train label file or folder, relative to the data folder (a parameter of
            ``load_competition``; this is the competition's own name).
        image_dir: train image folder, relative to the data folder.
        test_image_dir: test image folder, relative to the data folder.
        test_file: file that lists the test images (CSV or COCO json) when the competition ships one;
            None to take the ids from ``sample_submission`` or, failing that, the test folder listing.
        sample_submission: sample submission file, relative to the data folder; None when there is none.
        rle_order: "F" column-major (Understanding Clouds, Severstal) or "C" row-major (Dacon, Carvana).
        empty_token: what a submission writes for an empty mask ("" on Kaggle, "-1" on Dacon).
        submission_size: (height, width) in pixels at which the competition scores masks; None when
            every test image is scored at its own size.
        image_size: (height, width) in pixels of every train and test image where the competition ships one size
            (Understanding Clouds 1400 x 2100, Severstal 256 x 1600); ``kitlib.formats.load_competition`` refuses an
            image of another size, naming the file (a swapped width and height decodes an RLE of the same pixel count
            in the wrong shape, which nothing else can see). None: images of any size.
        submission_format: "rle" (one RLE per image and class), "class_ids" (a flattened map of class
            indices per image, trash contest) or "label" (one class label per image).
        submission_columns: header of the submission CSV, in the competition's order.
        metric: name of the competition metric (``kitlib.metrics``): "dice", "miou", "accuracy".
        dice_empty_score: Dice of an (image, class) pair whose truth and prediction are both empty: 1.0 on Kaggle
            (Understanding Clouds, Severstal); None where the scorer leaves such pairs out of the mean (the Dacon
            building contest's ``calculate_dice_scores`` returns None for them). ``kitlib.metrics`` ``empty_score``.
        mask_suffix: for ``mask_folder``: mask file name = image stem + suffix + extension; "" when the mask
            has the image's own name (ISBI). Carvana uses "_mask" and ``mask_ext`` ".gif".
        mask_ext: for ``mask_folder``: mask file extension; "" = the image's own extension.
        image_exts: file extensions that count as images when a folder is listed.
        description: one line for humans.
        source_task: for task "presence" only: the binary/multilabel task whose masks give the labels (set by
            ``presence()``).
    """

    name: str
    task: Task
    classes: tuple[str, ...]
    label_format: str
    label_file: str
    image_dir: str
    test_image_dir: str
    sample_submission: str | None
    submission_columns: tuple[str, ...]
    metric: str
    rle_order: Literal["F", "C"] = "F"
    empty_token: str = ""
    submission_size: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None
    submission_format: Literal["rle", "class_ids", "label"] = "rle"
    dice_empty_score: float | None = 1.0
    test_file: str | None = None
    mask_suffix: str = ""
    mask_ext: str = ""
    image_exts: tuple[str, ...] = field(default=(".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"))
    description: str = ""
    source_task: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"preset {self.name!r}: task {self.task!r} not in {TASKS}")
        if self.label_format not in LABEL_FORMATS:
            raise ValueError(f"preset {self.name!r}: label_format {self.label_format!r} not in {LABEL_FORMATS}")
        if self.rle_order not in ("F", "C"):
            raise ValueError(f"preset {self.name!r}: rle_order must be 'F' or 'C', got {self.rle_order!r}")
        if self.submission_format not in SUBMISSION_FORMATS:
            raise ValueError(f"preset {self.name!r}: submission_format {self.submission_format!r} not in "
                             f"{SUBMISSION_FORMATS}")  # fmt: skip
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"preset {self.name!r}: class names repeat: {list(self.classes)}")
        if not self.classes and self.label_format == "coco_json":
            return  # a preset file's: the classes come from the label file (kitlib.formats.with_label_classes)
        if self.task == "binary" and len(self.classes) != 1:
            raise ValueError(f"preset {self.name!r}: a binary task has exactly one class, got {self.classes}")
        if self.task == "multiclass" and len(self.classes) < 2:
            raise ValueError(f"preset {self.name!r}: multiclass needs the background plus at least one class")
        if (self.task == "presence") != (self.source_task in ("binary", "multilabel")):
            raise ValueError(
                f"preset {self.name!r}: task 'presence' comes with a binary/multilabel source_task (from "
                f"Preset.presence()), got task {self.task!r}, source_task {self.source_task!r}"
            )

    @property
    def is_segmentation(self) -> bool:
        """True for binary, multilabel and multiclass segmentation: the model predicts masks."""
        return self.task in ("binary", "multilabel", "multiclass")

    @property
    def has_masks(self) -> bool:
        """True when the labels are masks: segmentation, and the presence task (labels read off the masks)."""
        return self.is_segmentation or self.task == "presence"

    @property
    def mask_task(self) -> str | None:
        """The task of the label masks: ``task`` for segmentation, ``source_task`` for presence, None otherwise
        (the ``mode`` of segmentation losses)."""
        return self.source_task if self.task == "presence" else self.task if self.is_segmentation else None

    @property
    def activation(self) -> str:
        """How logits become probabilities: "sigmoid" (independent masks or classes: binary, multilabel, presence) or
        "softmax" over the class axis (multiclass, classification)."""
        return "sigmoid" if self.task in ("binary", "multilabel", "presence") else "softmax"

    def presence(self) -> Preset:
        """The presence task of this binary/multilabel preset: image-level labels, one per target class, 1 where the
        class has any pixel (a presence classifier that gates another experiment's masks; Severstal top solutions).

        Raises:
            ValueError: a multiclass or classification preset (the message names it).
        """
        if self.task not in ("binary", "multilabel"):
            raise ValueError(f"a presence classifier (arch={PRESENCE_ARCH!r}) needs a binary/multilabel preset, "
                             f"not {self.name!r} ({self.task})")  # fmt: skip
        return dataclasses.replace(self, task="presence", source_task=self.task)

    def masks_preset(self) -> Preset:
        """The segmentation preset whose masks give this preset's labels: itself, or a presence task's source."""
        return dataclasses.replace(self, task=self.source_task, source_task=None) if self.task == "presence" else self

    @property
    def target_classes(self) -> tuple[str, ...]:
        """Classes that get a target column / mask channel: every class but a multiclass background."""
        return self.classes[1:] if self.task == "multiclass" else self.classes

    @property
    def num_classes(self) -> int:
        """Number of model output channels: K masks (binary 1, multilabel K), C classes (multiclass,
        background included) or C logits (classification)."""
        return len(self.classes)

    def class_indices(self, items: list[str | int] | tuple[str | int, ...]) -> list[int]:
        """Class names or indices into ``classes`` as indices: a multiclass mask's values (the background is 0), a
        binary/multilabel mask's channels. Used by copy-paste (``mix_classes``) and oversampling
        (``oversample_classes``).

        Raises:
            ValueError: an unknown name, an index outside 0..len(classes)-1, or a multiclass background (named).
        """
        out = []
        for item in items:
            if isinstance(item, str):
                if item not in self.classes:
                    raise ValueError(f"preset {self.name!r}: unknown class {item!r}; classes: {list(self.classes)}")
                index = self.classes.index(item)
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(self.classes):
                index = item
            else:
                raise ValueError(f"preset {self.name!r}: class {item!r} is not a name or an index in 0.."
                                 f"{len(self.classes) - 1}")  # fmt: skip
            if self.task == "multiclass" and index == 0:
                raise ValueError(f"preset {self.name!r}: {self.classes[0]!r} is the background, not an object class")
            out.append(index)
        return out

    def replace(self, **changes) -> Preset:
        """A copy with some fields changed, e.g. ``get_preset("masks").replace(mask_suffix="_mask")``.

        Raises:
            TypeError: a field name that does not exist.
        """
        return dataclasses.replace(self, **changes)


_CLOUDS_CLASSES = ("Fish", "Flower", "Gravel", "Sugar")
# Class order of the trash-sorting contest (boostcamp AI Tech, recycling semantic segmentation): pixel
# value = index in this list, the background first. The contest's baseline lists ``category_names = ['Backgroud',
# 'UNKNOWN', 'General trash', ..., 'Clothing']`` and paints ``category_names.index(name)``: its COCO categories
# (ids 0..10, UNKNOWN first) map by name to 1..11.
_TRASH_CLASSES = (
    "Background", "UNKNOWN", "General trash", "Paper", "Paper pack", "Metal", "Glass",
    "Plastic", "Styrofoam", "Plastic bag", "Battery", "Clothing",
)  # fmt: skip
_CASSAVA_CLASSES = (
    "Cassava Bacterial Blight (CBB)", "Cassava Brown Streak Disease (CBSD)", "Cassava Green Mottle (CGM)",
    "Cassava Mosaic Disease (CMD)", "Healthy",
)  # fmt: skip

PRESETS: dict[str, Preset] = {
    "clouds": Preset(
        name="clouds",
        task="multilabel",
        classes=_CLOUDS_CLASSES,
        label_format="image_label_csv",
        label_file="train.csv",
        image_dir="train_images",
        test_image_dir="test_images",
        sample_submission="sample_submission.csv",
        submission_columns=("Image_Label", "EncodedPixels"),
        metric="dice",
        rle_order="F",
        empty_token="",
        submission_size=(350, 525),
        image_size=(1400, 2100),
        description="Kaggle Understanding Clouds from Satellite Images (2019): 4 cloud patterns, 1400x2100, "
        "scored at 350x525",
    ),
    "severstal": Preset(
        name="severstal",
        task="multilabel",
        classes=("1", "2", "3", "4"),
        label_format="class_id_csv",
        label_file="train.csv",
        image_dir="train_images",
        test_image_dir="test_images",
        sample_submission="sample_submission.csv",
        submission_columns=("ImageId", "EncodedPixels", "ClassId"),
        metric="dice",
        rle_order="F",
        empty_token="",
        image_size=(256, 1600),
        description="Kaggle Severstal Steel Defect Detection (2019): 4 defect classes, 256x1600",
    ),
    "dacon_building": Preset(
        name="dacon_building",
        task="binary",
        classes=("building",),
        label_format="img_rle_csv",
        label_file="train.csv",
        image_dir="train_img",
        test_image_dir="test_img",
        test_file="test.csv",
        sample_submission="sample_submission.csv",
        submission_columns=("img_id", "mask_rle"),
        metric="dice",
        dice_empty_score=None,
        rle_order="C",
        empty_token="-1",
        description="Dacon satellite building segmentation (2023): 1024x1024 train, 224x224 test, row-major RLE",
    ),
    "masks": Preset(
        name="masks",
        task="binary",
        classes=("foreground",),
        label_format="mask_folder",
        label_file="train/label",
        image_dir="train/image",
        test_image_dir="test",
        sample_submission=None,
        submission_columns=("img", "rle_mask"),
        metric="dice",
        rle_order="C",
        empty_token="",
        description="Generic image folder + mask folder (ISBI 2012 membranes, Carvana): mask > 127 = foreground",
    ),
    "coco": Preset(
        name="coco",
        task="multiclass",
        classes=_TRASH_CLASSES,
        label_format="coco_json",
        label_file="train.json",
        image_dir=".",
        test_image_dir=".",
        test_file="test.json",
        sample_submission="sample_submission.csv",
        submission_columns=("image_id", "PredictionString"),
        metric="miou",
        rle_order="C",
        submission_size=(256, 256),
        submission_format="class_ids",
        description="COCO instance labels -> multiclass semantic masks (trash-sorting contest, 12 classes with the "
        "background and UNKNOWN, mIoU)",
    ),
    "cassava": Preset(
        name="cassava",
        task="classification",
        classes=_CASSAVA_CLASSES,
        label_format="label_csv",
        label_file="train.csv",
        image_dir="train_images",
        test_image_dir="test_images",
        sample_submission="sample_submission.csv",
        submission_columns=("image_id", "label"),
        metric="accuracy",
        submission_format="label",
        description="Kaggle Cassava Leaf Disease Classification (2020): 5 classes, 800x600, accuracy",
    ),
    "demo": Preset(
        name="demo",
        task="multilabel",
        classes=("Stripes", "Dots", "Checker", "Blob"),
        label_format="image_label_csv",
        label_file="train.csv",
        image_dir="train_images",
        test_image_dir="test_images",
        sample_submission="sample_submission.csv",
        submission_columns=("Image_Label", "EncodedPixels"),
        metric="dice",
        rle_order="F",
        empty_token="",
        submission_size=(64, 96),
        description="Synthetic competition in the Understanding Clouds layout (kitlib.demo), 128x192, scored at 64x96",
    ),
    "demo_classify": Preset(
        name="demo_classify",
        task="classification",
        classes=("Stripes", "Dots", "Checker", "Blob", "Plain"),
        label_format="label_csv",
        label_file="train.csv",
        image_dir="train_images",
        test_image_dir="test_images",
        sample_submission="sample_submission.csv",
        submission_columns=("image_id", "label"),
        metric="accuracy",
        submission_format="label",
        description="Synthetic image classification in the Cassava layout (kitlib.demo_classify): 5 classes, 96x128, "
        "accuracy",
    ),
}


def model_preset(preset: Preset, arch: str | None) -> Preset:
    """What a model of ``arch`` learns on ``preset``: the preset itself, or its presence task for ``PRESENCE_ARCH`` on
    a segmentation preset (the one place that reads the architecture name; everything after reads the task).

    Raises:
        ValueError: ``PRESENCE_ARCH`` on a multiclass preset.
    """
    return preset.presence() if arch == PRESENCE_ARCH and preset.is_segmentation else preset


PRESET_FILE_SUFFIXES = (".yaml", ".yml")
#: Fields a preset file may leave out although ``Preset`` has no default for them (and "name": the file's stem).
_FILE_DEFAULTS: dict[str, Any] = {"sample_submission": None}
#: Fields derived by the kit, never written in a preset file.
_DERIVED_FIELDS = ("source_task",)


class PresetFileError(ValueError):
    """A preset file (or a config's saved preset) that does not describe a ``Preset``: the message names the file, the
    field and, for an unknown field or value, the close matches."""


def is_preset_file(name: str | Preset) -> bool:
    """Whether a ``preset`` parameter names a preset file (it ends in ``.yaml`` / ``.yml``) rather than a built-in."""
    return isinstance(name, str) and name.lower().endswith(PRESET_FILE_SUFFIXES)


def _choices() -> dict[str, tuple[str, ...]]:
    """The values each field with a fixed vocabulary may take."""
    from kitlib.metrics import METRICS

    return {"task": TASKS[:-1], "label_format": LABEL_FORMATS, "rle_order": ("F", "C"),
            "submission_format": SUBMISSION_FORMATS, "metric": tuple(METRICS)}  # fmt: skip


def _field_type(annotation: str) -> str:
    """A ``Preset`` annotation as a ``kitlib.params`` type: ``Literal[...]`` and ``Task`` are read as ``str`` (their
    values are checked against ``_choices``)."""
    return canonical_type(re.sub(r"Literal\[[^\]]*\]|\bTask\b", "str", annotation))


def _close(name: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _check_field(name: str, value: Any, annotation: str, source: str) -> Any:
    """One field's value, checked and converted (lists become tuples). Raises PresetFileError naming it."""
    try:
        kept = check_value(name, value, _field_type(annotation))
    except ParameterError:
        raise PresetFileError(f"{source}: field {name!r} = {value!r} ({type(value).__name__}) is not "
                              f"{_field_type(annotation)}") from None  # fmt: skip
    options = _choices().get(name)
    if options is not None and kept not in options:
        raise PresetFileError(f"{source}: field {name!r} = {kept!r} is not one of {list(options)}"
                              f"{_close(str(kept), options)}")  # fmt: skip
    if name in ("submission_size", "image_size") and kept is not None and (len(kept) != 2 or min(kept) < 1):
        raise PresetFileError(f"{source}: field {name!r} = {kept} must be (height, width) >= 1 pixel")
    return tuple(kept) if isinstance(kept, list) else kept


def preset_from_fields(fields: Mapping[str, Any], source: str = "preset fields") -> Preset:
    """A ``Preset`` from a mapping of its fields (a preset file's, or ``preset_fields`` saved in a config).

    Args:
        fields: field name -> YAML/JSON value (lists for tuples); ``sample_submission`` may be left out (None: the
            test images are listed by ``test_file`` or the test folder), and ``classes`` for ``coco_json``.
        source: what to name in messages (the file).
    Raises:
        PresetFileError: not a mapping, an unknown or derived field (close matches named), a missing field, a value of
            the wrong type or outside its vocabulary, or fields that contradict each other (``Preset.__post_init__``).
    """
    if not isinstance(fields, Mapping):
        raise PresetFileError(f"{source}: a preset is a mapping of Preset fields, got {type(fields).__name__}")
    hints = {f.name: str(f.type) for f in dataclasses.fields(Preset) if f.name not in _DERIVED_FIELDS}
    for name in fields:
        if name not in hints:
            raise PresetFileError(f"{source}: unknown field {name!r}{_close(str(name), list(hints))}; fields: "
                                  f"{', '.join(hints)}")  # fmt: skip
    defaults = {**_FILE_DEFAULTS, **({"classes": ()} if fields.get("label_format") == "coco_json" else {})}
    required = [f.name for f in dataclasses.fields(Preset) if f.name in hints
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    values = {name: _check_field(name, value, hints[name], source) for name, value in fields.items()}
    missing = [n for n in required if n not in fields and n not in defaults]
    if missing:
        raise PresetFileError(f"{source}: missing field(s) {missing}")
    try:
        return Preset(**{**defaults, **values})
    except ValueError as e:
        raise PresetFileError(f"{source}: {e}") from None


def preset_fields(preset: Preset) -> dict[str, Any]:
    """The fields of ``preset`` as plain JSON values (tuples as lists): ``preset_from_fields`` rebuilds it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(preset).items()
            if k not in _DERIVED_FIELDS}  # fmt: skip


def load_preset_file(path: str | os.PathLike) -> Preset:
    """A user's own competition: the ``Preset`` of a YAML file of its fields (``data_README.md`` shows one).

    ``name`` defaults to the file's stem and must not be a built-in preset's (whose recipe and image cache it would
    take); ``sample_submission`` may be left out, and ``classes`` for ``coco_json`` (read from the label file by the
    stage configs, ``kitlib.formats.with_label_classes``).

    Args:
        path: the file; relative: from the repository root (``kitlib.io.project_path``).
    Raises:
        FileNotFoundError: no such file. PresetFileError: invalid YAML, or fields as ``preset_from_fields`` refuses
            them; the message names the file.
    """
    import yaml

    path = project_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preset file not found: {path}")
    try:
        fields = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PresetFileError(f"{path}: not valid YAML: {e}") from None
    if isinstance(fields, Mapping):
        fields = {"name": path.stem, **fields}
        if fields["name"] in PRESETS:
            raise PresetFileError(f"{path}: name {fields['name']!r} is a built-in preset's; give the competition a "
                                  f"name of its own (built-in: {sorted(PRESETS)})")  # fmt: skip
    return preset_from_fields(fields, str(path))


def preset_file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a preset file's bytes, saved beside its fields in a stage config."""
    return hashlib.sha256(Path(project_path(path)).read_bytes()).hexdigest()


def get_preset(name: str | Preset) -> Preset:
    """A built-in preset by name, or a preset file by path (``is_preset_file``: ``.yaml`` / ``.yml``; relative: from
    the repository root); a ``Preset`` is returned as is.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
        FileNotFoundError, PresetFileError: as ``load_preset_file``.
    """
    if isinstance(name, Preset):
        return name
    return load_preset_file(name) if is_preset_file(name) else lookup(PRESETS, name, "preset")


def _main(argv: list[str] | None = None) -> int:
    """``python -m kitlib.presets PRESET``: check a built-in name or a preset file and print the preset's name
    (``run_all.sh`` names the experiment after it); a wrong one prints the reason and exits 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kitlib.presets", description=_main.__doc__)
    parser.add_argument("preset", help="a built-in preset's name or a preset file (.yaml)")
    args = parser.parse_args(argv)
    try:
        print(get_preset(args.preset).name)
    except (KeyError, FileNotFoundError, PresetFileError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
