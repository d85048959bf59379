"""The main job's defaults (``linfit select``), importable without JAX so that the command line's parser is fast."""

DEFAULT_TASK = "font_digits:20shot"
DEFAULT_SCORES = ("lfc", "lgc", "linearized_loss", "logme", "leep")
DEFAULT_REGIME = "20shot"
"""The regime of ``linfit select --data`` (your own images) when ``--regime`` is not given."""
PAPER_LEARNING_RATES = (0.01, 0.005, 0.001)
"""The paper's fine-tuning learning-rate grid (Deshpande et al. 2021, §5.5: each run tries all three); ``linfit bench``'s initial η grid."""
DEFAULT_HEAD_SAMPLES = 4
"""Random head rows of ``linfit select``'s NTK-based scores (``linfit.scores.lgc``; ``benchmarks/RESULTS.md`` §7d)."""
