"""The model zoo: Keras models built by name for a `ModelSignature`, the triplet losses and embedding helpers.

    >>> from sparkdl.models import build, default_loss, default_metrics
    >>> model = build("mlp", signature, hidden=(32,))
    >>> model.compile("adam", default_loss(signature, "mlp"), default_metrics(signature, "mlp"))

Importing this package registers the custom layers and losses with Keras, so models that use them load with
`tf.keras.models.load_model(path, safe_mode=True)`.
"""
from sparkdl.models.evaluation import knn_accuracy
from sparkdl.models.layers import L2Normalize
from sparkdl.models.losses import InBatchSoftmaxLoss, TripletHardLoss, TripletSemiHardLoss, pairwise_distances
from sparkdl.models.zoo import (
    Augmentation,
    accepted_hparams,
    available,
    build,
    build_autoencoder,
    build_cnn,
    build_embedding,
    build_gru_forecaster,
    build_lstm,
    build_lstm_forecaster,
    build_mlp,
    build_tcn_forecaster,
    build_text_cnn,
    build_text_gru,
    build_two_tower,
    check_choice,
    default_loss,
    default_metrics,
    register_builder,
)

TripletLoss = TripletSemiHardLoss

__all__ = [
    "Augmentation", "InBatchSoftmaxLoss", "L2Normalize", "TripletHardLoss", "TripletLoss", "TripletSemiHardLoss",
    "accepted_hparams", "available",
    "build", "build_autoencoder", "build_cnn", "build_embedding", "build_gru_forecaster", "build_lstm",
    "build_lstm_forecaster", "build_mlp", "build_tcn_forecaster", "build_text_cnn", "build_text_gru", "build_two_tower",
    "check_choice", "default_loss", "default_metrics",
    "knn_accuracy", "pairwise_distances", "register_builder",
]
