"""(being written) compile / fit / evaluate / predict, shared by Sequential and Autoencoder."""


class TrainingMixin:
    """Placeholder during bring-up; the training-workflow issue fills it."""
