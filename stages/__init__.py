"""The DVC stages: each reads its inputs, calls the pipeline, and writes its outputs atomically.

``dvc.yaml`` owns every path; a stage receives them as arguments and never rebuilds them.
"""
