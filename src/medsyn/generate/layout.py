"""Synthetic sets in the source dataset's own layout, so every existing loader (medsyn's too) reads them.

    nih       Data_Entry_2017.csv (Image Index, Finding Labels, Follow-up #, Patient ID) + images/
    chexpert  train.csv (Path, Frontal/Lateral, the 14 observations) + train/patientN/study1/view1_*.png
    folder    one sub-folder per class (images without a positive label under the negative class's name)
    other     labels.csv (image path, patient id, one 0/1 column per class; a mask model's `mask` column) +
              images/, read by `csv:`; a `csv:` source's own image and patient column names are kept where
              `csv:` detects them unaided

Each synthetic image is its own synthetic patient. Ids start at 9,000,001, far above the real NIH
(30,805) and CheXpert (64,540) ids, so mixing synthetic and real sets never merges two people in a
patient-level split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsyn.data.adapters.chexpert import CHEXPERT_CLASSES
from medsyn.data.adapters.csvfile import IMAGE_COLUMNS, PATIENT_COLUMNS
from medsyn.data.adapters.nih import NO_FINDING as NIH_NO_FINDING

FIRST_PATIENT_ID = 9_000_001


@dataclass(frozen=True)
class Layout:
    """Where image i goes (relative path) and the label file that describes the set."""

    kind: str  # nih | chexpert | folder | csv
    labels_file: str | None
    classes: list[str]
    view: str = "frontal"
    negative_class: str = NIH_NO_FINDING  # the folder layout's folder for images without a positive label
    image_column: str = "path"
    patient_column: str = "patient_id"

    @classmethod
    def for_source(
        cls,
        source_format: str,
        classes: list[str],
        options: dict[str, str],
        negative_class: str = NIH_NO_FINDING,
        columns: dict[str, str | None] | None = None,
    ) -> Layout:
        """The layout of `source_format`; `columns` (image, patient) are a csv source's own column names."""
        if source_format == "nih":
            return cls("nih", "Data_Entry_2017.csv", classes)
        if source_format == "chexpert":
            return cls("chexpert", "train.csv", classes, options.get("view", "frontal"))
        if source_format == "folder":
            return cls("folder", None, classes, negative_class=negative_class)
        own = columns if source_format == "csv" and columns else {}
        # the source's names where `csv:FILE` finds them without options (evaluation reads the set that way)
        image = own.get("image") if own.get("image") in IMAGE_COLUMNS else "path"
        patient = own.get("patient") if own.get("patient") in PATIENT_COLUMNS else "patient_id"
        return cls("csv", "labels.csv", classes, image_column=image, patient_column=patient)

    def image_paths(self, labels: np.ndarray) -> list[str]:
        if self.kind == "nih":
            return [f"images/{FIRST_PATIENT_ID + i:08d}_000.png" for i in range(len(labels))]
        if self.kind == "chexpert":
            view = "lateral" if self.view == "lateral" else "frontal"
            return [f"train/patient{FIRST_PATIENT_ID + i}/study1/view1_{view}.png" for i in range(len(labels))]
        if self.kind == "folder":
            return [f"{self._folder(row)}/{i:07d}.png" for i, row in enumerate(labels)]
        return [f"images/{i:07d}.png" for i in range(len(labels))]

    def _folder(self, row: np.ndarray) -> str:
        positives = [c for c, v in zip(self.classes, row, strict=True) if v]
        return "+".join(positives) if positives else self.negative_class

    def write_labels(
        self, out: Path, final_name: str, paths: list[str], labels: np.ndarray, masks: list[str] | None = None
    ) -> None:
        """Write the label file into `out` (the folder is renamed to `final_name` when complete); `masks`: each
        image's mask path, a `mask` column of the csv layout (the other layouts have no place for it)."""
        ids = [str(FIRST_PATIENT_ID + i) for i in range(len(paths))]
        if self.kind == "nih":
            findings = ["|".join(c for c, v in zip(self.classes, row, strict=True) if v) or NIH_NO_FINDING
                        for row in labels]  # fmt: skip
            table = pd.DataFrame({"Image Index": [Path(p).name for p in paths], "Finding Labels": findings,
                                  "Follow-up #": 0, "Patient ID": ids})  # fmt: skip
        elif self.kind == "chexpert":
            table = pd.DataFrame({"Path": [f"{final_name}/{p}" for p in paths]})
            table["Frontal/Lateral"] = {"frontal": "Frontal", "lateral": "Lateral"}.get(self.view, "")
            for c in CHEXPERT_CLASSES:  # observations the model was not trained on stay blank (not mentioned)
                table[c] = labels[:, self.classes.index(c)].astype(float) if c in self.classes else np.nan
        elif self.kind == "csv":
            table = pd.DataFrame({self.image_column: paths, self.patient_column: ids})
            for i, c in enumerate(self.classes):
                table[c] = labels[:, i].astype(int)
            if masks is not None:
                table["mask"] = masks
        else:
            return
        assert self.labels_file is not None
        table.to_csv(out / self.labels_file, index=False, float_format="%.1f")
