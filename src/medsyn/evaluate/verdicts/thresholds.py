"""Every threshold of the verdicts, and `THRESHOLDS`: the table of every rule in words, printed in the report
("How the verdicts are decided") and appended to the package docstring. The rules that apply them are in
`useful.py`, `realistic.py` and `private.py` of this package."""

from __future__ import annotations

USEFUL_PASS, USEFUL_WARN = 0.8, 0.5
SEGMENTATION_PASS, SEGMENTATION_WARN = 0.9, 0.7
SEGMENTATION_MIN_REAL_DICE = 0.5
SALIENCY_MIN_PAIRED, SALIENCY_GAP, SALIENCY_P = 10, 0.15, 0.01
FID_PASS, FID_WARN = 2.0, 5.0
PRDC_PASS, PRDC_WARN = 0.5, 0.25
BACKBONE_MIN_AUROC = 0.6
DIVERSITY_WARN, DIVERSITY_FAIL = 0.8, 0.5
DCR_WARN_RATIO, DCR_FAIL_RATIO = 1.5, 3.0
DCR_WARN_P, DCR_FAIL_P = 0.05, 0.01
MIA_FAIL_AUROC = 0.60
CONCENTRATION_MIN_SHARE = 0.10
CONCENTRATION_WARN_RATIO, CONCENTRATION_FAIL_RATIO = 1.5, 3.0
CONCENTRATION_WARN_P, CONCENTRATION_FAIL_P = 0.05, 0.01
CONCENTRATION_NO_RESEMBLANCE = 0.05
REID_FPR = 0.05
REID_WARN_RATIO, REID_FAIL_RATIO = 1.5, 3.0
REID_WEAK_AUROC = 0.6

