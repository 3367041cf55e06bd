"""The model card of a registered version: one markdown page that says what the model is for,
what it was trained on, how well it did and where it has been deployed.

The card is rendered from what MLflow already holds, so it never loads the model:

- the version (tags: arch, image size, classes, `data.*`, `promotion.*`, `deploy.*`, the bf16
  check the serving import records as `serving.bf16_*`) and its aliases;
- its run: parameters, `test_*` metrics, the training data set logged with `mlflow.log_input`
  (`catsdogs.data.lineage`), the test confusion matrix (run tag `test.confusion_matrix`; its
  picture is the run's `reports/confusion_matrix.png`) and the most confident test mistakes (run
  tag `test.misclassified`; their thumbnails with Grad-CAM heatmaps are the run's
  `reports/misclassified/*.png`, which the card shows as images relative to itself: the card
  artifact sits at the root of the same run's artifacts);
- the moves of `@champion` to or from it (recorded on the version itself: `record.AliasMove`).

`refresh_card` stores it twice: as the artifact `model_card.md` of the version's run and as the
version's description (what the MLflow UI shows on the version page; the registry keeps at most
`DESCRIPTION_LIMIT` characters, so a long history is shortened there, never in the artifact).
The train stage writes the first card when it registers a version; `history.move_champion`
refreshes the cards of both versions of a move, `history.mark_deployment` the card of the version
it tags, promote refreshes a rejected challenger's. A card changes only when those facts change
(no render time in it), so refreshing an unchanged card writes nothing.

The card is our own format (no model-card library is installed here, and the fields are ours);
its sections follow the usual model-card outline: intended use, limits, data, metrics, history.
A new fact on the card: read it in `gather` (a field of `CardFacts`), show it in `render`'s
section, and put any tag name it needs in `catsdogs.registry.names`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from catsdogs.config import CLASSES
from catsdogs.data.feedback import HELD_OUT
from catsdogs.data.lineage import DATASET_NAME, TrainingData, from_run
from catsdogs.data.provenance import Provenance
from catsdogs.registry.names import (
    ARCH_TAG,
    CARD_ARTIFACT,
    CHAMPION,
    CLASSES_TAG,
    CONFUSION_PICTURE,
    CONFUSION_TAG,
    DEPLOY_REASON_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOY_TARGET_TAG,
    DEPLOY_TIME_TAG,
    IMAGE_SIZE_TAG,
    MISCLASSIFIED_ARTIFACTS,
    MISCLASSIFIED_TAG,
    PROMOTION_CHAMPION_VERSION_TAG,
    PROMOTION_DECISION_TAG,
    PROMOTION_METRIC_TAG,
    PROMOTION_MIN_DELTA_TAG,
    PROMOTION_PRODUCTION_CHALLENGER_TAG,
    PROMOTION_PRODUCTION_CHAMPION_TAG,
    PROMOTION_PRODUCTION_PICTURES_TAG,
    PROMOTION_REASON_TAG,
    PROMOTION_RULE_TAG,
    SERVING_VARIANTS_TAG,
)
from catsdogs.registry.record import AliasMove, VersionRecord
from catsdogs.training.metrics import ECE_BINS, METRIC_NAMES

log = logging.getLogger(__name__)

DESCRIPTION_LIMIT = 5000          # characters: the registry's model-version description column
CARD_PARAM_SECTIONS = ("model.", "train.", "transform.", "split.")
SPLIT_ORDER = ("train", "val", "test")
SHORT_HISTORY = 5                 # moves kept in a description that would be too long


@dataclass(frozen=True)
class CardFacts:
    """Everything a card shows, read from the registry and the run (see `gather`)."""

    name: str
    version: str
    run_id: str
    experiment_id: str
    registered: str                       # ISO-8601 UTC
    aliases: tuple[str, ...]
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    data: TrainingData | None
    confusion: list[list[int]] | None     # rows true class, columns predicted (CLASSES order)
    # the most confident test mistakes (run tag MISCLASSIFIED_TAG; None: not recorded)
    misclassified: dict[str, Any] | None = None
    moves: list[AliasMove] = field(default_factory=list)   # to or from this version, oldest first
    stored_description: str | None = None   # the version's description now (not shown)


def _iso(ms: int | None) -> str:
    if not ms:
        return "unknown"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _confusion(run_tags: dict[str, str]) -> list[list[int]] | None:
    try:
        matrix = json.loads(run_tags[CONFUSION_TAG])["rows_true_cols_predicted"]
        return [[int(n) for n in row] for row in matrix]
    except (KeyError, TypeError, ValueError):
        return None


def _misclassified(run_tags: dict[str, str]) -> dict[str, Any] | None:
    try:
        found = json.loads(run_tags[MISCLASSIFIED_TAG])
        return found if isinstance(found, dict) and isinstance(found.get("shown"), list) else None
    except (KeyError, TypeError, ValueError):
        return None


def gather(client: Any, name: str, version: str) -> CardFacts:
    """The facts of `name` version `version` (`client`: an `mlflow.MlflowClient`): two registry
    and tracking calls, no download; MlflowException when the version does not exist."""
    found = client.get_model_version(name, str(version))
    run = client.get_run(found.run_id)
    return CardFacts(
        name=name, version=str(found.version), run_id=found.run_id,
        experiment_id=run.info.experiment_id, registered=_iso(found.creation_timestamp),
        aliases=tuple(sorted(getattr(found, "aliases", None) or ())),
        tags=dict(found.tags or {}), params=dict(run.data.params),
        metrics=dict(run.data.metrics), data=from_run(run),
        confusion=_confusion(run.data.tags), misclassified=_misclassified(run.data.tags),
        moves=VersionRecord.from_model_version(found).moves,
        stored_description=found.description or None)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _classes(facts: CardFacts) -> list[str]:
    try:
        return list(json.loads(facts.tags[CLASSES_TAG]))
    except (KeyError, ValueError, TypeError):
        return list(CLASSES)


def _provenance(facts: CardFacts) -> Provenance | None:
    found = Provenance.from_tags(facts.tags)
    if found is None and facts.data is not None and facts.data.synthetic is not None:
        found = Provenance(facts.data.source, facts.data.synthetic)
    return found


def _intended_use(facts: CardFacts, classes: list[str]) -> list[str]:
    size = facts.tags.get(IMAGE_SIZE_TAG) or facts.params.get("transform.image_size", "?")
    return [
        "## Intended use", "",
        f"Tell whether a photo shows a {' or a '.join(classes)}: one animal per photo, the kind "
        "of photo people take of their pets. The service squashes each picture to "
        f"{size}x{size} px exactly as training did and answers the label, its probability and "
        "this version's number.", "",
        "## Known limits", "",
        f"- It knows {len(classes)} classes and answers one of them for any picture, also for a "
        "picture of neither (a person, a car, a drawing); such answers can be confident and "
        "mean nothing.",
        "- Its test figures come from a split of the same data set it was trained on: photos "
        "from elsewhere (other cameras, lighting, breeds, framing) can score lower.",
        "- Several animals in one photo, or a small animal in a large scene, are outside what it "
        "was trained for.",
        "- It is not meant for decisions about animals or people (breed, health, identity).", "",
    ]


def _production_line(production: dict[str, Any]) -> str:
    """The card's line on labelled production pictures (`TrainingData.production`)."""
    per_split = production.get("per_split") or {}
    trained = sum(n for split, n in per_split.items() if split in ("train", "val"))
    if not per_split:
        return "- From production: none (no labelled production pictures merged)"
    held = per_split.get(HELD_OUT, 0)
    return (f"- From production: {trained} training pictures (train {per_split.get('train', 0)}, "
            f"val {per_split.get('val', 0)}) labelled from {production.get('labelled_from') or '?'}"
            f" to {production.get('labelled_to') or '?'}; {held} held out as the "
            "recent-production test set")


