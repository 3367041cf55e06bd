"""Running the network: where and how (`compute`: device, precision, layout, the CPU's facts),
THE forward pass (`scorer`: pixels -> probabilities and embedding, for training's evaluation, the
evaluate and promote stages, the reference profile and serving), why it answered (`explain`:
Grad-CAM heatmaps, for the service's /explain and the model card), and the serving variants with
the rule that picks one per CPU (`variants`). Imports torch: stage modules import it inside
functions. Depends on nothing in `catsdogs` but `errors`; training, monitoring, the stages and
`bentoservice` build on it."""
