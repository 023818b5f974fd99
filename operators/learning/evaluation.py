"""Judging learned operators: confusion matrices, precision and recall, orientation errors, Grad-CAM.

Pure functions of predictions and truth (NumPy), plus Grad-CAM over a
network of :mod:`~diffraflow.operators.learning._networks` (torch). The
``diffraflow evaluate`` command and ``bench/learning.py`` put them together.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of the last
feature map by the mean gradient of the class score with respect to it, sums
the weighted channels, keeps the positive part and upsamples it to the
frame: where the network looked when it chose the class.

Examples
--------
>>> cm = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], n_classes=3)
>>> cm.tolist()
[[1, 1, 0], [0, 1, 0], [1, 0, 1]]
>>> scores = precision_recall(cm)
>>> [round(v, 3) for v in scores["precision"]], [round(v, 3) for v in scores["recall"]]
([0.5, 0.5, 1.0], [0.5, 1.0, 0.5])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["confusion_matrix", "precision_recall", "grouped_accuracy", "orientation_errors", "error_summary",
           "grad_cam", "save_confusion_png", "save_grad_cam_png", "save_error_map_png"]


def confusion_matrix(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """Counts ``(n_classes, n_classes)``: row = true class index, column = predicted class index.

    Examples
    --------
    >>> confusion_matrix([1, 1], [1, 0], 2).tolist()
    [[0, 0], [1, 1]]
    """
    rows = np.asarray(truth, dtype=np.int64).ravel()
    columns = np.asarray(predicted, dtype=np.int64).ravel()
    matrix = np.zeros((int(n_classes), int(n_classes)), dtype=np.int64)
    np.add.at(matrix, (rows, columns), 1)
    return matrix


def precision_recall(matrix: np.ndarray) -> dict[str, Any]:
    """Per-class precision, recall and F1, and the overall accuracy, of a confusion matrix.

    A class never predicted has precision ``nan`` (not 0: nothing was claimed).

    Examples
    --------
    >>> precision_recall(np.array([[3, 1], [0, 4]]))["accuracy"]
    0.875
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = hits / matrix.sum(axis=0)
        recall = hits / matrix.sum(axis=1)
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "accuracy": float(hits.sum() / max(matrix.sum(), 1)), "support": matrix.sum(axis=1).astype(int).tolist()}


def grouped_accuracy(correct: ArrayLike, groups: ArrayLike) -> dict[str, float]:
    """Accuracy within each group (a material, a dose bin...), keyed by the group's string.

    Examples
    --------
    >>> grouped_accuracy([True, False, True], ["fe", "fe", "w"])
    {'fe': 0.5, 'w': 1.0}
    """
    hits = np.asarray(correct, dtype=bool).ravel()
    labels = np.asarray(groups).ravel()
    return {str(g): float(hits[labels == g].mean()) for g in sorted(set(labels.tolist()), key=str)}


def orientation_errors(predicted: np.ndarray, truth: np.ndarray, point_group: str = "m-3m") -> np.ndarray:
    """Disorientation angles (degrees) between predicted and true quaternions ``(..., 4)`` of one phase.

    Examples
    --------
    >>> q = np.array([[1.0, 0, 0, 0]])
    >>> r = np.array([[np.cos(np.radians(5)), 0, 0, np.sin(np.radians(5))]])    # 10 deg about z
    >>> np.round(orientation_errors(q, r), 4).tolist()
    [10.0]
    """
    import torch
    from diffraflow.operators.learning.rotations import (
        disorientation_deg,
        proper_point_group_matrices,
        quaternion_to_matrix,
    )

    p = torch.as_tensor(np.asarray(predicted, dtype=np.float64).reshape(-1, 4))
    t = torch.as_tensor(np.asarray(truth, dtype=np.float64).reshape(-1, 4))
    S = proper_point_group_matrices(point_group, dtype=torch.float64)
    angles = disorientation_deg(quaternion_to_matrix(p), quaternion_to_matrix(t), S).numpy()
    return angles.reshape(np.asarray(predicted).shape[:-1])