def _data_section(facts: CardFacts, classes: list[str]) -> list[str]:
    lines = ["## Training data", ""]
    data = facts.data
    provenance = _provenance(facts)
    if data is None:
        source = provenance.source if provenance is not None else "not recorded"
        return lines + [f"- Source: `{source}`",
                        "- The run logged no data set (trained before lineage was recorded).", ""]
    kind = ("GENERATED stand-in pictures" if data.synthetic else
            "real photos" if data.synthetic is False else "not recorded whether real or generated")
    lines += [
        f"- Source: `{data.source}` ({kind})",
        f"- MLflow data set: `{DATASET_NAME}`, digest `{data.transformed_digest}` (logged with "
        f"`mlflow.log_input`, context `training`, run `{facts.run_id}`)",
        f"- Prepared manifest sha256: `{data.manifest_sha256}`",
        f"- Transformed files digest: `{data.transformed_digest}` ({data.total} pictures)",
        _production_line(data.production), "",
        "| split | " + " | ".join(classes) + " | total |",
        "|---" * (len(classes) + 2) + "|",
    ]
    splits = sorted(data.counts, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER
                                                 else len(SPLIT_ORDER), s))
    for split in splits:
        per_class = data.counts[split]
        lines.append(f"| {split} | " + " | ".join(str(per_class.get(c, 0)) for c in classes)
                     + f" | {sum(per_class.values())} |")
    return lines + [""]


