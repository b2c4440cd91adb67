"""Config of a textclf classifier as a Hugging Face model (copied beside its weights)."""

from transformers import PretrainedConfig


class TextclfConfig(PretrainedConfig):
    """The encoder's own config (a dict under `encoder`), the head on it, and the labels.

    head                   cls | mean | pooler | fusion
    n_outputs              outputs of the final layer (1 for binary_bce, else the number of labels or targets)
    textclf_problem_type   single_label | binary_bce | multi_label | regression
    members                1 for one model; K for the mean of K fold models in one folder
    mlp_hidden             0: one Linear on the pooled features; > 0: Linear-ReLU-(Dropout)-Linear
    target_mean, target_std  regression: the output layer predicts (y - mean) / std per target; the
                           model returns y (its logits are the predictions)
    calibration_temperature  calibration: the logits are divided by it (fitted on the run's out-of-fold rows)
    """

    model_type = "textclf"

    def __init__(self, encoder=None, head="cls", n_outputs=2, textclf_problem_type="single_label", members=1,
                 **kwargs):
        self.encoder = dict(encoder or {})
        self.head = head
        self.n_outputs = n_outputs
        self.textclf_problem_type = textclf_problem_type
        self.members = members
        # the head's extras, absent from earlier exports: an MLP's width, a regression's target scale
        self.mlp_hidden = kwargs.pop("mlp_hidden", 0)
        self.target_mean = kwargs.pop("target_mean", None)
        self.target_std = kwargs.pop("target_std", None)
        # the fitted calibration: the logits are divided by it ("temperature" is a generation setting there)
        self.calibration_temperature = kwargs.pop("calibration_temperature", 1.0)
        if self.encoder:
            kwargs.setdefault("initializer_range", self.encoder.get("initializer_range", 0.02))
            kwargs.setdefault("hidden_size", self.encoder.get("hidden_size"))
        super().__init__(**kwargs)
