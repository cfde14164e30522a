"""Training engine: the LightningModule (TROA in the loop) and the files it writes."""

from vtagml.engine.artifacts import AffinityArtifacts, PredictionWriter, plot_affinity, save_affinity_csv
from vtagml.engine.module import MultitaskModule

__all__ = ["AffinityArtifacts", "MultitaskModule", "PredictionWriter", "plot_affinity", "save_affinity_csv"]
