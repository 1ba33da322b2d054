"""Private? Does the synthetic set copy training images, reveal who was in training, or point to a patient?

* `dcr`: distance to the closest training record against the held-out baseline (precedence test), and
  nearest-patient concentration (permutation test);
* `membership`: distance-based membership inference (members = training images, non-members = held-out);
* `reid`, `verification`, `linkage`: the siamese re-identification attack, its verification on held-out
  patients, and the linking of each synthetic image to a training patient.

The verdicts on these results are in `medsyn.evaluate.verdicts`.
"""

from medsyn.evaluate.privacy.dcr import (
    DCR_MIN_HOLDOUT,
    DCR_RELIABLE_HOLDOUT,
    DCR_TEST,
    DCRResult,
    distance_to_closest_record,
    nearest_patient_shares,
    precedence_test,
)
from medsyn.evaluate.privacy.membership import MIA_MIN_IMAGES, MIAResult, membership_inference

__all__ = [
    "DCR_MIN_HOLDOUT", "DCR_RELIABLE_HOLDOUT", "DCR_TEST", "MIA_MIN_IMAGES", "DCRResult", "MIAResult",
    "distance_to_closest_record", "membership_inference", "nearest_patient_shares", "precedence_test",
]  # fmt: skip
