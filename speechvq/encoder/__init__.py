"""The encoder trained by the train_encoder stage, one model per training objective (registered in OBJECTIVES):
`reconstruction`, a conv VQ-VAE that rebuilds the log-mel (model.py, quantizers.py); `masked_prediction`, HuBERT's
masked prediction of an earlier run's units (hubert.py); `contrastive`, wav2vec 2.0's contrastive task
(contrastive.py); the last two share transformer.py. train.py is the loop they share, checkpoint.py the files."""

from ..registry import Registry

OBJECTIVES = Registry("train_encoder.objective.name")
OBJECTIVES.register("reconstruction", "speechvq.encoder.model:VQVAE")
OBJECTIVES.register("masked_prediction", "speechvq.encoder.hubert:MaskedPredictionModel")
OBJECTIVES.register("contrastive", "speechvq.encoder.contrastive:ContrastiveModel")
