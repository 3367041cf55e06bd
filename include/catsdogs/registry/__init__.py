"""The model registry record: what a registered version of the classifier is and what happened
to it, in one place.

- `names`: every name the registry and the training run carry for the registry's consumers:
  the aliases (`champion`, `challenger`), the version tags (`image_size`, `classes`, `arch`,
  `promotion.*`, `deploy.*`, `champion.move.*`, `serving.variants`), the run tags and the
  artifact names (`model`, `model_card.md`). The `data.*` tags stay with `Provenance`
  (`catsdogs.data.provenance`), which owns them from ingest on; the record reads them there.
- `record`: `VersionRecord`, the typed view of one registered version, and `resolve`, which
  turns `models:/NAME@alias` or `models:/NAME/N` into one ONCE; every operation (import,
  deploy, rollback, evaluate, promote) then works on that version number to the end, so an alias
  that moves meanwhile cannot mix two versions. Also registering a version (`register`) and
  loading its network (`load_model`).
- `integrity`: the model artifact's sha256, recorded at registration (`model.sha256`) and
  checked by every download that leads to loading it (`download_verified`).
- `safeload`: a version's network built from code with its safetensors weights, nothing
  unpickled (`save_weights` at registration, `load_network` for every loader).
- `model_card`: the markdown card of a version, rendered from the registry and its run.
- `history`: every move of `@champion` (`move_champion`, the only writer of that alias),
  the deployment status tags (`mark_deployment`), the history and the previous champion.

Dependencies run one way: names <- integrity, safeload <- record <- model_card <- history. `catsdogs.tracking` keeps
connecting to the tracking server and logging runs; nothing here connects.
"""
