"""Every name the registry record uses: aliases, model-version tags, run tags and artifacts.

Readers and writers import these instead of repeating the strings. The training data's
`data.source` / `data.synthetic` tags are `catsdogs.data.provenance.SOURCE_TAG` / `SYNTHETIC_TAG`:
`Provenance` writes and reads them on the data folders, the run and the version alike.
"""

from __future__ import annotations

# aliases of the registered model
CHAMPION = "champion"       # the version the service should serve (moved by `history` only)
CHALLENGER = "challenger"   # the latest trained version, waiting for promote

# artifacts of a version's training run
MODEL_ARTIFACT = "model"            # the logged model (what the version's source points at)
CARD_ARTIFACT = "model_card.md"     # the version's model card

# model-version tags written when the version is registered (`record.version_tags`)
IMAGE_SIZE_TAG = "image_size"       # side of the square input in pixels, e.g. "224"
CLASSES_TAG = "classes"             # JSON list of class names in output order
ARCH_TAG = "arch"                   # torchvision architecture, e.g. "resnet18"
DIGEST_TAG = "model.sha256"         # the model artifact's tree digest (`registry.integrity`)

# run tags of the training run
REGISTERED_VERSION_TAG = "registered_version"   # the version the run registered
CONFUSION_TAG = "test.confusion_matrix"         # JSON {"labels", "rows_true_cols_predicted"}
# JSON {"total", "limit", "shown": [{"file", "true", "predicted", "confidence", "image"}]}: the
# most confident test mistakes, `image` a PNG under the run's MISCLASSIFIED_ARTIFACTS
MISCLASSIFIED_TAG = "test.misclassified"
MISCLASSIFIED_ARTIFACTS = "reports/misclassified"
CONFUSION_PICTURE = "reports/confusion_matrix.png"   # the run's confusion matrix as a picture

# model-version (and run) tags promote writes on the challenger it judged
PROMOTION_DECISION_TAG = "promotion.decision"               # promoted | rejected
PROMOTION_METRIC_TAG = "promotion.metric"                   # e.g. f1
PROMOTION_MIN_DELTA_TAG = "promotion.min_delta"             # str(float)
PROMOTION_RULE_TAG = "promotion.rule"                       # paired_bootstrap | point
# "low high": 95% paired-bootstrap interval of challenger - champion ("none" without a champion)
PROMOTION_DIFFERENCE_CI_TAG = "promotion.difference_ci"
PROMOTION_CHALLENGER_SCORE_TAG = "promotion.challenger_score"
PROMOTION_CHAMPION_SCORE_TAG = "promotion.champion_score"   # "none" without a champion
PROMOTION_CHAMPION_VERSION_TAG = "promotion.champion_version"   # "none" without a champion
PROMOTION_REASON_TAG = "promotion.reason"
# the second yardstick: the recent-production test set (transformed/production_test)
PROMOTION_PRODUCTION_PICTURES_TAG = "promotion.production_pictures"   # str(int)
PROMOTION_PRODUCTION_CHALLENGER_TAG = "promotion.production_challenger_score"   # "none": not judged
PROMOTION_PRODUCTION_CHAMPION_TAG = "promotion.production_champion_score"       # "none" likewise
PROMOTED = "promoted"
REJECTED = "rejected"

# model-version tags of the rollout (`history.mark_deployment`)
DEPLOY_STATUS_TAG = "deploy.status"     # DEPLOYED | ROLLED_BACK
DEPLOY_REASON_TAG = "deploy.reason"     # why (a failed post-deploy check's figures)
DEPLOY_TIME_TAG = "deploy.time"         # when the status was set, ISO-8601 UTC
DEPLOY_TARGET_TAG = "deploy.target"     # where: local | compose | kubernetes | none
DEPLOYED = "deployed"
ROLLED_BACK = "rolled_back"

# one model-version tag per move of @champion, on the version it moved to and the one it left:
# key `champion.move.<UTC ms>`, value the move as JSON (`record.AliasMove`)
MOVE_TAG_PREFIX = "champion.move."
BY_PROMOTE = "promote"
BY_ROLLBACK = "rollback"
BY_POST_DEPLOY_CHECK = "post-deploy check"
BY_LIVE_GATE = "live traffic gate"     # a shadow, canary or watch gate (deployment.phases)

# the serving import's measurement of the serving variants (catsdogs.inference.variants), JSON:
# {"cpu", "min_agreement", "chosen", "measured": [{"variant", "agreement", "images",
#  "ms_per_image": {batch: ms}, "adopted", "reason"}]}
SERVING_VARIANTS_TAG = "serving.variants"
