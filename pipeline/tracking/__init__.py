"""MLflow, and only MLflow: where the store is and the lineage tags, the runs, batched logging
and models, the registry, and the process that writes them beside training.

Nothing here can change an output's bytes, so no ``dvc.yaml`` stage lists this folder among
its deps. Imports only :mod:`pipeline.core`; imported only by the stages and the CLI."""
