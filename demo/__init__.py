"""`make demo`'s tooling, beside the project and not shipped with it (the `catsdogs` wheel holds
`include/catsdogs` only): the local Airflow stack's environment and leftover sweep
(`local_airflow`, also used by the tests' real services) and the demo's steps (`steps`: the data,
the run through the REST API v2, the closing summary). Run from the project's folder:
`python -m demo.local_airflow env|sweep ...`, `python -m demo.steps run|summary ...`
(scripts/airflow-services.sh and scripts/demo.sh do). The tooling imports `catsdogs`; the
package never imports the tooling.
"""