def error_summary(errors: np.ndarray) -> dict[str, float]:
    """Mean, median, 90th percentile and the fractions within 2 and 5 degrees.

    Examples
    --------
    >>> error_summary(np.array([1.0, 3.0]))["within_2deg"]
    0.5
    """
    e = np.asarray(errors, dtype=np.float64).ravel()
    if not len(e):
        return {"n": 0}
    return {"n": int(len(e)), "mean_deg": float(e.mean()), "median_deg": float(np.median(e)),
            "p90_deg": float(np.percentile(e, 90)), "within_2deg": float((e <= 2).mean()),
            "within_5deg": float((e <= 5).mean())}


def grad_cam(net: Any, frames: Any, target: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps ``(n, h, w)`` in ``[0, 1]`` of a classifier, at the frames' own size.

    Parameters
    ----------
    net
        A classification :class:`~diffraflow.operators.learning._networks.PatternNet`.
    frames
        ``(n, h, w)`` frames (any dtype, any size).
    target
        Class index per frame whose score is explained; default the predicted class.

    Returns
    -------
    heat, predicted
        The heat maps, and the predicted class indices.

    Examples
    --------
    >>> import torch
    >>> from diffraflow.operators.learning._models import build_model
    >>> net = build_model({"architecture": "small_cnn", "in_shape": [32, 32], "width": 4, "task": "classify",
    ...                    "n_classes": 3}).eval()
    >>> heat, predicted = grad_cam(net, np.random.default_rng(0).random((2, 40, 40)))
    >>> heat.shape, float(heat.min()) >= 0.0, float(heat.max()) <= 1.0
    ((2, 40, 40), True, True)
    """
    import torch
    from torch.nn import functional

    device = next(net.parameters()).device
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32), device=device)
    was_training = net.training
    net.eval()
    net.keep_cam = True
    try:
        with torch.enable_grad():
            fmap = net.features(x)
            fmap.retain_grad()
            logits = net.head(fmap.mean(dim=(2, 3)))
            predicted = logits.argmax(dim=1)
            chosen = predicted if target is None else torch.as_tensor(np.asarray(target), device=device)
            logits.gather(1, chosen[:, None]).sum().backward()
        weights = fmap.grad.mean(dim=(2, 3), keepdim=True)
        cam = functional.relu((weights * fmap).sum(dim=1, keepdim=True)).detach()
    finally:
        net.keep_cam = False
        net.cam_features = None
        net.train(was_training)
    cam = functional.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.reshape(len(cam), -1).amax(dim=1).clamp_min(1e-12)
    return (cam / peak[:, None, None]).cpu().numpy(), predicted.cpu().numpy()


def save_confusion_png(matrix: np.ndarray, names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A confusion matrix (rows normalised to recall) as a PNG with the counts written in.

    Examples
    --------
    >>> import tempfile
    >>> save_confusion_png(np.eye(2, dtype=int), ["a", "b"], Path(tempfile.mkdtemp()) / "cm.png").suffix
    '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]}\n{rows[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_grad_cam_png(frames: np.ndarray, heat: np.ndarray, titles: Sequence[str], path: str | Path,
                      columns: int = 6) -> Path:
    """Frames with their Grad-CAM heat maps overlaid, in a grid, as a PNG.

    Examples
    --------
    >>> import tempfile
    >>> f = np.random.default_rng(0).random((2, 8, 8))
    >>> save_grad_cam_png(f, f, ["a", "b"], Path(tempfile.mkdtemp()) / "cam.png").suffix
    '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frames)
    columns = max(1, min(int(columns), n))
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(frames[k], cmap="gray")
        ax.imshow(heat[k], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(titles[k], fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_error_map_png(errors: np.ndarray, path: str | Path, title: str = "", vmax: float = 10.0) -> Path:
    """A map of orientation errors (degrees, ``(scan_y, scan_x)``) as a PNG with a colour bar.

    Examples
    --------
    >>> import tempfile
    >>> save_error_map_png(np.zeros((3, 4)), Path(tempfile.mkdtemp()) / "e.png").suffix
    '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.4))
    image = ax.imshow(np.asarray(errors), cmap="magma", vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax, label="disorientation (deg)")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
