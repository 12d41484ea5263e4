"""Figures the notebooks show: label statistics, sample grids with mask overlays, fold balance.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure state, nothing
shown as a side effect): a notebook cell that ends with the call displays it once, and ``fig.savefig`` saves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kitlib._pixels import as_float_probs
from kitlib.formats import class_presence, load_masks, target_columns
from kitlib.images import read_image
from kitlib.presets import Preset
from kitlib.rle import rle_area

__all__ = [
    "plot_confusion_matrix",
    "plot_roc",
    "plot_pr_curves",
    "CLASS_COLORS",
    "label_table",
    "overlay_masks",
    "plot_label_summary",
    "plot_cooccurrence",
    "plot_image_sizes",
    "plot_samples",
    "plot_augmentations",
    "plot_fold_balance",
    "plot_history",
    "plot_predictions",
    "plot_search_heatmaps",
    "plot_trace",
]

#: RGB colours of mask overlays, class k gets CLASS_COLORS[k % len(CLASS_COLORS)] (tab10, 0..255).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def label_table(df: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Per image and class: presence and mask area as a fraction of the image (segmentation presets).

    Args:
        df: train table from ``kitlib.formats.load_competition``.
    Returns:
        DataFrame with ``image_id``, then ``<class>`` (bool presence) and ``<class>_area`` (float 0..1) for each
        target class, and ``n_classes`` (int). RLE columns are measured without decoding; mask files are read.
    Raises:
        ValueError: classification preset.
    """
    presence = class_presence(df, preset)
    out = pd.DataFrame(presence, columns=list(preset.target_classes))
    out.insert(0, "image_id", df["image_id"].to_numpy())
    n_pixels = (df["height"] * df["width"]).to_numpy(dtype=np.float64)
    for k, cls in enumerate(preset.target_classes):
        if "mask_path" in df.columns:
            areas = [load_masks(row, preset)[:, :, k].sum() for _, row in df.iterrows()]
        else:
            areas = [rle_area(r, (h, w)) for r, h, w in zip(df[cls], df["height"], df["width"], strict=True)]
        out[f"{cls}_area"] = np.asarray(areas, dtype=np.float64) / n_pixels
    out["n_classes"] = presence.sum(axis=1)
    return out


def plot_label_summary(df: pd.DataFrame, preset: Preset) -> Figure:
    """Class frequencies, classes per image and mask-area distributions (segmentation), or the label
    distribution (classification)."""
    if not preset.is_segmentation:
        fig = Figure(figsize=(8, 3.5), layout="constrained")
        ax = fig.add_subplot()
        counts = df["label"].value_counts().reindex(range(len(preset.classes)), fill_value=0)
        ax.barh([f"{i}: {c}" for i, c in enumerate(preset.classes)], counts.to_numpy(), color="tab:blue")
        ax.set_xlabel("images")
        ax.set_title(f"{preset.name}: {len(df)} images")
        return fig
    table = label_table(df, preset)
    classes = list(preset.target_classes)
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.bar(classes, table[classes].mean().to_numpy(), color=[np.array(_color(k)) / 255 for k in range(len(classes))])
    ax1.set_ylabel("fraction of images")
    ax1.set_title("class frequency")
    ax1.tick_params(axis="x", rotation=45)
    counts = table["n_classes"].value_counts().sort_index()
    ax2.bar(counts.index.astype(str), counts.to_numpy(), color="tab:gray")
    ax2.set_xlabel("classes present")
    ax2.set_title("classes per image")
    for k, cls in enumerate(classes):
        areas = table.loc[table[cls], f"{cls}_area"]
        if len(areas):
            ax3.hist(areas, bins=20, range=(0, 1), histtype="step", label=cls, color=np.array(_color(k)) / 255)
    ax3.set_xlabel("mask area / image area (non-empty masks)")
    ax3.set_title("mask area distribution")
    if len(classes) <= 12:
        ax3.legend(fontsize=7)
    return fig


