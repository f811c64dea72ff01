"""A contact sheet of stage 0's face crops: one row per class, so a person can see what the teacher will see."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.face_store import open_faces
from pipeline.manifest import Entry


def sample_entries(entries: Sequence[Entry], classes: Sequence[str], per_class: int, max_classes: int
                   ) -> dict[str, list[Entry]]:
    """Up to `per_class` utterances of each of the first `max_classes` classes that have any, spread evenly over
    the class's utterances in manifest order (so several of its videos show)."""
    by_class: dict[str, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(entry.label, []).append(entry)
    picked = {}
    for name in [name for name in classes if name in by_class][:max_classes]:
        own = by_class[name]
        picks = np.unique(np.linspace(0, len(own) - 1, min(per_class, len(own))).round().astype(int))
        picked[name] = [own[index] for index in picks]
    return picked


def write_contact_sheet(face_store: Path, entries: Sequence[Entry], classes: Sequence[str], out: Path,
                        per_class: int = 8, max_classes: int = 16) -> Path:
    """A PNG of the middle frame's crop of sampled utterances, a row per class labelled with its name."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    picked = sample_entries(entries, classes, per_class, max_classes)
    rows, columns = max(1, len(picked)), max([len(row) for row in picked.values()], default=1)
    figure, axes = plt.subplots(rows, columns, figsize=(1.2 * columns + 1.2, 1.2 * rows + 0.5), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    with open_faces(face_store, require_complete=False) as store:
        for row, (name, picks) in enumerate(picked.items()):
            for column, entry in enumerate(picks):
                middle = store.length(entry.key) // 2
                axes[row, column].imshow(store.read(entry.key, middle, middle + 1)[0])
                axes[row, column].set_title(Path(entry.key).name[:14], fontsize=6)
            axes[row, 0].text(-0.08, 0.5, name[:16], transform=axes[row, 0].transAxes, ha="right", va="center",
                              fontsize=8)
    shown = f"{len(picked)} of {len(set(classes))} classes" if len(picked) < len(set(classes)) else "every class"
    figure.suptitle(f"face crops the teacher sees: middle frame, {shown}", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
