"""Training: crops, the rate–distortion loss, a resumable loop (CPU, torchrun, CUDA), anneal and estimates.

Library code, not a script, so that ``vaecodec train`` stays a thin command
and tests can run a few steps on a tiny model. Modules:

* :mod:`.data`: the crop pool;
* :mod:`.loss`: λ·255²·MSE + bpp with per-sample λ;
* :mod:`.loop`: stable phase (:func:`train`) and :func:`anneal`, checkpoints;
* :mod:`.evaluate`: the periodic Kodak estimate in the log.
"""

from .data import CropPool
from .evaluate import evaluate_estimate
from .loop import DEFAULT_LR, TrainOptions, TrainState, anneal, ema_model, learning_rate, load_checkpoint, save_checkpoint, train
from .loss import rd_loss, sample_lambdas

__all__ = ["CropPool", "evaluate_estimate", "DEFAULT_LR", "TrainOptions", "TrainState", "anneal",
           "ema_model", "learning_rate", "load_checkpoint", "save_checkpoint", "train", "rd_loss", "sample_lambdas"]
