"""Training, evaluation and prediction: plain functions over a typed config (see ``mnv2.engine.config``)."""
