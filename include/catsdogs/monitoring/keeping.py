"""Which uploads the service keeps as pictures, and why (`kept_for`): the policy of params.yaml's
`review:` section (`catsdogs.config.ReviewParams`), applied per answer by the prediction log.
The reasons and the review queue's order: `catsdogs.monitoring.review`."""

from __future__ import annotations

import random

from catsdogs.config import ReviewParams

OOD, LOW_CONFIDENCE, DRIFT, RANDOM, RECENT = "ood", "low_confidence", "drift", "random", "recent"
QUEUE_ORDER: tuple[str, ...] = (OOD, LOW_CONFIDENCE, DRIFT, RANDOM)
"""The reasons whose pictures are in the review queue, most useful first."""


def keep_reason(policy: ReviewParams, confidence: float, in_distribution: bool | None,
                random_share: float | None = None, draw: float | None = None) -> str | None:
    """Why an answer's upload is kept (the first that holds: ood, low_confidence, random,
    recent; `catsdogs.monitoring.review` says what each means), None when it is not. `random_share`
    (the service's setting) replaces `policy.random_share` when given; `draw` in [0, 1) is the
    random number (tests), else one is drawn."""
    if policy.keep_ood and in_distribution is False:
        return OOD
    if confidence < policy.low_confidence:
        return LOW_CONFIDENCE
    share = policy.random_share if random_share is None else random_share
    value = random.random() if draw is None else draw
    if value < share:
        return RANDOM
    if value < share + policy.recent_share:
        return RECENT
    return None