def plot_cooccurrence(df: pd.DataFrame, preset: Preset) -> Figure:
    """Heatmap of P(class j present | class i present) over the train images (segmentation presets)."""
    presence = class_presence(df, preset).astype(np.float64)
    both = presence.T @ presence
    conditional = both / np.maximum(np.diag(both)[:, None], 1)
    classes = list(preset.target_classes)
    fig = Figure(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.5 * len(classes)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(conditional, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{conditional[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if conditional[i, j] < 0.6 else "black")  # fmt: skip
    ax.set_title("P(column class | row class)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_image_sizes(df: pd.DataFrame) -> Figure:
    """Image sizes (width x height, pixels) with their counts."""
    sizes = df.groupby(["width", "height"]).size().reset_index(name="n")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(sizes["width"], sizes["height"], s=20 + 80 * sizes["n"] / sizes["n"].max(), alpha=0.7)
    for w, h, n in sizes.head(10).itertuples(index=False):
        ax.annotate(f"{w}x{h}: {n}", (w, h), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"image sizes ({len(df)} images)")
    return fig


def _color(k: int) -> tuple[int, int, int]:
    return CLASS_COLORS[k % len(CLASS_COLORS)]


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.4, contour: bool = True) -> np.ndarray:
    """Blend masks onto an image, one colour per channel (``CLASS_COLORS``), with their outlines.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (H, W, K) {0, 1} (any integer or bool dtype) at the image's size.
        alpha: opacity of the fill, 0..1.
        contour: draw each mask's outline at full opacity.
    Returns:
        (H, W, 3) uint8 RGB, a new array.
    Raises:
        ValueError: shapes that do not match.
    """
    import cv2

    if image.ndim != 3 or masks.ndim != 3 or image.shape[:2] != masks.shape[:2]:
        raise ValueError(f"image (H, W, 3) and masks (H, W, K) must match, got {image.shape} and {masks.shape}")
    out = image.astype(np.float32)
    for k in range(masks.shape[2]):
        m = masks[:, :, k].astype(bool)
        if m.any():
            out[m] = (1 - alpha) * out[m] + alpha * np.asarray(_color(k), np.float32)
    out = out.astype(np.uint8)
    if contour:
        thickness = max(1, round(max(image.shape[:2]) / 300))
        for k in range(masks.shape[2]):
            m = np.ascontiguousarray(masks[:, :, k], dtype=np.uint8)
            if m.any():
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(out, contours, -1, _color(k), thickness)
    return out


def plot_samples(
    df: pd.DataFrame,
    preset: Preset,
    n: int = 8,
    seed: int = 0,
    max_side: int = 480,
    cols: int = 4,
    masks: dict[str, np.ndarray] | None = None,
) -> Figure:
    """A grid of images with their masks overlaid per class (segmentation) or their label (classification).

    Args:
        df: a table from ``load_competition`` (train, or test with ``masks`` given).
        n: number of images, drawn at random with ``seed`` (all when fewer).
        max_side: images are shrunk so that their longer side is at most this many pixels.
        masks: optional (H, W, K) masks by image_id to draw instead of the table's targets (predictions).
    Returns:
        Figure with one panel per image; the legend maps colours to classes.
    """
    import cv2

    rows_df = df.sample(n=min(n, len(df)), random_state=seed) if len(df) > n else df
    cols = max(1, min(cols, len(rows_df)))
    nrows = max(1, -(-len(rows_df) // cols))
    fig = Figure(figsize=(4 * cols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    has_targets = all(c in df.columns for c in target_columns(preset))
    for ax, (_, row) in zip(axes, rows_df.iterrows(), strict=False):
        image = read_image(row["image_path"])
        scale = min(1.0, max_side / max(image.shape[:2]))
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        title = str(row["image_id"])
        if preset.is_segmentation and (masks is not None or has_targets):
            m = masks[row["image_id"]] if masks is not None else load_masks(row, preset)
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            m_small = cv2.resize(np.ascontiguousarray(m, dtype=np.uint8), size, interpolation=cv2.INTER_NEAREST)
            shown = overlay_masks(small, m_small.reshape(size[1], size[0], -1))
            present = [c for k, c in enumerate(preset.target_classes) if m[:, :, k].any()]
            title += "\n" + (", ".join(present) if present else "(empty)")
        else:
            shown = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            if "label" in row.index:
                title += f"\n{row['label']}: {preset.classes[int(row['label'])]}"
        ax.imshow(shown)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if preset.is_segmentation:
        from matplotlib.patches import Patch

        handles = [Patch(color=np.array(_color(k)) / 255, label=c) for k, c in enumerate(preset.target_classes)]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8)
    return fig


def plot_augmentations(
    df: pd.DataFrame,
    preset: Preset,
    augment,
    height: int,
    width: int,
    n: int = 3,
    repeats: int = 3,
    seed: int = 0,
    crop: tuple[int, int] | None = None,
    resize: bool = True,
) -> Figure:
    """A grid of augmented image/mask pairs: per image (a row), the validation view, then ``repeats`` draws of the
    train pipeline, masks overlaid per class; shows what an ``augment`` pipeline does before training.

    Args:
        df: a train table from ``load_competition``.
        augment: a ``kitlib.augment`` pipeline: a name, a YAML path or a loaded pipeline.
        height, width, crop, resize: as ``kitlib.data.build_transforms`` (the training run's values).
        n: images, drawn at random with ``seed``; repeats: augmented draws per image.
    Returns:
        Figure of n rows x (1 + repeats) panels, titled with the image id and the item's size.
    """
    from kitlib.data import build_transforms, make_dataset

    rows_df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    cols = 1 + repeats
    fig = Figure(figsize=(3.2 * cols, 3.0 * len(rows_df)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows_df), cols))
    for j in range(cols):
        stage = "valid" if j == 0 else "train"
        transform = build_transforms(stage, height, width, (0, 0, 0), (1, 1, 1), augment, crop=crop, resize=resize)
        transform.set_random_seed(seed + j)
        dataset = make_dataset(rows_df, preset, transform)
        for i in range(len(rows_df)):
            item = dataset[i]
            image = (item["image"].numpy().transpose(1, 2, 0).clip(0, 1) * 255).astype(np.uint8)
            if "mask" in item:
                m = item["mask"].numpy()
                m = np.stack([m == k + 1 for k in range(len(preset.target_classes))]) if m.ndim == 2 else m
                image = overlay_masks(np.ascontiguousarray(image), np.ascontiguousarray(m.transpose(1, 2, 0), np.uint8))
            axes[i, j].imshow(image)
            axes[i, j].set_title(f"{item['image_id']}\n{'valid' if j == 0 else f'train draw {j}'} "
                                 f"{image.shape[0]}x{image.shape[1]}", fontsize=8)  # fmt: skip
            axes[i, j].axis("off")
    return fig


def plot_fold_balance(df: pd.DataFrame, preset: Preset) -> Figure:
    """Per fold: number of images and how often each class occurs (a table with a ``fold`` column)."""
    if preset.is_segmentation:
        presence = pd.DataFrame(class_presence(df, preset), columns=list(preset.target_classes))
    else:
        presence = pd.get_dummies(df["label"]).reindex(columns=range(len(preset.classes)), fill_value=False)
        presence.columns = list(preset.classes)
    presence["fold"] = df["fold"].to_numpy()
    counts = presence.groupby("fold").sum()
    sizes = presence.groupby("fold").size()
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 3])
    ax1.bar(sizes.index.astype(str), sizes.to_numpy(), color="tab:gray")
    ax1.set_xlabel("fold")
    ax1.set_title("images per fold")
    width = 0.8 / max(1, len(counts.columns))
    x = np.arange(len(counts.index))
    for k, cls in enumerate(counts.columns):
        ax2.bar(x + k * width, counts[cls].to_numpy(), width, label=str(cls), color=np.array(_color(k)) / 255)
    ax2.set_xticks(x + 0.4 - width / 2, counts.index.astype(str))
    ax2.set_xlabel("fold")
    ax2.set_title("images containing each class, per fold")
    ax2.legend(fontsize=7, ncol=2)
    return fig


def plot_history(history: pd.DataFrame, monitor: str | None = None) -> Figure:
    """Learning curves of a ``history.csv`` (``kitlib.engine.fit``): losses, validation scores, learning rates.

    Args:
        history: one row per epoch with ``epoch``, ``train_*``, ``valid_*`` and ``lr_*`` columns.
        monitor: the column that picked ``best.pt``; its best epoch is marked.
    Returns:
        Figure with three panels: train/valid loss, validation scores, learning rate per group (log scale).
    """
    epochs = history["epoch"].to_numpy() + 1
    fig = Figure(figsize=(15, 3.6), layout="constrained")
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    for col, style in (("train_loss", "-"), ("valid_loss", "--")):
        if col in history:
            ax_loss.plot(epochs, history[col], style, label=col)
    ax_loss.set_title("loss")
    scores = [c for c in history.columns if c.startswith("valid_") and c != "valid_loss"]
    for col in scores:
        ax_score.plot(epochs, history[col], marker=".", label=col)
    if monitor in history and history[monitor].notna().any():
        minimise = monitor.endswith(("loss", "error"))
        best = int(history[monitor].idxmin() if minimise else history[monitor].idxmax())
        for ax in (ax_loss, ax_score):
            ax.axvline(epochs[best], color="grey", lw=0.8, ls=":", label=f"best {monitor}")
    ax_score.set_title("validation scores (training resolution)")
    for col in [c for c in history.columns if c.startswith("lr_")]:
        ax_lr.plot(epochs, history[col], label=col)
    ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate at epoch start")
    for ax in (ax_loss, ax_score, ax_lr):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return fig


def plot_predictions(
    df: pd.DataFrame,
    preset: Preset,
    probs: np.ndarray,
    threshold: float = 0.5,
    n: int = 4,
    seed: int = 0,
    max_side: int = 360,
    rows: Sequence[int] | None = None,
) -> Figure:
    """Images beside their true and predicted masks (segmentation), or with true and predicted labels.

    Args:
        df: table rows aligned with ``probs`` (targets optional: without them only predictions are drawn).
        probs: (N, K, H, W) uint8 0..255 or float 0..1 at any resolution (binary/multilabel: > threshold;
            multiclass: argmax over C); (N, C) for classification; (N, K) class presence probabilities for a
            presence task (``Preset.presence()``: each panel's title lists them and the true classes).
        threshold: probability cut for binary/multilabel masks.
        n, seed: how many rows, drawn at random with ``seed``.
        max_side: longer side of the drawn images in pixels.
        rows: these row positions, in this order, instead of a random draw (the worst OOF images).
    Returns:
        Figure: one row per image (image + truth, image + prediction) or one panel per image (classification).
    """
    import cv2

    if len(df) != len(probs):
        raise ValueError(f"df has {len(df)} rows, probs {len(probs)}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(df), size=min(n, len(df)), replace=False)) if rows is None else np.asarray(rows)
    has_targets = all(c in df.columns for c in target_columns(preset))
    presence = preset.task == "presence"  # a presence classifier's (N, K) probs
    if not preset.is_segmentation:
        fig = Figure(figsize=(3.2 * len(rows), 3.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(rows)))
        truth = class_presence(df.iloc[rows], preset) if presence and has_targets else None
        for j, (ax, i) in enumerate(zip(axes, rows, strict=True)):
            row = df.iloc[i]
            p = np.asarray(probs[i], dtype=np.float32)
            if presence:
                names = preset.target_classes
                title = f"{row['image_id']}\n" + " ".join(f"{n[:6]} {v:.2f}" for n, v in zip(names, p, strict=True))
                if truth is not None:
                    title += "\ntrue: " + (",".join(n for n, t in zip(names, truth[j], strict=True) if t) or "none")
            else:
                title = f"{row['image_id']}\npred {int(p.argmax())} ({p.max():.2f})"
            if has_targets and not presence:
                title += f", true {int(row['label'])}"
            ax.imshow(read_image(row["image_path"]))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        return fig
    cols = 2 if has_targets else 1
    fig = Figure(figsize=(4.2 * cols, 3.2 * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, i in enumerate(rows):
        row = df.iloc[i]
        image = read_image(row["image_path"])
        scale = min(1.0, max_side / max(image.shape[:2]))
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        p = as_float_probs(probs[i])
        if preset.task == "multiclass":
            labels = p.argmax(0)
            pred = np.stack([labels == k + 1 for k in range(len(preset.target_classes))], axis=-1)
        else:
            pred = (p > threshold).transpose(1, 2, 0)
        pred = cv2.resize(pred.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).reshape(size[1], size[0], -1)
        panels = [("prediction", pred)]
        if has_targets:
            truth = cv2.resize(load_masks(row, preset), size, interpolation=cv2.INTER_NEAREST)
            panels.insert(0, ("truth", truth.reshape(size[1], size[0], -1)))
        for c, (name, masks) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(overlay_masks(small, masks))
            ax.set_title(f"{row['image_id']}: {name}", fontsize=8)
            ax.axis("off")
    return fig


def plot_pr_curves(class_probs: np.ndarray, labels: np.ndarray, classes: list[str], thresholds=None) -> Figure:
    """Precision-recall curve of each class of an image-level classifier, the chosen threshold marked.

    Args:
        class_probs: (N, K) probabilities; labels: (N, K) {0, 1} or bool.
        classes: the K class names.
        thresholds: (K,) gate thresholds to mark (``kitlib.gate.classifier_thresholds``), or None.
    Returns:
        Figure, one panel per class (recall on x, precision on y).
    """
    from kitlib.gate import precision_recall_table

    probs, y = np.asarray(class_probs, dtype=np.float64), np.asarray(labels).astype(bool)
    k = probs.shape[1]
    cols = min(k, 4)
    fig = Figure(figsize=(3.6 * cols, 3.2 * -(-k // cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-k // cols), cols, squeeze=False)).ravel()
    for c, ax in enumerate(axes):
        if c >= k:
            ax.axis("off")
            continue
        table = precision_recall_table(probs[:, c], y[:, c])
        ax.plot(table["recall"], table["precision"], lw=1.5)
        ax.axhline(y[:, c].mean(), color="0.6", ls="--", lw=1, label=f"prevalence {y[:, c].mean():.2f}")
        if thresholds is not None:
            kept = probs[:, c] > thresholds[c]
            tp = np.sum(kept & y[:, c])
            if kept.any() and y[:, c].any():
                ax.plot(tp / y[:, c].sum(), tp / kept.sum(), "o", color="C3", label=f"threshold {thresholds[c]:.3f}")
        ax.set(title=str(classes[c]), xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_roc(roc: pd.DataFrame, youden: pd.DataFrame | None = None) -> Figure:
    """The pixel ROC curve of each class, the threshold of Youden's index marked.

    Args:
        roc: ``kitlib.roc.pixel_roc``'s table (``class``, ``threshold``, ``tpr``, ``fpr``).
        youden: ``kitlib.roc.youden_thresholds``'s table, or None.
    Returns:
        Figure, one panel per class (false positive rate on x, true positive rate on y).
    """
    names = list(dict.fromkeys(roc["class"]))
    cols = min(len(names), 4)
    fig = Figure(figsize=(3.6 * cols, 3.2 * -(-len(names) // cols)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-len(names) // cols), cols, squeeze=False)).ravel()
    for ax in axes[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes, names, strict=False):
        g = roc[roc["class"] == name]
        ax.plot(np.r_[1.0, g["fpr"], 0.0], np.r_[1.0, g["tpr"], 0.0], lw=1.5)
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
        best = None if youden is None else youden[youden["class"] == name]
        if best is not None and len(best) and np.isfinite(best["youden_j"].iloc[0]):
            b = best.iloc[0]
            ax.plot(b["fpr"], b["tpr"], "o", color="C3", label=f"Youden J {b['youden_j']:.3f} at {b['threshold']:.3f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set(title=str(name), xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    return fig


def plot_confusion_matrix(probs_or_pred, labels, classes: Sequence[str], normalize: str = "both") -> Figure:
    """The confusion matrix of a classifier's OOF: true class in rows, predicted class in columns.

    Args:
        probs_or_pred: (N, C) class probabilities (argmax) or (N,) predicted labels; labels: (N,) true labels.
        classes: the C class names.
        normalize: "counts", "true" (each row divided by its images: the recall on the diagonal) or "both" (two
            panels).
    Returns:
        Figure, values written in the cells when C <= 20 (``kitlib.oof.confusion_table``).
    Raises:
        ValueError: an unknown ``normalize`` (the options are named); as ``kitlib.oof.confusion_table``.
    """
    from kitlib.oof import confusion_table

    panels = {"counts": [None], "true": ["true"], "both": [None, "true"]}
    if normalize not in panels:
        raise ValueError(f"unknown normalize {normalize!r}; options: {list(panels)}")
    tables = [confusion_table(probs_or_pred, labels, classes, norm) for norm in panels[normalize]]
    c = len(classes)
    side = min(max(3.6, 0.6 * c + 2.6), 12)
    fig = Figure(figsize=(side * len(tables) + 0.8, side), layout="constrained")
    for ax, norm, table in zip(np.atleast_1d(fig.subplots(1, len(tables))), panels[normalize], tables, strict=True):
        values = table.to_numpy(dtype=np.float64)
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if norm else None)
        ax.set_xticks(range(c), [str(k) for k in classes], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(c), [str(k) for k in classes], fontsize=7)
        if c <= 20:
            top = values.max() if values.size else 0
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:.2f}" if norm else f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="w" if v > 0.5 * top else "k")  # fmt: skip
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title("row-normalised (recall)" if norm else "counts", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_search_heatmaps(df: pd.DataFrame, key: str = "dice") -> Figure:
    """The threshold x min_area score surface of each class, best cell marked.

    Args:
        df: a ``search_thresholds`` table (``class_index``, ``threshold``, ``min_area``, ``key``; ``class`` if present
            names the panels).
        key: the score column.
    Returns:
        Figure, one heatmap per class (rows: thresholds, columns: min_areas), values written in the cells.
    """
    classes = df.drop_duplicates("class_index").sort_values("class_index")
    n = len(classes)
    fig = Figure(figsize=(min(4.2 * n, 17), 3.8 if n <= 4 else 3.8 * -(-n // 4)), layout="constrained")
    cols = min(n, 4)
    axes = np.atleast_1d(fig.subplots(-(-n // cols), cols, squeeze=False)).ravel()
    for ax, (_, row) in zip(axes, classes.iterrows(), strict=False):
        sub = df[df["class_index"] == row["class_index"]]
        table = sub.pivot_table(index="threshold", columns="min_area", values=key, aggfunc="first")
        values = table.to_numpy(dtype=np.float64)
        im = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=45, fontsize=7)
        ax.set_yticks(range(table.shape[0]), [f"{t:g}" for t in table.index], fontsize=7)
        if table.size <= 120:
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="w")
        if np.isfinite(values).any():
            i, j = np.unravel_index(np.nanargmax(values), values.shape)
            ax.add_patch(_rect(j, i))
            title = f"best {values[i, j]:.4f} @ t={table.index[i]:g}, area={table.columns[j]}"
        else:
            title = "no score"
        ax.set_title(f"{row.get('class', int(row['class_index']))}\n{title}", fontsize=8)
        ax.set_xlabel("min_area", fontsize=8)
        ax.set_ylabel("threshold", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes[n:]:
        ax.axis("off")
    return fig


def _rect(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def plot_trace(trace: Sequence[float], title: str = "hill climbing") -> Figure:
    """Score after each accepted step of ``kitlib.ensemble_search.hill_climb`` (or the best-so-far trace of an
    optimiser)."""
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(len(trace)), np.asarray(trace, dtype=np.float64), marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig
