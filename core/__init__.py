"""The shared vocabulary of every package: the job's config, stage names and paths, derived numbers,
fingerprints, markers and the one atomic-publish primitive.

Imports only the standard library and the owners' config modules (model.config, data.config, train.config,
which import only the standard library), so training ranks and data workers load no Hydra, OmegaConf or torch
through it. A test enforces this.
"""
