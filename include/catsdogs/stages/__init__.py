"""Pipeline stages: one module per stage, each exposing `run(params, paths, **options)`."""
