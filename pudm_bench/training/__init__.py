"""The training layer: TrainConfig, the risks, the models, the loop, checkpoints and samplers."""
