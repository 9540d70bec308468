"""Policy backends behind one seam (:class:`TrainEngine`) and the one update driver (:func:`run_update`).

    from mixed_r1.engine import HFEngine, run_update           # single process
    from mixed_r1.engine.megatron import MegatronEngine         # megatron-core TP/PP/DP (imports megatron)
"""
from mixed_r1.engine.base import (LossConfig, LossFn, MicroBatchResult, ModelMismatchError, PolicyBatch,
                                  TrainEngine)
from mixed_r1.engine.hf import HFEngine, load_pretrained_model
from mixed_r1.engine.update import MEAN_METRICS, PolicyLoss, SFTLoss, run_sft_update, run_update

__all__ = ["HFEngine", "LossConfig", "LossFn", "MEAN_METRICS", "MicroBatchResult", "ModelMismatchError",
           "PolicyBatch", "PolicyLoss", "SFTLoss", "TrainEngine", "load_pretrained_model",
           "run_sft_update", "run_update"]