THRESHOLDS: dict[str, list[str]] = {
    "Useful?": [
        "r = (TSTR - 0.5) / (TRTR - 0.5): the share of the real-trained classifier's above-chance mean AUROC "
        "that a classifier trained only on synthetic images keeps, both tested on held-out real patients",
        f"PASS r >= {USEFUL_PASS}, WARN {USEFUL_WARN} <= r < {USEFUL_PASS}, FAIL r < {USEFUL_WARN}",
        "n/a when the real-trained classifier is not clearly above chance (CI lower bound <= 0.5)",
        "image + mask sets (segmentation utility): d = mean Dice of a U-Net trained on synthetic pairs / mean Dice "
        f"of one trained on real pairs, both on held-out real patients; PASS d >= {SEGMENTATION_PASS}, WARN "
        f"{SEGMENTATION_WARN} <= d < {SEGMENTATION_PASS}, FAIL d < {SEGMENTATION_WARN}; n/a when the real-trained "
        f"U-Net's Dice CI lower bound is below {SEGMENTATION_MIN_REAL_DICE}; with classification labels too, the "
        "worse of the two decides; a set without labels is judged by segmentation alone",
        "at most WARN when the synthetic set is collapsed (see Realistic?): a few repeated images can still "
        "train a classifier for an easy task, which says little about the set",
        "feature importance (Grad-CAM, a supplementary check that can lower the verdict, never raise it): per "
        "class group, the agreement (Spearman over pixels) of the synthetic-trained model's maps with the "
        "real-trained model's, against a second real-trained seed's agreement with the same maps on the same "
        f"images; below the seed baseline when the mean paired gap >= {SALIENCY_GAP} with a one-sided Wilcoxon "
        f"p < {SALIENCY_P} over >= {SALIENCY_MIN_PAIRED} images with all maps defined; a group below turns a "
        "PASS of Useful? into WARN and is named beside a WARN or FAIL (the synthetic-trained model may rely on "
        "other cues: shortcuts); not "
        "assessed (too few defined maps, stage off) leaves Useful? as it is",
    ],
    "Realistic?": [
        "diversity (pixel space, n = min(synthetic, real training, 2000) random images each): modes = connected "
        "groups of images closer than the real images' 5th-percentile nearest-other distance; m = synthetic "
        f"modes / real modes: FAIL (collapsed) m < {DIVERSITY_FAIL}, WARN m < {DIVERSITY_WARN}; a FAIL here "
        "fails Realistic? whatever the features say",
        "q = FID(real, synthetic) / FID(real, real) at the same N (two disjoint real subsets, whole patients on "
        f"each side when patient ids are known): PASS q <= {FID_PASS:g}, WARN q <= {FID_WARN:g}, FAIL q > {FID_WARN:g}",
        f"precision and coverage (k = 5): PASS both >= {PRDC_PASS}, WARN both >= {PRDC_WARN}, else FAIL; both 0: "
        "the synthetic images do not resemble the real ones at all",
        "not assessable (n/a) when the feature backbone is uninformative: a classifier trained here on the real "
        f"images whose held-out mean AUROC is below {BACKBONE_MIN_AUROC} or whose CI reaches 0.5, or fewer images "
        "than feature dimensions (N <= D, N the images per side of the same-N FID comparison); then train longer / "
        "on more data, or pass --features with local weights",
        "the fidelity check is the worst of FID and PRDC; FID values are comparable only at the same backbone and N",
    ],
    "Private?": [
        "DCR (pixel and feature space): f = share of synthetic images closer to a training image than the "
        "held-out 1st percentile (expected about 1% without copying; more with few held-out images); p from the "
        "precedence test, which allows for the uncertainty of that percentile (Nelson 1963); FAIL if any "
        f"synthetic image equals a training image or f > {DCR_FAIL_RATIO:g}x expected with p < {DCR_FAIL_P}; "
        f"WARN if f > {DCR_WARN_RATIO:g}x expected with p < {DCR_WARN_P}",
        "nearest-patient concentration (per DCR space, patients with several images): s = share of synthetic images "
        "whose nearest training image belongs to one patient, h = the held-out share for that patient; p from a "
        "permutation test of s - h; the close variant (s_c, h_c, p_c) counts only images no farther from that "
        "patient than the median held-out DCR, since images unlike any real one (a collapsed or failed set) all "
        f"fall nearest to the same hub training images; FAIL if s_c >= {CONCENTRATION_MIN_SHARE} and s_c > "
        f"{CONCENTRATION_FAIL_RATIO:g}h_c with p_c < {CONCENTRATION_FAIL_P}; WARN if s_c >= {CONCENTRATION_MIN_SHARE} "
        f"and s_c > {CONCENTRATION_WARN_RATIO:g}h_c with p_c < {CONCENTRATION_WARN_P}, or if only the plain share "
        f"s meets that rule (s >= {CONCENTRATION_MIN_SHARE}, s > {CONCENTRATION_WARN_RATIO:g}h, p < "
        f"{CONCENTRATION_WARN_P}): far matches, reported as a possible hub effect, naming a collapse (diversity "
        f"FAIL) or a lack of resemblance (precision or coverage < {CONCENTRATION_NO_RESEMBLANCE}) when found",
        f"membership inference (each attack: distance, density ratio, and with --run the model's own score): FAIL "
        f"if AUROC >= {MIA_FAIL_AUROC} with its 95% CI above 0.5 (the discriminator attack: WARN, the discriminator "
        "is not shared); WARN if the CI excludes 0.5 on either side",
        f"re-identification: at the threshold that links {100 * REID_FPR:g}% of held-out patients' images to a "
        f"training patient, FAIL if the synthetic share is > {REID_FAIL_RATIO:g}x the held-out share and its 95% "
        "CI lies above the held-out share's 95% Wilson interval (over held-out patients), WARN likewise at "
        f"> {REID_WARN_RATIO:g}x; WARN when the attacker is weak (verification AUROC CI lower bound < "
        f"{REID_WEAK_AUROC})",
        "a set made with generate --privacy-filter: checks in the space the filter screened (pixels; re-"
        "identification when the filter used it) pass by construction, so they are shown as filtered and do not "
        "decide; the independent checks (feature space) do, and without one the verdict is at best WARN",
        "n/a checks (cap at WARN): the generator's training data or split differs from the evaluation's, or it is "
        "unknown which training images the generator saw",
        "the verdict is the worst deciding check",
    ],
}