def _params_section(facts: CardFacts) -> list[str]:
    chosen = {k: v for k, v in sorted(facts.params.items()) if k.startswith(CARD_PARAM_SECTIONS)}
    if not chosen:
        return ["## Parameters", "", "Not recorded.", ""]
    tags = facts.tags
    run_facts = ", ".join(f"{key} `{tags[key]}`" for key in ("device", "precision")
                          if key in tags)
    lines = ["## Parameters", "",
             "All of the run's parameters are on its MLflow page; those that shape the model:", ""]
    lines.append(" · ".join(f"`{k}`={v}" for k, v in chosen.items()))
    return lines + ([f"\nTrained on {run_facts}."] if run_facts else []) + [""]


def _metrics_section(facts: CardFacts, classes: list[str]) -> list[str]:
    metrics = facts.metrics
    lines = ["## Test metrics", ""]
    if not any(f"test_{m}" in metrics for m in METRIC_NAMES):
        lines += ["Not recorded.", ""]
    else:
        test_images = facts.data.counts.get("test") if facts.data is not None else None
        where = (f"on the test split ({sum(test_images.values())} pictures)" if test_images
                 else "on the test split")
        best = metrics.get("best_epoch")
        lines += [f"Measured {where} with the weights of the best epoch by validation F1"
                  + (f" (epoch {int(best)})" if best is not None else "")
                  + f"; the positive class is {classes[-1]}.", "",
                  "| " + " | ".join(METRIC_NAMES) + " |", "|---" * len(METRIC_NAMES) + "|",
                  "| " + " | ".join(_with_interval(metrics, m) for m in METRIC_NAMES) + " |"]
        lines += ["", CARD_INTERVALS_NOTE, "", *_calibration_lines(metrics),
                  *_known_ood_lines(metrics)]
    if facts.confusion is not None:
        lines += ["Confusion matrix (test split; rows: true class, columns: predicted):", "",
                  "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                  for label, row in zip(classes, facts.confusion, strict=False)]
        lines += ["", f"![Test confusion matrix]({CONFUSION_PICTURE})", ""]
    return lines + _misclassified_lines(facts.misclassified) + _variant_lines(facts.tags)


CARD_INTERVALS_NOTE = ("[95% interval]: Wilson for accuracy, precision, recall; seeded bootstrap "
                       f"for the rest. ECE: {ECE_BINS} equal-width confidence bins.")


def _with_interval(metrics: dict[str, float], name: str) -> str:
    """'0.9750 [0.9428, 0.9893]' from the run's test_<name>(_ci_low/_ci_high) metrics."""
    value = _number(metrics.get(f"test_{name}"))
    if f"test_{name}_ci_low" not in metrics:
        return value
    return (f"{value} [{_number(metrics.get(f'test_{name}_ci_low'))}, "
            f"{_number(metrics.get(f'test_{name}_ci_high'))}]")


def _calibration_lines(metrics: dict[str, float]) -> list[str]:
    """How the probabilities were calibrated: the temperature fitted on the val split and folded
    into the head (`catsdogs.training.calibration`), or that none was."""
    if "temperature" not in metrics:
        return ["Calibration: none (`train.temperature_scaling` false).", ""]
    return [f"Calibration: T = {_number(metrics['temperature'], 3)} fitted on the val split "
            f"(log loss {_number(metrics.get('val_log_loss_before'))} -> "
            f"{_number(metrics.get('val_log_loss_after'))}), folded into the head: evaluate, "
            "promote and serving give these probabilities.", ""]


def _known_ood_lines(metrics: dict[str, float]) -> list[str]:
    """The known out-of-distribution ("neither"-labelled production) pictures the OOD threshold
    was calibrated with (`catsdogs.monitoring.ood.calibrate`); nothing when the run had none."""
    if "ood_known_pictures" not in metrics:
        return []
    used = metrics.get("ood_known_used", 0) >= 1
    return [f"Out-of-distribution threshold: {_number(metrics.get('ood_threshold'), 2)}, "
            f"calibrated with {int(metrics['ood_known_pictures'])} known out-of-distribution "
            f"('neither'-labelled production) pictures ("
            + ("used" if used else "too few to move it: train.ood_min_known")
            + f"); it flags {_number(100 * metrics.get('ood_known_flagged_share', 0.0), 1)}% "
            "of them.", ""]


def _misclassified_lines(found: dict[str, Any] | None) -> list[str]:
    """The misclassified test pictures: thumbnails with the Grad-CAM heatmap of the class each
    was taken for (PNG artifacts beside the card, under MISCLASSIFIED_ARTIFACTS)."""
    if found is None:
        return []
    total, shown = int(found.get("total", 0)), found["shown"]
    if not total:
        return ["Misclassified test pictures: none.", ""]
    lines = [f"Misclassified test pictures: {total}"
             + (f", the {len(shown)} most confident mistakes shown" if len(shown) < total else "")
             + ". Over each, the Grad-CAM heatmap of the class the model answered (red: where "
             f"it found it); the thumbnails are the run's artifacts `{MISCLASSIFIED_ARTIFACTS}/`.",
             "", "| picture | file | true | predicted | confidence |", "|---|---|---|---|---|"]
    for item in shown:
        file = str(item.get("file", "?")).replace("|", "/")
        lines.append(f"| ![{file}]({MISCLASSIFIED_ARTIFACTS}/{item.get('image')}) | `{file}` | "
                     f"{item.get('true')} | {item.get('predicted')} | "
                     f"{_number(item.get('confidence'), 3)} |")
    return [*lines, ""]


def _variant_lines(tags: dict[str, str]) -> list[str]:
    """The serving variants table (what the serving import measured), or a note that it has not
    measured them yet."""
    try:
        found = json.loads(tags[SERVING_VARIANTS_TAG])
        measured = list(found["measured"])
    except (KeyError, TypeError, ValueError):
        return ["Serving variants: not measured yet (the serving import measures them on real "
                "photos when it packages this version).", ""]
    batches = sorted({int(b) for m in measured for b in m.get("ms_per_image") or {}})
    lines = [f"Serving variants, measured by the serving import on {found.get('cpu', '?')}: a "
             "variant is adopted when its labels agree with fp32 on at least "
             f"{100 * float(found.get('min_agreement', 0)):.1f}% of the photos and it is faster "
             f"at every batch size; the measured choice was `{found.get('chosen', '?')}`.", "",
             "| variant | label agreement | " + " | ".join(f"ms/picture, batch {b}"
                                                         for b in batches) + " | adopted |",
             "|---" * (3 + len(batches)) + "|"]
    for m in measured:
        agreement = m.get("agreement")
        timing = m.get("ms_per_image") or {}
        lines.append(f"| {m.get('variant')} | "
                     + (f"{100 * float(agreement):.2f}% of {m.get('images')}"
                        if agreement is not None else "-") + " | "
                     + " | ".join(_number(timing.get(str(b)), 2) for b in batches)
                     + f" | {'yes' if m.get('adopted') else 'no'} |")
    return [*lines, ""]


def _production_yardstick(tags: dict[str, str]) -> str:
    """The card's line on promote's second yardstick (the recent-production test set)."""
    pictures = tags.get(PROMOTION_PRODUCTION_PICTURES_TAG)
    if pictures is None:
        return "- Recent-production test set: not recorded (judged before it existed)"
    ours = tags.get(PROMOTION_PRODUCTION_CHALLENGER_TAG, "none")
    if ours == "none":
        return (f"- Recent-production test set: {pictures} pictures, not judged (too few, or "
                "no champion): the fixed test split alone decided")
    return (f"- Recent-production test set: {pictures} pictures; `{tags.get(PROMOTION_METRIC_TAG, '?')}` "
            f"{float(ours):.4f} vs champion "
            f"{float(tags.get(PROMOTION_PRODUCTION_CHAMPION_TAG, 'nan')):.4f}")


def _history_section(facts: CardFacts, limit: int | None) -> list[str]:
    tags = facts.tags
    lines = ["## Promotion and deployment", ""]
    if CHAMPION in facts.aliases:
        lines.append("- Now: **@champion** (the version the service should be serving)")
    elif facts.aliases:
        lines.append("- Now: " + ", ".join(f"@{a}" for a in facts.aliases))
    decision = tags.get(PROMOTION_DECISION_TAG)
    if decision:
        against = tags.get(PROMOTION_CHAMPION_VERSION_TAG, "none")
        lines.append(f"- Promotion: {decision} by `{tags.get(PROMOTION_METRIC_TAG, '?')}` "
                     f"(min_delta {tags.get(PROMOTION_MIN_DELTA_TAG, '?')}, "
                     + (f"rule {tags[PROMOTION_RULE_TAG]}, " if PROMOTION_RULE_TAG in tags else "")
                     + ("no champion before" if against == "none" else f"against v{against}")
                     + f"): {tags.get(PROMOTION_REASON_TAG, '')}")
        lines.append(_production_yardstick(tags))
    else:
        lines.append("- Promotion: not judged yet")
    status = tags.get(DEPLOY_STATUS_TAG)
    if status:
        where = " ".join(part for part in (
            f"on {tags[DEPLOY_TARGET_TAG]}" if tags.get(DEPLOY_TARGET_TAG) else "",
            f"at {tags[DEPLOY_TIME_TAG]}" if tags.get(DEPLOY_TIME_TAG) else "") if part)
        reason = tags.get(DEPLOY_REASON_TAG)
        lines.append(f"- Deployment: {status}" + (f" ({where})" if where else "")
                     + (f": {reason}" if reason else ""))
    else:
        lines.append("- Deployment: not deployed yet")
    moves = facts.moves
    if not moves:
        return lines + ["", "No move of @champion involved this version yet.", ""]
    shown = moves if limit is None else moves[-limit:]
    lines += ["", "Moves of @champion to or from this version:", "",
              "| time (UTC) | from | to | by | reason |", "|---|---|---|---|---|"]
    lines += [f"| {m.time} | {'v' + m.from_version if m.from_version else '-'} | "
              f"v{m.to_version} | {m.by} | {m.reason.replace('|', '/')} |" for m in shown]
    if len(shown) < len(moves):
        lines += ["", f"{len(moves) - len(shown)} earlier moves: see `{CARD_ARTIFACT}` in the "
                  f"run's artifacts, or `catsdogs champion history`."]
    return lines + [""]


def render(facts: CardFacts, *, history_limit: int | None = None) -> str:
    """The card as markdown. `history_limit`: show only the latest moves (None: all)."""
    classes = _classes(facts)
    arch = facts.tags.get(ARCH_TAG) or facts.params.get("model.arch", "?")
    lines = [f"# Model card: {facts.name} v{facts.version}", "",
             f"A {arch} image classifier ({', '.join(classes)}), registered {facts.registered} "
             f"from MLflow run `{facts.run_id}` (experiment {facts.experiment_id}).", ""]
    provenance = _provenance(facts)
    if provenance is not None and provenance.synthetic:
        lines += [f"> **Warning:** {provenance.note()}", ""]
    lines += _intended_use(facts, classes)
    lines += _data_section(facts, classes)
    lines += _params_section(facts)
    lines += _metrics_section(facts, classes)
    lines += _history_section(facts, history_limit)
    return "\n".join(lines).rstrip() + "\n"


def description(facts: CardFacts) -> str:
    """The card as it fits the registry's description (at most `DESCRIPTION_LIMIT` characters):
    the whole card, else with the latest moves only, else cut with a pointer to the artifact."""
    for limit in (None, SHORT_HISTORY, 1):
        text = render(facts, history_limit=limit)
        if len(text) <= DESCRIPTION_LIMIT:
            return text
    tail = f"\n\n… (cut; the whole card is `{CARD_ARTIFACT}` in run `{facts.run_id}`)\n"
    return text[:DESCRIPTION_LIMIT - len(tail)] + tail


def refresh_card(client: Any, name: str, *versions: str | None) -> dict[str, str]:
    """Render the cards of `versions` of `name` (None entries are ignored) and store each where it
    changed: artifact `model_card.md` of the version's run and the version's description.

    `client`: an `mlflow.MlflowClient`. Returns {version: card markdown}. Raises MlflowException
    when the registry or the tracking server refuses.
    """
    cards: dict[str, str] = {}
    for version in dict.fromkeys(str(v) for v in versions if v is not None):
        facts = gather(client, name, version)
        card, short = render(facts), description(facts)
        if facts.stored_description != short:
            client.log_text(facts.run_id, card, CARD_ARTIFACT)
            client.update_model_version(name, version, description=short)
            log.info("model card of %s v%s updated (%d characters)", name, version, len(card))
        cards[version] = card
    return cards
