"""The evaluation's privacy stage (see `pipeline.evaluate`): per feature space, DCR and nearest-patient
concentration, the distance and density-ratio membership attacks; the model-based attack when the
generator's run folder is given; and the re-identification attack.

Members are the training images the generator saw (`RealData.members`), non-members the held-out patients'
images. The density-ratio attack needs real images that are neither: the validation patients are its
reference and the test patients its non-members. Every attack also compares its score between validation and
test non-members (`with_split_shift`; the density attack with half the validation patients as reference,
`with_density_split_shift`), which tells a shift between the held-out splits apart from leakage. Attacks are
not run in the feature space of a classifier trained on the member images (its own training images are closer
together whatever the generator did).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medsyn.errors import DataError
from medsyn.evaluate.privacy import DCRResult, MIAResult, distance_to_closest_record, membership_inference
from medsyn.evaluate.privacy.density import density_ratio_inference, with_density_split_shift
from medsyn.evaluate.privacy.linkage import match_synthetic
from medsyn.evaluate.privacy.membership import with_split_shift
from medsyn.evaluate.privacy.model_attack import AttackSet, model_inference
from medsyn.evaluate.privacy.reid import ReidModel, train_reid
from medsyn.evaluate.privacy.verification import verification_auroc
from medsyn.evaluate.real import RealData
from medsyn.evaluate.settings import EvalSettings
from medsyn.evaluate.stages import Features, Stage, skipped
from medsyn.evaluate.synthetic import SyntheticSet

IN_OWN_SPACE = ("not run in the feature space of a classifier trained on the member images: its own training "
                "images are closer together whatever the generator did, which would fake leakage")  # fmt: skip
NO_RUN = "not run: give the generator's run folder (evaluate --run DIR) for the attack that reads the model"


@dataclass
class PrivacyOutcome:
    section: dict[str, Any]  # metrics.json "privacy" (without the verdicts, added by the pipeline)
    dcrs: dict[str, DCRResult] = field(default_factory=dict)  # per space key ("pixel", "feature")
    mias: dict[str, MIAResult] = field(default_factory=dict)  # "pixel", "feature", "density pixel", ..., "model"
    reid_scores: np.ndarray | None = None  # each synthetic image's best re-identification score
    reid_model: ReidModel | None = None


def privacy_stage(
    real: RealData, syn: SyntheticSet, f: Features, s: EvalSettings, stage: Stage, run: str | Path | None = None
) -> PrivacyOutcome:
    """Every privacy check; `run`: the generator's training run folder, for the model-based attack."""
    seen = real.member_info.seen
    spaces = [("pixel", f.pixel, f.pixel_space)] + ([("feature", f.learned, f.space)] if f.space is not None else [])
    if seen is not None:
        spaces = [(key, {**feats, "train": np.asarray(feats["train"])[seen]}, sp) for key, feats, sp in spaces]
    external = f.backbone.get("trained_on") != "real training split"
    out = PrivacyOutcome({"dcr": {}, "membership_inference": {}})
    progress, members, mia = s.utility.classifier.progress, real.members, out.section["membership_inference"]
    boot = {"n_bootstrap": max(1, s.utility.n_bootstrap), "seed": s.seed}
    n_val = len(real.splits["val"].labels)  # `held` is the validation images, then the test images
    for key, feats, sp in spaces:
        with stage(f"privacy: DCR ({sp.name})"):
            try:
                out.dcrs[key] = distance_to_closest_record(
                    feats["syn"], feats["train"], feats["held"], sp, n_closest=s.n_closest, device=s.device,
                    progress=progress, train_patient_ids=members.patient_ids,
                )  # fmt: skip
                out.section["dcr"][key] = out.dcrs[key].to_dict()
            except DataError as exc:
                out.section["dcr"][key] = skipped(exc)
        if key != "pixel" and not external:
            mia[key] = mia[f"density {key}"] = {"not_applicable": True, "skipped": IN_OWN_SPACE}
            continue
        held = np.asarray(feats["held"])
        attacks = {  # name: (attack, its split shift)
            key: (partial(membership_inference, feats["syn"], feats["train"], held, sp,
                          non_member_ids=real.held.patient_ids, device=s.device, progress=progress),
                  partial(with_split_shift, first=n_val, non_member_ids=real.held.patient_ids, **boot)),
            f"density {key}": (partial(density_ratio_inference, feats["syn"], feats["train"], held[n_val:],
                                       held[:n_val], sp, non_member_ids=real.splits["test"].patient_ids),
                               partial(with_density_split_shift, synthetic=feats["syn"], members=feats["train"],
                                       validation=held[:n_val], test=held[n_val:], space=sp,
                                       validation_ids=real.splits["val"].patient_ids,
                                       test_ids=real.splits["test"].patient_ids, **boot)),
        }  # fmt: skip
        for name, (attack, shift) in attacks.items():
            with stage(f"privacy: membership inference, {'distance' if name == key else 'density ratio'} ({sp.name})"):
                _attack(out, name, partial(attack, member_ids=members.patient_ids, **boot), shift)
    if run is None:
        mia["model"] = {"not_applicable": True, "skipped": NO_RUN}
    else:
        with stage("privacy: membership inference, model-based"):
            drawn = [g["sha256"] for g in syn.manifest["generators"]] if syn.manifest else None
            _attack(out, "model", partial(
                model_inference, run, real.ds, AttackSet(members.images.rows, members.patient_ids),
                AttackSet(real.held.images.rows, real.held.patient_ids), drawn=drawn, device=s.device, **boot,
            ), lambda res: with_split_shift(res, n_val, real.held.patient_ids, **boot)
               if res.n_non_members == len(real.held.patient_ids) else res)  # the model attack may subsample
    with stage("privacy: re-identification (siamese)"):
        try:
            out.section["reidentification"], out.reid_scores, out.reid_model = _reid(real, syn, s)
        except DataError as exc:
            out.section["reidentification"] = skipped(exc)
    return out


def _attack(out: PrivacyOutcome, key: str, attack: Callable[[], MIAResult],
            shift: Callable[[MIAResult], MIAResult]) -> None:  # fmt: skip
    """Run one membership attack into `out`, with its split shift (skipped with its reason when the data cannot
    support it)."""
    try:
        out.mias[key] = shift(attack())
        out.section["membership_inference"][key] = out.mias[key].to_dict()
    except DataError as exc:
        out.section["membership_inference"][key] = skipped(exc)


def _reid(real: RealData, syn: SyntheticSet, s: EvalSettings) -> tuple[dict[str, Any], np.ndarray, ReidModel]:
    train, val, test = real.members, real.splits["val"], real.splits["test"]
    model = train_reid(train.images, train.patient_ids, s.reid, val_images=val.images, val_patient_ids=val.patient_ids)
    ver = verification_auroc(model, test.images, test.patient_ids, n_bootstrap=s.utility.n_bootstrap, seed=s.seed)
    match = match_synthetic(model, syn.images, train.images, train.patient_ids, ver, heldout_images=test.images)
    scores = match.pop("best_score")
    for key in ("best_patient", "best_train_index", "matched"):
        match.pop(key)
    history = {k: v for k, v in model.history.items() if k != "config"}
    return {"training": history, "verification": ver, "matching": match}, scores, model
